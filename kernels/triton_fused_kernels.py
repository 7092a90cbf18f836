"""BatchNorm and ReLU fused into the Triton grouped-convolution kernels: the kernels, with their autotune configs.

triton_fused.py launches them and ties them into autograd Functions; its docstring says what is opt-in
and what would make it a default. The layout is triton_kernels.py's (channels-last, the group as a grid
axis, implicit GEMM with implicit_gemm.py's address arithmetic, weights read in the parameter's own layout).

Why: in training, a BatchNorm's statistics need the whole output of the convolution before it, so
BN-apply cannot go into that convolution's epilogue. It goes into the next one's prologue instead:

  forward   y = conv(act(x)), act(x) = relu(x * scale[c] + shift[c]) applied as x is loaded (the
            normalised activation is never written; padding stays 0, not act(0)); the epilogue adds
            sum(y) and sum(y^2) per output channel into two float32 vectors (atomics): the next
            BatchNorm's statistics, without a pass that reads y again.
  dgrad     d act = conv^T(dy, w), with the epilogue applying the ReLU's mask (recomputed from x)
            and summing g = mask * d act and g * (x - mean) per channel: BatchNorm's dbeta and,
            times rstd, dgamma. The input gradient needs both sums, so `channel_affine` finishes it.
  wgrad     dw = sum over n, h, w of act(x) dy, act recomputed from x on load; split-K over the
            reduction (extra grid axis, partials added atomically into a zeroed float32 dw).
  channel_affine / relu_grad_sums: elementwise kernels for what follows a block's last convolution,
            out = relu(y * s + r * s_r + t) (BatchNorm-apply, residual add with or without its own
            BatchNorm, ReLU), and their backward.

Every kernel is autotuned (`triton.autotune`, keyed on the shapes). Under Triton's interpreter one
config is used, a small one, or GPU config i when ANTIMETRIC_TRITON_FUSED_CONFIG=i (tests).
Statistics are sum and sum of squares in float32: a channel whose mean is large against its spread
loses precision to that (the sums of the input gradient centre on the mean and do not).
"""
from __future__ import annotations

import os

from kernels.implicit_gemm import triton

if triton is not None:
    import triton.language as tl

    from kernels.implicit_gemm import gemm_rows, gemm_tap, wgrad_pixels


def _tuning(gpu: list[dict], interpreted: dict) -> list:
    """Autotune configs: `gpu`'s on a GPU; one on the interpreter, which times nothing."""
    def config(c: dict):
        meta = {k: v for k, v in c.items() if k not in ("num_warps", "num_stages")}
        return triton.Config(meta, num_warps=c.get("num_warps", 4), num_stages=c.get("num_stages", 3))
    if os.environ.get("TRITON_INTERPRET") != "1":
        return [config(c) for c in gpu]
    forced = os.environ.get("ANTIMETRIC_TRITON_FUSED_CONFIG")
    return [config(gpu[int(forced) % len(gpu)] if forced else interpreted)]


CONV_CONFIGS = [dict(BM=128, BN=128, BK=64, num_warps=8), dict(BM=128, BN=64, BK=64),
                dict(BM=64, BN=128, BK=64), dict(BM=128, BN=128, BK=32, num_warps=8, num_stages=4),
                dict(BM=64, BN=64, BK=64, num_stages=4), dict(BM=64, BN=64, BK=32, num_stages=4),
                dict(BM=64, BN=16, BK=16)]  # the last fits every shape the kernels accept
WGRAD_CONFIGS = [dict(BM=128, BN=128, BK=64, SPLIT_K=1, num_warps=8), dict(BM=64, BN=128, BK=64, SPLIT_K=4),
                 dict(BM=64, BN=128, BK=64, SPLIT_K=1), dict(BM=128, BN=128, BK=32, SPLIT_K=2, num_warps=8),
                 dict(BM=64, BN=64, BK=64, SPLIT_K=8), dict(BM=64, BN=64, BK=64, SPLIT_K=2),
                 dict(BM=16, BN=16, BK=64, SPLIT_K=1)]
ELEMENTWISE_CONFIGS = [dict(BR=64, BC=64), dict(BR=128, BC=64, num_warps=8), dict(BR=32, BC=128),
                       dict(BR=16, BC=256, num_warps=8)]


def _conv_prune(configs, named_args, **kwargs):
    """Tiles that divide the reduction's channels (the K loop steps through one tap at a time) and no wider
    than the output channels; the last config, which fits every shape, only when none of the others does."""
    fit = [c for c in configs[:-1] if named_args["CI"] % c.kwargs["BK"] == 0 and c.kwargs["BN"] <= named_args["CO"]]
    return fit or configs[-1:]


def _wgrad_prune(configs, named_args, **kwargs):
    fit = [c for c in configs[:-1] if c.kwargs["BM"] <= named_args["CI"] and c.kwargs["BN"] <= named_args["CO"]]
    return fit or configs[-1:]


if triton is not None:

    @triton.autotune(configs=_tuning(CONV_CONFIGS, dict(BM=32, BN=16, BK=16, num_warps=1)),
                     key=["N", "H", "W", "HO", "WO", "G", "CI", "CO", "KH", "stride", "TRANSPOSED", "BN_RELU"],
                     prune_configs_by={"early_config_prune": _conv_prune}, reset_to_zero=["sum_ptr", "prod_ptr"])
    @triton.jit
    def fused_conv_kernel(x_ptr, w_ptr, y_ptr, scale_ptr, shift_ptr, saved_ptr, centre_ptr, sum_ptr, prod_ptr,
                          N, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
                          G, CI, CO, stride: tl.constexpr, pad: tl.constexpr, sw_g, sw_c, sw_n, sw_kh, sw_kw,
                          KH: tl.constexpr, KW: tl.constexpr, TRANSPOSED: tl.constexpr, BN_RELU: tl.constexpr,
                          SUMS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """triton_kernels.conv_fwd_kernel (see there for the indexing), plus, when BN_RELU, the input's
        relu(x * scale + shift): forward, applied to x on load; TRANSPOSED (dgrad), its ReLU mask applied to
        the result, recomputed from the forward input at saved_ptr. SUMS: per output channel, atomically,
        sum_ptr += sum(y) and prod_ptr += sum(y * y) forward, sum(y * (saved - centre)) transposed."""
        pid = tl.program_id(0)
        g = tl.program_id(1)
        num_n = tl.cdiv(CO, BN)
        pid_m = pid // num_n
        offs_n = (pid % num_n) * BN + tl.arange(0, BN)
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
            if BN_RELU and not TRANSPOSED:  # the previous BatchNorm + ReLU; padding stays 0
                scale = tl.load(scale_ptr + g * CI + c0 + offs_kk)
                shift = tl.load(shift_ptr + g * CI + c0 + offs_kk)
                a = tl.maximum(a.to(tl.float32) * scale[None, :] + shift[None, :], 0.0)
                a = tl.where(valid[:, None], a, 0.0).to(x_ptr.dtype.element_ty)
            b = tl.load(w_ptrs + (c0 * sw_c + kh * sw_kh + kw * sw_kw), mask=n_mask, other=0.0)
            acc = tl.dot(a, b, acc)
        out_row = ((n * HO + oh) * WO + ow).to(tl.int64)
        channel = g * CO + offs_n
        out_mask = in_range[:, None] & n_mask
        out_offs = out_row[:, None] * (G * CO) + channel[None, :]
        if TRANSPOSED and BN_RELU:
            saved = tl.load(saved_ptr + out_offs, mask=out_mask, other=0.0).to(tl.float32)
            scale = tl.load(scale_ptr + channel, mask=offs_n < CO, other=0.0)
            shift = tl.load(shift_ptr + channel, mask=offs_n < CO, other=0.0)
            acc = tl.where(saved * scale[None, :] + shift[None, :] > 0, acc, 0.0)
        tl.store(y_ptr + out_offs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)
        if SUMS:  # rows past the end hold zeros
            tl.atomic_add(sum_ptr + channel, tl.sum(acc, 0), mask=offs_n < CO)
            if TRANSPOSED:
                centre = tl.load(centre_ptr + channel, mask=offs_n < CO, other=0.0)
                tl.atomic_add(prod_ptr + channel, tl.sum(acc * (saved - centre[None, :]), 0), mask=offs_n < CO)
            else:
                tl.atomic_add(prod_ptr + channel, tl.sum(acc * acc, 0), mask=offs_n < CO)

    @triton.autotune(configs=_tuning(WGRAD_CONFIGS, dict(BM=16, BN=16, BK=32, SPLIT_K=3, num_warps=1)),
                     key=["N", "H", "W", "HO", "WO", "G", "CI", "CO", "KH", "stride", "BN_RELU"],
                     prune_configs_by={"early_config_prune": _wgrad_prune}, reset_to_zero=["dw_ptr"])
    @triton.jit
    def fused_wgrad_kernel(x_ptr, dy_ptr, dw_ptr, scale_ptr, shift_ptr, N, H: tl.constexpr, W: tl.constexpr,
                           HO: tl.constexpr, WO: tl.constexpr, G, CI, CO, stride: tl.constexpr, pad: tl.constexpr,
                           s_co, s_ci, s_kh, s_kw, KH: tl.constexpr, KW: tl.constexpr, BN_RELU: tl.constexpr,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr):
        """triton_kernels.conv_wgrad_kernel reading act(x) when BN_RELU, the reduction over output pixels
        split in SPLIT_K parts (program_id(2)) added atomically into the zeroed float32 dw."""
        pid = tl.program_id(0)
        tap_g = tl.program_id(1)
        g = tap_g // (KH * KW)
        kh = (tap_g // KW) % KH
        kw = tap_g % KW
        num_n = tl.cdiv(CO, BN)
        offs_ci = (pid // num_n) * BM + tl.arange(0, BM)
        offs_co = (pid % num_n) * BN + tl.arange(0, BN)
        m_total = N * HO * WO
        chunk = tl.cdiv(tl.cdiv(m_total, BK), SPLIT_K) * BK
        m_start = tl.program_id(2) * chunk
        m_end = tl.minimum(m_start + chunk, m_total)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        ci_mask = offs_ci[:, None] < CI
        co_mask = offs_co[None, :] < CO
        x_base = x_ptr + g * CI + offs_ci[:, None]
        dy_base = dy_ptr + g * CO + offs_co[None, :]
        if BN_RELU:
            scale = tl.load(scale_ptr + g * CI + offs_ci, mask=offs_ci < CI, other=0.0)
            shift = tl.load(shift_ptr + g * CI + offs_ci, mask=offs_ci < CI, other=0.0)
        for m0 in range(m_start, m_end, BK):
            offs_m = m0 + tl.arange(0, BK)
            pixel, inside = wgrad_pixels(offs_m, H, W, HO, WO, stride, pad, kh, kw)
            valid = inside & (offs_m < m_end)
            row = pixel * (G * CI)
            a = tl.load(x_base + row[None, :], mask=valid[None, :] & ci_mask, other=0.0)  # (BM ci, BK m)
            if BN_RELU:
                a = tl.maximum(a.to(tl.float32) * scale[:, None] + shift[:, None], 0.0)
                a = tl.where(valid[None, :] & ci_mask, a, 0.0).to(dy_ptr.dtype.element_ty)
            b = tl.load(dy_base + offs_m.to(tl.int64)[:, None] * (G * CO),
                        mask=(offs_m[:, None] < m_end) & co_mask, other=0.0)  # (BK m, BN co)
            acc = tl.dot(a, b, acc)
        out = (dw_ptr + (g * CO).to(tl.int64) * s_co + kh * s_kh + kw * s_kw
               + offs_ci[:, None] * s_ci + offs_co[None, :] * s_co)
        if SPLIT_K == 1:
            tl.store(out, acc, mask=ci_mask & co_mask)
        else:
            tl.atomic_add(out, acc, mask=ci_mask & co_mask)

    @triton.autotune(configs=_tuning(ELEMENTWISE_CONFIGS, dict(BR=32, BC=16, num_warps=1)), key=["rows", "C"])
    @triton.jit
    def channel_affine_kernel(a_ptr, b_ptr, out_ptr, p_ptr, q_ptr, r_ptr, rows, C, RELU: tl.constexpr,
                              BR: tl.constexpr, BC: tl.constexpr):
        """out = a * p[c] + b * q[c] + r[c] (then ReLU) over (rows, C) row-major tensors."""
        offs_r = tl.program_id(0) * BR + tl.arange(0, BR)
        offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
        c_mask = offs_c < C
        mask = (offs_r[:, None] < rows) & c_mask[None, :]
        offs = offs_r.to(tl.int64)[:, None] * C + offs_c[None, :]
        a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        p = tl.load(p_ptr + offs_c, mask=c_mask, other=0.0)
        q = tl.load(q_ptr + offs_c, mask=c_mask, other=0.0)
        r = tl.load(r_ptr + offs_c, mask=c_mask, other=0.0)
        out = a * p[None, :] + b * q[None, :] + r[None, :]
        if RELU:
            out = tl.maximum(out, 0.0)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.autotune(configs=_tuning(ELEMENTWISE_CONFIGS, dict(BR=32, BC=16, num_warps=1)),
                     key=["rows", "C", "RESIDUAL_SUMS"], reset_to_zero=["sums_ptr"])
    @triton.jit
    def relu_grad_sums_kernel(grad_ptr, out_ptr, y_ptr, r_ptr, gz_ptr, y_centre_ptr, r_centre_ptr, sums_ptr,
                              rows, C, RESIDUAL_SUMS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
        """gz = grad where out > 0 else 0; sums (3, C) += sum(gz), sum(gz (y - y_centre)), sum(gz (r - r_centre))."""
        offs_r = tl.program_id(0) * BR + tl.arange(0, BR)
        offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
        c_mask = offs_c < C
        mask = (offs_r[:, None] < rows) & c_mask[None, :]
        offs = offs_r.to(tl.int64)[:, None] * C + offs_c[None, :]
        grad = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = tl.load(out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gz = tl.where(out > 0, grad, 0.0)
        tl.store(gz_ptr + offs, gz.to(gz_ptr.dtype.element_ty), mask=mask)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y_centre = tl.load(y_centre_ptr + offs_c, mask=c_mask, other=0.0)
        tl.atomic_add(sums_ptr + offs_c, tl.sum(gz, 0), mask=c_mask)
        tl.atomic_add(sums_ptr + C + offs_c, tl.sum(gz * (y - y_centre[None, :]), 0), mask=c_mask)
        if RESIDUAL_SUMS:
            r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            r_centre = tl.load(r_centre_ptr + offs_c, mask=c_mask, other=0.0)
            tl.atomic_add(sums_ptr + 2 * C + offs_c, tl.sum(gz * (r - r_centre[None, :]), 0), mask=c_mask)
