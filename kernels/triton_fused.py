"""BatchNorm + ReLU + grouped convolution as one unit on fused Triton kernels, and the residual block's end.

Opt-in and experimental: nothing in the model calls this. A ResNet BasicBlock in training mode is

    y1, s1 = bn_relu_conv(x, conv1.weight, ...)                    # conv1, and bn1's batch statistics
    y2, s2 = bn_relu_conv(y1, conv2.weight, ..., bn=bn1, x_sums=s1)  # bn1 + ReLU applied as conv2 loads y1
    out = bn_add_relu(y2, s2, bn2, residual)                       # bn2, + residual (own BN if downsampled), ReLU

so no normalised activation is written and no pass reads a convolution's output only for its
statistics; the backward recomputes the activations from x and runs BatchNorm's full backward (the
paths through the batch mean and variance included). The kernels are in triton_fused_kernels.py.
Checked on the CPU with Triton's interpreter in float32 (tests/kernels/test_triton_fused.py);
not yet run on a GPU. What would make it a default: benchmarks/conv_kernels.py's `fused-unit` rows
faster than cuDNN + torch BatchNorm + ReLU at the seed configuration's shapes on an H100, with errors
at bf16 rounding (~1e-2), and then a training step built from these units faster than the default
fast path at equal loss. Running statistics are not updated by the Functions: `update_running_stats`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from kernels import triton_fused_kernels as fk
from kernels.triton_kernels import MIN_GROUP_CHANNELS, _out_size, triton


class ChannelSums(NamedTuple):
    """Per-channel float32 sum and sum of squares of a (n, c, h, w) tensor over n, h and w: a BatchNorm's
    batch statistics before division by `count` (n * h * w)."""

    total: torch.Tensor
    squares: torch.Tensor
    count: int


def _require_triton() -> None:
    if triton is None:
        raise RuntimeError("the fused Triton kernels need the triton package (pip install triton)")


def _dummy(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(1, device=like.device, dtype=torch.float32)


def _check_conv(reduced_channels: int, out_channels: int, groups: int, what: str, data_channels: int) -> None:
    if data_channels != groups * reduced_channels:
        raise ValueError(f"{what}: {data_channels} data channels, but the weight asks for {groups} groups of "
                         f"{reduced_channels}")
    if reduced_channels % MIN_GROUP_CHANNELS or out_channels % MIN_GROUP_CHANNELS:
        raise ValueError(f"{what}: {groups} groups of {reduced_channels} -> {out_channels} channels; the fused kernels "
                         f"need multiples of {MIN_GROUP_CHANNELS} per group (use torch's convolution otherwise)")
    if len(fk.fused_conv_kernel.configs) == 1 and reduced_channels % fk.fused_conv_kernel.configs[0].kwargs["BK"]:
        raise ValueError(f"{what}: the one config chosen by ANTIMETRIC_TRITON_FUSED_CONFIG does not divide "
                         f"{reduced_channels} channels; choose another")


def conv_with_sums(x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int, pad: int,
                   scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = conv(relu(x * scale + shift)) (conv(x) without scale) and y's float32 per-channel sum and sum of
    squares. x (n, h, w, groups*ci) channels-last data, weight (groups*co, ci, kh, kw) any layout, scale and
    shift (groups*ci,) float32 -> y (n, ho, wo, groups*co)."""
    _require_triton()
    n, h, w, c_in = x.shape
    co_total, ci, kh, kw = weight.shape
    co = co_total // groups
    _check_conv(ci, co, groups, "conv_with_sums", c_in)
    ho, wo = _out_size(h, kh, stride, pad), _out_size(w, kw, stride, pad)
    y = torch.empty(n, ho, wo, co_total, device=x.device, dtype=x.dtype)
    total = torch.zeros(co_total, device=x.device, dtype=torch.float32)
    squares = torch.zeros_like(total)
    s0, s1, s2, s3 = weight.stride()
    bn_relu = scale is not None
    scale, shift = (scale, shift) if bn_relu else (_dummy(x), _dummy(x))
    grid = lambda meta: (triton.cdiv(n * ho * wo, meta["BM"]) * triton.cdiv(co, meta["BN"]), groups, 1)  # noqa: E731
    fk.fused_conv_kernel[grid](x, weight, y, scale, shift, x, total, total, squares, n, h, w, ho, wo, groups, ci, co,
                               stride, pad, co * s0, s1, s0, s2, s3, KH=kh, KW=kw, TRANSPOSED=False, BN_RELU=bn_relu,
                               SUMS=True)
    return y, total, squares


def input_grad_with_sums(dy: torch.Tensor, weight: torch.Tensor, x: torch.Tensor, groups: int, stride: int,
                         pad: int, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                         centre: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                     torch.Tensor | None]:
    """g = conv^T(dy) (n, h, w, groups*ci) in x's shape. With scale: g is masked by relu'(x * scale + shift),
    and also returned are float32 sum(g) and sum(g * (x - centre)) per channel (else None, None)."""
    _require_triton()
    n, h, w, c_in = x.shape
    _, ho, wo, _ = dy.shape
    co_total, ci, kh, kw = weight.shape
    co = co_total // groups
    _check_conv(co, ci, groups, "input_grad_with_sums", dy.shape[-1])
    g = torch.empty(n, h, w, c_in, device=dy.device, dtype=dy.dtype)
    bn_relu = scale is not None
    total = torch.zeros(c_in, device=dy.device, dtype=torch.float32) if bn_relu else _dummy(dy)
    products = torch.zeros_like(total)
    if not bn_relu:
        scale = shift = centre = _dummy(dy)
    s0, s1, s2, s3 = weight.stride()
    rows = n * triton.cdiv(h, stride) * triton.cdiv(w, stride)  # the largest output parity class

    def grid(meta):
        return triton.cdiv(rows, meta["BM"]) * triton.cdiv(ci, meta["BN"]), groups, stride * stride

    fk.fused_conv_kernel[grid](dy, weight, g, scale, shift, x, centre, total, products, n, ho, wo, h, w, groups, co,
                               ci, stride, pad, co * s0, s0, s1, s2, s3, KH=kh, KW=kw, TRANSPOSED=True,
                               BN_RELU=bn_relu, SUMS=bn_relu)
    return (g, total, products) if bn_relu else (g, None, None)


def weight_grad(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, groups: int, stride: int, pad: int,
                scale: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> torch.Tensor:
    """float32 gradient of conv(relu(x * scale + shift)) (conv(x) without scale) with respect to `weight`,
    in weight's shape and layout, from channels-last x and dy; split-K as autotuned."""
    _require_triton()
    n, h, w, c_in = x.shape
    _, ho, wo, c_out = dy.shape
    ci, co = c_in // groups, c_out // groups
    kh, kw = weight.shape[-2:]
    dw = torch.zeros_like(weight, dtype=torch.float32)  # split-K adds into it
    bn_relu = scale is not None
    scale, shift = (scale, shift) if bn_relu else (_dummy(x), _dummy(x))

    def grid(meta):
        return triton.cdiv(ci, meta["BM"]) * triton.cdiv(co, meta["BN"]), groups * kh * kw, meta["SPLIT_K"]

    fk.fused_wgrad_kernel[grid](x, dy, dw, scale, shift, n, h, w, ho, wo, groups, ci, co, stride, pad, *dw.stride(),
                                KH=kh, KW=kw, BN_RELU=bn_relu)
    return dw


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])  # (n, h, w, c) contiguous -> (n*h*w, c), a view


def channel_affine(a: torch.Tensor, p: torch.Tensor, b: torch.Tensor, q: torch.Tensor, r: torch.Tensor,
                   relu: bool) -> torch.Tensor:
    """a * p + b * q + r, then ReLU if asked: a, b (..., c) contiguous, p, q, r (c,) float32; in a's dtype."""
    _require_triton()
    out = torch.empty_like(a)
    rows, c = _rows(a).shape
    grid = lambda meta: (triton.cdiv(rows, meta["BR"]), triton.cdiv(c, meta["BC"]))  # noqa: E731
    fk.channel_affine_kernel[grid](a, b, out, p, q, r, rows, c, RELU=relu)
    return out


def relu_grad_sums(grad: torch.Tensor, out: torch.Tensor, y: torch.Tensor, y_centre: torch.Tensor,
                   residual: torch.Tensor | None = None, residual_centre: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """gz = grad where out > 0, and (3, c) float32 sums per channel: gz, gz * (y - y_centre) and, with a
    residual, gz * (residual - residual_centre) (else zeros). All (..., c) contiguous."""
    _require_triton()
    gz = torch.empty_like(grad)
    rows, c = _rows(grad).shape
    sums = torch.zeros(3, c, device=grad.device, dtype=torch.float32)
    with_residual = residual is not None
    grid = lambda meta: (triton.cdiv(rows, meta["BR"]), triton.cdiv(c, meta["BC"]))  # noqa: E731
    fk.relu_grad_sums_kernel[grid](grad, out, y, residual if with_residual else y, gz, y_centre,
                                   residual_centre if with_residual else y_centre, sums, rows, c,
                                   RESIDUAL_SUMS=with_residual)
    return gz, sums


def mean_rstd(total: torch.Tensor, squares: torch.Tensor, count: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and 1 / sqrt(biased variance + eps), as BatchNorm normalises in training."""
    mean = total / count
    return mean, torch.rsqrt((squares / count - mean * mean).clamp_min(0) + eps)


def _bn_input_grad(g: torch.Tensor, x: torch.Tensor, sum_g: torch.Tensor, sum_g_centred: torch.Tensor,
                   mean: torch.Tensor, rstd: torch.Tensor, scale: torch.Tensor, count: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchNorm's backward from g = dL/d(x * scale + shift): (dx, dgamma, dbeta), dx through the batch
    mean and variance too: dx = scale * (g - dbeta / count - (x - mean) * rstd * dgamma / count)."""
    dbeta, dgamma = sum_g, rstd * sum_g_centred
    x_coef = -scale * rstd * dgamma / count
    dx = channel_affine(g, scale, x, x_coef, -scale * dbeta / count - x_coef * mean, relu=False)
    return dx, dgamma, dbeta


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).contiguous()  # a view when t is channels-last


class BnReluConv(torch.autograd.Function):
    """y = conv(relu(batch_norm(x))) with batch statistics (x_total/x_squares: x's ChannelSums; None: conv(x)),
    returning also y's sums. Those are not differentiable: the next unit's backward differentiates through them."""

    @staticmethod
    def forward(ctx, x, x_total, x_squares, bn_weight, bn_bias, weight, groups, stride, pad, eps):
        x_nhwc, w = _nhwc(x), weight.to(x.dtype)
        mean = rstd = scale = shift = None
        if x_total is not None:
            mean, rstd = mean_rstd(x_total, x_squares, x.numel() // x.shape[1], eps)
            scale = bn_weight.float() * rstd
            shift = bn_bias.float() - mean * scale
        y, total, squares = conv_with_sums(x_nhwc, w, groups, stride, pad, scale, shift)
        ctx.save_for_backward(x_nhwc, w, mean, rstd, scale, shift)
        ctx.conf = (groups, stride, pad, weight.dtype, None if bn_weight is None else bn_weight.dtype)
        ctx.mark_non_differentiable(total, squares)
        return y.permute(0, 3, 1, 2), total, squares

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, _grad_total, _grad_squares):
        x_nhwc, w, mean, rstd, scale, shift = ctx.saved_tensors
        groups, stride, pad, weight_dtype, bn_dtype = ctx.conf
        need_x, need_bn, need_w = ctx.needs_input_grad[0], any(ctx.needs_input_grad[3:5]), ctx.needs_input_grad[5]
        dy = _nhwc(grad_y.to(x_nhwc.dtype))
        grad_x = grad_gamma = grad_beta = grad_w = None
        if need_x or (need_bn and scale is not None):
            g, sum_g, sum_g_centred = input_grad_with_sums(dy, w, x_nhwc, groups, stride, pad, scale, shift, mean)
            if scale is None:
                grad_x = g
            else:
                grad_x, grad_gamma, grad_beta = _bn_input_grad(g, x_nhwc, sum_g, sum_g_centred, mean, rstd, scale,
                                                               g.numel() // g.shape[-1])
                grad_gamma, grad_beta = grad_gamma.to(bn_dtype), grad_beta.to(bn_dtype)
            grad_x = grad_x.permute(0, 3, 1, 2)
        if need_w:
            grad_w = weight_grad(x_nhwc, dy, w, groups, stride, pad, scale, shift).to(weight_dtype)
        return grad_x, None, None, grad_gamma, grad_beta, grad_w, None, None, None, None


class BnAddRelu(torch.autograd.Function):
    """relu(batch_norm(y) + residual'), residual' = batch_norm(residual) when r_total is given, else residual."""

    @staticmethod
    def forward(ctx, y, y_total, y_squares, bn_weight, bn_bias, residual, r_total, r_squares, r_weight, r_bias, eps):
        y_nhwc, r_nhwc = _nhwc(y), _nhwc(residual.to(y.dtype))
        count = y.numel() // y.shape[1]
        y_mean, y_rstd = mean_rstd(y_total, y_squares, count, eps)
        y_scale = bn_weight.float() * y_rstd
        shift = bn_bias.float() - y_mean * y_scale
        r_mean = r_rstd = r_scale = None
        if r_total is not None:
            r_mean, r_rstd = mean_rstd(r_total, r_squares, count, eps)
            r_scale = r_weight.float() * r_rstd
            shift = shift + r_bias.float() - r_mean * r_scale
        out = channel_affine(y_nhwc, y_scale, r_nhwc, torch.ones_like(y_scale) if r_scale is None else r_scale,
                             shift, relu=True)
        ctx.save_for_backward(y_nhwc, r_nhwc, out, y_mean, y_rstd, y_scale, r_mean, r_rstd, r_scale)
        ctx.conf = (bn_weight.dtype, residual.dtype)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        y_nhwc, r_nhwc, out, y_mean, y_rstd, y_scale, r_mean, r_rstd, r_scale = ctx.saved_tensors
        bn_dtype, residual_dtype = ctx.conf
        residual_bn = r_scale is not None
        gz, sums = relu_grad_sums(_nhwc(grad_out.to(out.dtype)), out, y_nhwc, y_mean,
                                  r_nhwc if residual_bn else None, r_mean)
        count = gz.numel() // gz.shape[-1]
        dy, dgamma, dbeta = _bn_input_grad(gz, y_nhwc, sums[0], sums[1], y_mean, y_rstd, y_scale, count)
        r_grads = [None, None]
        if residual_bn:
            dr, r_dgamma, r_dbeta = _bn_input_grad(gz, r_nhwc, sums[0].clone(), sums[2], r_mean, r_rstd, r_scale,
                                                   count)
            r_grads = [r_dgamma.to(bn_dtype), r_dbeta.to(bn_dtype)]
        else:
            dr = gz
        return (dy.permute(0, 3, 1, 2), None, None, dgamma.to(bn_dtype), dbeta.to(bn_dtype),
                dr.permute(0, 3, 1, 2).to(residual_dtype), None, None, *r_grads, None)


def _affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    if not bn.affine:
        raise ValueError("the fused kernels need an affine BatchNorm2d (affine=True, as ResNets have)")
    return bn.weight, bn.bias


def bn_relu_conv(x: torch.Tensor, conv_weight: torch.Tensor, groups: int, stride: int, pad: int,
                 bn: nn.BatchNorm2d | None = None, x_sums: ChannelSums | None = None
                 ) -> tuple[torch.Tensor, ChannelSums]:
    """conv(relu(bn(x))) with bn in training mode on x's batch statistics `x_sums` (from the unit that made
    x), or conv(x) without bn; returns y (n, c, h, w) channels-last and y's ChannelSums."""
    if (bn is None) != (x_sums is None):
        raise ValueError("bn_relu_conv: pass both bn and x_sums (x's statistics), or neither")
    if bn is not None and bn.num_features != x.shape[1]:
        raise ValueError(f"bn_relu_conv: a BatchNorm of {bn.num_features} channels for an input of {x.shape[1]}")
    bn_weight, bn_bias = _affine(bn) if bn is not None else (None, None)
    y, total, squares = BnReluConv.apply(x, *(x_sums[:2] if x_sums else (None, None)), bn_weight, bn_bias,
                                         conv_weight, groups, stride, pad, bn.eps if bn is not None else 0.0)
    return y, ChannelSums(total, squares, y.numel() // y.shape[1])


def bn_add_relu(y: torch.Tensor, y_sums: ChannelSums, bn: nn.BatchNorm2d, residual: torch.Tensor,
                residual_bn: nn.BatchNorm2d | None = None, residual_sums: ChannelSums | None = None) -> torch.Tensor:
    """relu(bn(y) + residual) at a residual block's end, the residual through its own BatchNorm (the
    downsample branch's, on its statistics `residual_sums`) when residual_bn is given; batch statistics."""
    if (residual_bn is None) != (residual_sums is None):
        raise ValueError("bn_add_relu: pass both residual_bn and residual_sums, or neither")
    if residual.shape != y.shape or bn.num_features != y.shape[1]:
        raise ValueError(f"bn_add_relu: output {tuple(y.shape)}, residual {tuple(residual.shape)} and a BatchNorm of "
                         f"{bn.num_features} channels do not match")
    if residual_bn is not None and residual_bn.eps != bn.eps:
        raise ValueError(f"bn_add_relu: both BatchNorms need one eps ({bn.eps} and {residual_bn.eps})")
    r_weight, r_bias = _affine(residual_bn) if residual_bn is not None else (None, None)
    r_total, r_squares = residual_sums[:2] if residual_sums is not None else (None, None)
    return BnAddRelu.apply(y, y_sums.total, y_sums.squares, *_affine(bn), residual, r_total, r_squares, r_weight,
                           r_bias, bn.eps)


@torch.no_grad()
def update_running_stats(bn: nn.BatchNorm2d, sums: ChannelSums) -> None:
    """Fold a batch's statistics into bn's running mean and (unbiased) variance, as a training-mode
    F.batch_norm does, momentum None (a cumulative average) included."""
    if not bn.track_running_stats:
        return
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    mean = sums.total / sums.count
    variance = (sums.squares / sums.count - mean * mean).clamp_min(0) * (sums.count / max(sums.count - 1, 1))
    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
    bn.running_var.lerp_(variance.to(bn.running_var.dtype), factor)
