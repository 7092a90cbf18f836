"""The implicit-GEMM address arithmetic of the grouped-convolution kernels, written once.

triton_kernels.py and triton_fused_kernels.py compute a convolution as a GEMM whose rows are output
pixels and whose reduction runs over (kernel tap, input channel), reading the channels-last input
where it lies. These @triton.jit helpers say which pixel each row is and where it reads; Triton
inlines them, so the kernels compile as if the arithmetic were written in each.

  gemm_rows    once per program: the rows' output pixels, and where their reduction starts
  gemm_tap     once per reduction step: the tap (kh, kw), the first channel, the input pixels read
  wgrad_pixels the weight gradient's rows (output pixels again): the input pixel each reads at one tap

Transposed (the input gradient): one program per parity class (ph, pw) of the output pixels modulo
the stride, program_id(2); only the taps with kh = (ph + pad) mod stride (kw likewise) reach that
class, so no multiply is spent on the zeros a strided forward leaves between its inputs.
"""
from __future__ import annotations

try:  # only the CUDA path (and its interpreter tests) need Triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch wheels for Linux ship it
    triton = None

if triton is not None:

    @triton.jit
    def gemm_rows(offs_m, N, HO: tl.constexpr, WO: tl.constexpr, CI, stride: tl.constexpr, pad: tl.constexpr,
                  KH: tl.constexpr, KW: tl.constexpr, TRANSPOSED: tl.constexpr):
        """GEMM rows offs_m -> (n, oh, ow) their output pixels, in_range (rows past the end are masked),
        k_total the reduction's length (taps x CI), and what gemm_tap needs: (i, j) the input pixel of
        tap (0, 0), or transposed the rows' place in their parity class, with the class (ph, pw), its first
        tap (kh0, kw0) and nkw its taps per kernel row."""
        if TRANSPOSED:
            p = tl.program_id(2)
            ph = p // stride
            pw = p % stride
            hop = (HO - ph + stride - 1) // stride  # output rows of this class
            wop = (WO - pw + stride - 1) // stride
            kh0 = (ph + pad) % stride
            kw0 = (pw + pad) % stride
            nkh = (KH - kh0 + stride - 1) // stride  # taps reaching this class (0 for 1x1 odd classes)
            nkw = (KW - kw0 + stride - 1) // stride
            i = (offs_m // wop) % hop
            j = offs_m % wop
            n = offs_m // (wop * hop)
            oh = ph + stride * i
            ow = pw + stride * j
            in_range = offs_m < N * hop * wop
            k_total = nkh * nkw * CI
        else:
            ph = 0
            pw = 0
            kh0 = 0
            kw0 = 0
            nkw = KW
            ow = offs_m % WO
            oh = (offs_m // WO) % HO
            n = offs_m // (WO * HO)
            i = oh * stride - pad
            j = ow * stride - pad
            in_range = offs_m < N * HO * WO
            k_total = KH * KW * CI
        return n, oh, ow, in_range, k_total, i, j, ph, pw, kh0, kw0, nkw

    @triton.jit
    def gemm_tap(k0, CI, i, j, in_range, ph, pw, kh0, kw0, nkw, H: tl.constexpr, W: tl.constexpr,
                 stride: tl.constexpr, pad: tl.constexpr, KW: tl.constexpr, TRANSPOSED: tl.constexpr):
        """Reduction step k0 (a tile never straddles two taps: CI is a multiple of it) -> (c0, kh, kw, pixel, valid):
        its first input channel, its tap, the input pixel ih*W + iw each row reads, and whether the row reads one
        (in range and inside the image; padding reads none)."""
        tap = k0 // CI
        c0 = k0 - tap * CI
        if TRANSPOSED:
            kh = kh0 + stride * (tap // nkw)
            kw = kw0 + stride * (tap % nkw)
            ih = i + (ph + pad - kh) // stride  # exact division
            iw = j + (pw + pad - kw) // stride
        else:
            kh = tap // KW
            kw = tap % KW
            ih = i + kh
            iw = j + kw
        valid = (ih >= 0) & (iw >= 0) & (ih < H) & (iw < W) & in_range
        return c0, kh, kw, ih * W + iw, valid

    @triton.jit
    def wgrad_pixels(offs_m, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
                     stride: tl.constexpr, pad: tl.constexpr, kh, kw):
        """The weight gradient's reduction over output pixels offs_m at tap (kh, kw) -> (pixel, inside): the
        flat index n*H*W + ih*W + iw (int64) of the input pixel each reads, and whether it lies in the image."""
        ow = offs_m % WO
        oh = (offs_m // WO) % HO
        n = offs_m // (WO * HO)
        ih = oh * stride - pad + kh
        iw = ow * stride - pad + kw
        inside = (ih >= 0) & (iw >= 0) & (ih < H) & (iw < W)
        return ((n * H + ih) * W + iw).to(tl.int64), inside
