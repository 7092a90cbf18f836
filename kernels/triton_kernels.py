"""Grouped convolution as one implicit-GEMM Triton kernel per pass, the group as a grid axis.

Why: cuDNN runs our 48-branch grouped convolutions as one small convolution per group after
copying each group's channels out of the channels-last tensor (benchmarks/RESULTS.md: the
copies alone are 23 % of a training step on an H100). These kernels read every group's
channels where they lie, in place: activations are channels-last (n, h, w, groups*c), and
program (tile, g) computes output tile of group g as a GEMM over (kernel tap, input channel),
loading the input through index arithmetic (implicit GEMM; no im2col copy).

  forward   y[m, co]  = sum_{tap, ci} x[pixel(m, tap), ci] w[co, ci, tap]      (m: output pixel)
  dgrad     dx[m, ci] = sum_{tap, co} dy[pixel'(m, tap), co] w[co, ci, tap]     (transposed indexing,
            one program per output parity class for strides > 1, so no multiply is spent on zeros)
  wgrad     dw[co, ci, tap] = sum_m x[pixel(m, tap), ci] dy[m, co]

Weights are read, and weight gradients written, in the parameter's own layout (strides passed
in), so no weight is copied into another layout; image sizes, stride and padding are compile-time
constants, which keeps the index arithmetic out of the inner loop's instruction budget.

Opt-in (`kernels.triton_convs.use_triton_convs`), CUDA only, for groups whose input
and output channels are multiples of 16; other convolutions keep cuDNN. Correctness is tested on the
CPU with Triton's interpreter (TRITON_INTERPRET=1); speed is measured by benchmarks/conv_kernels.py.
"""
from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

from kernels.implicit_gemm import triton

MIN_GROUP_CHANNELS = 16  # tl.dot's smallest K and N; group channels must be multiples of it

if triton is not None:
    import triton.language as tl

    from kernels.implicit_gemm import gemm_rows, gemm_tap, wgrad_pixels

    @triton.jit
    def conv_fwd_kernel(x_ptr, w_ptr, y_ptr, N, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
                        G, CI, CO, stride: tl.constexpr, pad: tl.constexpr,
                        sw_g, sw_c, sw_n, sw_kh, sw_kw,
                        KH: tl.constexpr, KW: tl.constexpr, TRANSPOSED: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """y (N, HO, WO, G*CO) from x (N, H, W, G*CI); weight element (g, reduction channel c, output channel n,
        kh, kw) at w_ptr + g*sw_g + c*sw_c + n*sw_n + kh*sw_kh + kw*sw_kw (any layout).

        TRANSPOSED: program_id(2) is the output pixels' parity class modulo the stride (implicit_gemm.py)."""
        pid = tl.program_id(0)
        g = tl.program_id(1)
        num_n = tl.cdiv(CO, BN)
        pid_m = pid // num_n
        pid_n = pid % num_n
        offs_n = pid_n * BN + tl.arange(0, BN)
        offs_kk = tl.arange(0, BK)
        offs_m = pid_m * BM + tl.arange(0, BM)
        n, oh, ow, in_range, k_total, i, j, ph, pw, kh0, kw0, nkw = gemm_rows(offs_m, N, HO, WO, CI, stride, pad,
                                                                              KH, KW, TRANSPOSED)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        x_rows = x_ptr + (n * (H * W)).to(tl.int64) * (G * CI) + g * CI
        w_ptrs = w_ptr + g.to(tl.int64) * sw_g + offs_kk[:, None] * sw_c + offs_n[None, :] * sw_n
        n_mask = offs_n[None, :] < CO
        for k0 in range(0, k_total, BK):
            c0, kh, kw, pix, valid = gemm_tap(k0, CI, i, j, in_range, ph, pw, kh0, kw0, nkw, H, W, stride, pad, KW,
                                              TRANSPOSED)
            a = tl.load(x_rows[:, None] + (pix * (G * CI))[:, None] + (c0 + offs_kk)[None, :],
                        mask=valid[:, None], other=0.0)
            b = tl.load(w_ptrs + (c0 * sw_c + kh * sw_kh + kw * sw_kw), mask=n_mask, other=0.0)
            acc = tl.dot(a, b, acc)
        out_row = ((n * HO + oh) * WO + ow).to(tl.int64)
        out = y_ptr + out_row[:, None] * (G * CO) + g * CO + offs_n[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=in_range[:, None] & n_mask)


    @triton.jit
    def conv_wgrad_kernel(x_ptr, dy_ptr, dw_ptr, N, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr,
                          WO: tl.constexpr, G, CI, CO, stride: tl.constexpr, pad: tl.constexpr,
                          s_co, s_ci, s_kh, s_kw,
                          KH: tl.constexpr, KW: tl.constexpr,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """dw (G*CO, CI, KH, KW) float32 with strides (s_co, s_ci, s_kh, s_kw), from x (N, H, W, G*CI) and dy."""
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
        ci_mask = offs_ci[:, None] < CI
        co_mask = offs_co[None, :] < CO
        x_base = x_ptr + g * CI + offs_ci[:, None]
        dy_base = dy_ptr + g * CO + offs_co[None, :]
        for m0 in range(0, m_total, BK):
            offs_m = m0 + tl.arange(0, BK)
            pixel, inside = wgrad_pixels(offs_m, H, W, HO, WO, stride, pad, kh, kw)
            valid = inside & (offs_m < m_total)
            row = pixel * (G * CI)
            a = tl.load(x_base + row[None, :], mask=valid[None, :] & ci_mask, other=0.0)  # (BM ci, BK m)
            b = tl.load(dy_base + offs_m.to(tl.int64)[:, None] * (G * CO),
                        mask=(offs_m[:, None] < m_total) & co_mask, other=0.0)  # (BK m, BN co)
            acc = tl.dot(a, b, acc)
        out = (dw_ptr + (g * CO).to(tl.int64) * s_co + kh * s_kh + kw * s_kw
               + offs_ci[:, None] * s_ci + offs_co[None, :] * s_co)
        tl.store(out, acc, mask=ci_mask & co_mask)


def _kernels():
    if triton is None:
        raise RuntimeError("the Triton convolution kernels need the triton package (pip install triton)")
    return triton, conv_fwd_kernel, conv_wgrad_kernel


def _blocks(rows: int, k: int, n: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BM, BN, BK, num_warps): up to 128 x 128 x 64 tiles on GPUs, with BK dividing the reduction
    channels k (a multiple of 16, see `supports`); 16 x 16 x 16 on the interpreter, unless
    ANTIMETRIC_TRITON_GPU_TILES=1 asks it to run the GPU's tiles (tests)."""
    if device.type != "cuda" and os.environ.get("ANTIMETRIC_TRITON_GPU_TILES") != "1":
        return 16, 16, 16, 1
    bn = 128 if n >= 128 else 64 if n >= 64 else 32 if n >= 32 else 16
    bk = 64 if k % 64 == 0 else 32 if k % 32 == 0 else 16
    bm = 128 if rows >= 128 else 64
    return bm, bn, bk, 8 if bm * bn >= 128 * 128 else 4


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def conv_forward(x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int, pad: int, *,
                 transposed_to: tuple[int, int] | None = None) -> torch.Tensor:
    """x (n, h, w, groups*c) channels-last data, weight (groups*co, ci, kh, kw) in any layout
    -> (n, ho, wo, groups*co). transposed_to=(H, W): the input gradient instead (x is then the
    output gradient, reduced over co, giving (n, H, W, groups*ci))."""
    triton, fwd, _ = _kernels()
    n, h, wd, c_in = x.shape
    co_total, ci, kh, kw = weight.shape
    co = co_total // groups
    s0, s1, s2, s3 = weight.stride()
    if transposed_to is None:
        reduced, out_c, stride_c, stride_n = ci, co, s1, s0
        ho, wo = _out_size(h, kh, stride, pad), _out_size(wd, kw, stride, pad)
    else:
        reduced, out_c, stride_c, stride_n = co, ci, s0, s1
        ho, wo = transposed_to
    if c_in != groups * reduced or reduced % MIN_GROUP_CHANNELS or out_c % MIN_GROUP_CHANNELS:
        raise ValueError(f"input {tuple(x.shape)} and weight {tuple(weight.shape)} do not form {groups} groups of "
                         f"a multiple of {MIN_GROUP_CHANNELS} channels")
    y = torch.empty(n, ho, wo, groups * out_c, device=x.device, dtype=x.dtype)
    bm, bn, bk, warps = _blocks(n * ho * wo, reduced, out_c, x.device)
    if transposed_to is None:
        grid = (triton.cdiv(n * ho * wo, bm) * triton.cdiv(out_c, bn), groups, 1)
    else:  # one output parity class per program_id(2); the largest class sizes axis 0
        rows = n * triton.cdiv(ho, stride) * triton.cdiv(wo, stride)
        grid = (triton.cdiv(rows, bm) * triton.cdiv(out_c, bn), groups, stride * stride)
    fwd[grid](x, weight, y, n, h, wd, ho, wo, groups, reduced, out_c, stride, pad,
              co * s0, stride_c, stride_n, s2, s3, KH=kh, KW=kw, TRANSPOSED=transposed_to is not None,
              BM=bm, BN=bn, BK=bk, num_warps=warps)
    return y


def conv_weight_grad(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, groups: int, stride: int,
                     pad: int) -> torch.Tensor:
    """float32 weight gradient in `weight`'s shape and layout, from channels-last data x and dy."""
    triton, _, wgrad = _kernels()
    n, h, wd, c_in = x.shape
    _, ho, wo, c_out = dy.shape
    ci, co = c_in // groups, c_out // groups
    kh, kw = weight.shape[-2:]
    dw = torch.empty_like(weight, dtype=torch.float32)  # the parameter's layout: autograd keeps it as it is
    bm, bn, bk, _ = _blocks(ci, n * ho * wo, co, x.device)
    if bm > 16:  # GPU tiles: at most 64 input channels a tile, 4 warps for 64 x 128
        bm = min(bm, 64 if ci >= 64 else 32 if ci >= 32 else 16)
    warps = 8 if bm * bn >= 128 * 128 else 4 if bm > 16 else 1
    grid = (triton.cdiv(ci, bm) * triton.cdiv(co, bn), groups * kh * kw)
    wgrad[grid](x, dy, dw, n, h, wd, ho, wo, groups, ci, co, stride, pad, *dw.stride(),
                KH=kh, KW=kw, BM=bm, BN=bn, BK=bk, num_warps=warps)
    return dw


class TritonGroupedConv2d(torch.autograd.Function):
    """Grouped 2-D convolution without bias on NCHW-shaped tensors stored channels-last."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int, pad: int) -> torch.Tensor:
        w = weight.to(x.dtype)  # bf16 under autocast; same layout as the parameter
        x_nhwc = x.permute(0, 2, 3, 1).contiguous()  # a view when x is channels-last
        y = conv_forward(x_nhwc, w, groups, stride, pad)
        ctx.save_for_backward(x_nhwc, w)
        ctx.conf = (groups, stride, pad, tuple(x.shape[2:]), weight.dtype)
        return y.permute(0, 3, 1, 2)  # (n, c, h, w) shape, channels-last memory

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        x_nhwc, w = ctx.saved_tensors
        groups, stride, pad, in_hw, weight_dtype = ctx.conf
        dy = grad_y.to(x_nhwc.dtype).permute(0, 2, 3, 1).contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = conv_forward(dy, w, groups, stride, pad, transposed_to=in_hw).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_w = conv_weight_grad(x_nhwc, dy, w, groups, stride, pad).to(weight_dtype)
        return grad_x, grad_w, None, None, None


def grouped_conv2d(x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int, pad: int) -> torch.Tensor:
    return TritonGroupedConv2d.apply(x, weight, groups, stride, pad)
