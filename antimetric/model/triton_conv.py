"""Grouped convolution as one implicit-GEMM Triton kernel per pass, the group as a grid axis.

Why: cuDNN runs our 48-branch grouped convolutions as one small convolution per group after
copying each group's channels out of the channels-last tensor (benchmarks/RESULTS.md: the
copies alone are 23 % of a training step on an H100). These kernels read every group's
channels where they lie, in place: activations are channels-last (n, h, w, groups*c), and
program (tile, g) computes output tile of group g as a GEMM over (kernel tap, input channel),
loading the input through index arithmetic (implicit GEMM; no im2col copy).

  forward   y[m, co]  = sum_{tap, ci} x[pixel(m, tap), ci] w[tap, ci, co]      (m: output pixel)
  dgrad     dx[m, ci] = sum_{tap, co} dy[pixel'(m, tap), co] w[tap, ci, co]     (transposed indexing)
  wgrad     dw[tap, ci, co] = sum_m x[pixel(m, tap), ci] dy[m, co]

Opt-in (`BatchedBranches.conv_kernels = "triton"`), CUDA only, for groups of at least 16
input and output channels; other convolutions keep cuDNN. Correctness is tested on the CPU with
Triton's interpreter (TRITON_INTERPRET=1); speed is measured by benchmarks/conv_kernels.py.
The core imports this module only when the Triton path is chosen.
"""
from __future__ import annotations

import os

import torch

MIN_GROUP_CHANNELS = 16  # tl.dot's smallest K and N; group channels must be multiples of it


try:  # only the CUDA path (and its interpreter tests) need Triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch wheels for Linux ship it
    triton = None

if triton is not None:

    @triton.jit
    def conv_fwd_kernel(x_ptr, w_ptr, y_ptr, N, H, W, HO, WO, G, CI, CO, stride, pad,
                        KH: tl.constexpr, KW: tl.constexpr, TRANSPOSED: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """y (N, HO, WO, G*CO) from x (N, H, W, G*CI) and w (G, KH, KW, CI, CO).

        TRANSPOSED: the input gradient of a convolution whose output is x, i.e. output pixel
        (oh, ow) reads x at ((oh + pad - kh) / stride, ...) where that divides exactly."""
        pid = tl.program_id(0)
        g = tl.program_id(1)
        num_n = tl.cdiv(CO, BN)
        pid_m = pid // num_n
        pid_n = pid % num_n
        m_total = N * HO * WO
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        ow = offs_m % WO
        oh = (offs_m // WO) % HO
        n = offs_m // (WO * HO)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        in_range = offs_m < m_total
        w_group = w_ptr + (g * KH * KW * CI).to(tl.int64) * CO
        # one loop over (tap, channel block), long enough for Triton to pipeline; BK divides CI,
        # so a block never spans two taps
        for k0 in range(0, KH * KW * CI, BK):
            tap = k0 // CI
            kh = tap // KW
            kw = tap % KW
            if TRANSPOSED:
                th = oh + pad - kh
                tw = ow + pad - kw
                ih = th // stride
                iw = tw // stride
                valid = (th >= 0) & (tw >= 0) & (th % stride == 0) & (tw % stride == 0)
            else:
                ih = oh * stride - pad + kh
                iw = ow * stride - pad + kw
                valid = (ih >= 0) & (iw >= 0)
            valid = valid & (ih < H) & (iw < W) & in_range
            row = ((n * H + ih) * W + iw).to(tl.int64) * (G * CI) + g * CI
            offs_c = (k0 - tap * CI) + tl.arange(0, BK)
            a = tl.load(x_ptr + row[:, None] + offs_c[None, :], mask=valid[:, None], other=0.0)
            offs_k = k0 + tl.arange(0, BK)
            b = tl.load(w_group + offs_k[:, None] * CO + offs_n[None, :], mask=offs_n[None, :] < CO, other=0.0)
            acc += tl.dot(a, b)
        out = y_ptr + offs_m.to(tl.int64)[:, None] * (G * CO) + g * CO + offs_n[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < m_total) & (offs_n[None, :] < CO))

    @triton.jit
    def conv_wgrad_kernel(x_ptr, dy_ptr, dw_ptr, N, H, W, HO, WO, G, CI, CO, stride, pad,
                          KH: tl.constexpr, KW: tl.constexpr,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """dw (G, KH, KW, CI, CO) float32 from x (N, H, W, G*CI) and dy (N, HO, WO, G*CO)."""
        pid = tl.program_id(0)
        tap_g = tl.program_id(1)
        g = tap_g // (KH * KW)
        kh = (tap_g // KW) % KH
        kw = tap_g % KW
        num_n = tl.cdiv(CO, BN)
        offs_ci = (pid // num_n) * BM + tl.arange(0, BM)
        offs_co = (pid % num_n) * BN + tl.arange(0, BN)
        m_total = N * HO * WO
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for m0 in range(0, m_total, BK):
            offs_m = m0 + tl.arange(0, BK)
            ow = offs_m % WO
            oh = (offs_m // WO) % HO
            n = offs_m // (WO * HO)
            ih = oh * stride - pad + kh
            iw = ow * stride - pad + kw
            valid = (ih >= 0) & (iw >= 0) & (ih < H) & (iw < W) & (offs_m < m_total)
            row = ((n * H + ih) * W + iw).to(tl.int64) * (G * CI) + g * CI
            a = tl.load(x_ptr + row[None, :] + offs_ci[:, None],
                        mask=valid[None, :] & (offs_ci[:, None] < CI), other=0.0)  # (BM ci, BK m)
            b = tl.load(dy_ptr + offs_m.to(tl.int64)[:, None] * (G * CO) + g * CO + offs_co[None, :],
                        mask=(offs_m[:, None] < m_total) & (offs_co[None, :] < CO), other=0.0)  # (BK m, BN co)
            acc += tl.dot(a, b)
        out = dw_ptr + (tap_g * CI).to(tl.int64) * CO + offs_ci[:, None] * CO + offs_co[None, :]
        tl.store(out, acc, mask=(offs_ci[:, None] < CI) & (offs_co[None, :] < CO))


def _kernels():
    if triton is None:
        raise RuntimeError("the Triton convolution kernels need the triton package (pip install triton)")
    return triton, conv_fwd_kernel, conv_wgrad_kernel


def _blocks(rows: int, k: int, n: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BM, BN, BK, num_warps): up to 128 x 128 x 64 tiles on GPUs, with BK dividing the reduction
    channels k (a multiple of 16, see `supports`); 16 x 16 x 16 on the interpreter."""
    if device.type != "cuda":
        return 16, 16, 16, 1
    bn = 128 if n >= 128 else 64 if n >= 64 else 32 if n >= 32 else 16
    bk = 64 if k % 64 == 0 else 32 if k % 32 == 0 else 16
    bm = 128 if rows >= 128 else 64
    return bm, bn, bk, 8 if bm * bn >= 128 * 128 else 4


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def conv_forward(x: torch.Tensor, w: torch.Tensor, groups: int, stride: int, pad: int, *,
                 transposed_to: tuple[int, int] | None = None) -> torch.Tensor:
    """x (n, h, w, groups*ci) channels-last data, w (groups, kh, kw, ci, co) -> (n, ho, wo, groups*co).

    transposed_to=(H, W): the transposed convolution back to an H x W input (the input gradient)."""
    triton, fwd, _ = _kernels()
    n, h, wd, c_in = x.shape
    g, kh, kw, ci, co = w.shape
    if g != groups or c_in != groups * ci or ci % MIN_GROUP_CHANNELS:
        raise ValueError(f"input {tuple(x.shape)} and weight {tuple(w.shape)} do not form {groups} groups of "
                         f"a multiple of {MIN_GROUP_CHANNELS} channels")
    ho, wo = transposed_to if transposed_to else (_out_size(h, kh, stride, pad), _out_size(wd, kw, stride, pad))
    y = torch.empty(n, ho, wo, groups * co, device=x.device, dtype=x.dtype)
    bm, bn, bk, warps = _blocks(n * ho * wo, ci, co, x.device)
    grid = (triton.cdiv(n * ho * wo, bm) * triton.cdiv(co, bn), groups)
    fwd[grid](x, w, y, n, h, wd, ho, wo, groups, ci, co, stride, pad, KH=kh, KW=kw,
              TRANSPOSED=transposed_to is not None, BM=bm, BN=bn, BK=bk, num_warps=warps)
    return y


def conv_weight_grad(x: torch.Tensor, dy: torch.Tensor, groups: int, kernel: tuple[int, int], stride: int,
                     pad: int) -> torch.Tensor:
    """float32 (groups, kh, kw, ci, co) weight gradient from channels-last data x and dy."""
    triton, _, wgrad = _kernels()
    n, h, wd, c_in = x.shape
    _, ho, wo, c_out = dy.shape
    ci, co = c_in // groups, c_out // groups
    kh, kw = kernel
    dw = torch.empty(groups, kh, kw, ci, co, device=x.device, dtype=torch.float32)
    bm, bn, bk, warps = _blocks(ci, n * ho * wo, co, x.device)
    bm = min(bm, 64 if ci >= 64 else 32 if ci >= 32 else 16) if x.device.type == "cuda" else bm
    grid = (triton.cdiv(ci, bm) * triton.cdiv(co, bn), groups * kh * kw)
    wgrad[grid](x, dy, dw, n, h, wd, ho, wo, groups, ci, co, stride, pad, KH=kh, KW=kw, BM=bm, BN=bn, BK=bk,
                num_warps=warps)
    return dw


class TritonGroupedConv2d(torch.autograd.Function):
    """Grouped 2-D convolution without bias on NCHW-shaped tensors stored channels-last."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int, pad: int) -> torch.Tensor:
        kh, kw = weight.shape[-2:]
        w = _weight_taps(weight.to(x.dtype), groups)  # (g, kh, kw, ci, co)
        x_nhwc = x.permute(0, 2, 3, 1).contiguous()  # a view when x is channels-last
        y = conv_forward(x_nhwc, w, groups, stride, pad)
        ctx.save_for_backward(x_nhwc, w)
        ctx.conf = (groups, stride, pad, (kh, kw), x.shape[2:], weight.dtype)
        return y.permute(0, 3, 1, 2)  # (n, c, h, w) shape, channels-last memory

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x_nhwc, w = ctx.saved_tensors
        groups, stride, pad, kernel, in_hw, weight_dtype = ctx.conf
        dy = grad_y.to(x_nhwc.dtype).permute(0, 2, 3, 1).contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            w_t = w.transpose(3, 4).contiguous()  # (g, kh, kw, co, ci): the transposed convolution's weights
            grad_x = conv_forward(dy, w_t, groups, stride, pad, transposed_to=tuple(in_hw)).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            dw = conv_weight_grad(x_nhwc, dy, groups, kernel, stride, pad)  # (g, kh, kw, ci, co)
            grad_w = dw.permute(0, 4, 3, 1, 2).reshape(-1, dw.shape[3], *kernel).to(weight_dtype)
        return grad_x, grad_w, None, None, None


def _weight_taps(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(groups*co, ci, kh, kw) -> (groups, kh, kw, ci, co), contiguous."""
    co_total, ci, kh, kw = weight.shape
    return weight.view(groups, co_total // groups, ci, kh, kw).permute(0, 3, 4, 2, 1).contiguous()


def runs_on(x: torch.Tensor) -> bool:
    """CUDA tensors; CPU tensors too under Triton's interpreter (TRITON_INTERPRET=1, for tests)."""
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def supports(conv: torch.nn.Conv2d) -> bool:
    """Convolutions these kernels cover: grouped, no dilation, square stride and padding, and
    groups whose input and output channels are multiples of 16 (tl.dot's smallest tile)."""
    return (conv.groups > 1 and conv.dilation == (1, 1) and conv.stride[0] == conv.stride[1]
            and not isinstance(conv.padding, str) and conv.padding[0] == conv.padding[1]
            and (conv.in_channels // conv.groups) % MIN_GROUP_CHANNELS == 0
            and (conv.out_channels // conv.groups) % MIN_GROUP_CHANNELS == 0)


def grouped_conv2d(x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int, pad: int) -> torch.Tensor:
    return TritonGroupedConv2d.apply(x, weight, groups, stride, pad)
