"""Experimental GPU kernels for antimetric, outside the product: not installed with the package, importable
from the repository root (as benchmarks/ is). Never measured on a GPU yet (benchmarks/RESULTS.md).

antimetric never imports this package; `register()` hands the grouped convolutions to the model's one hook
(antimetric/model/kernel_hook.py), after which a DevicePlan with `triton_convs=True` uses them.

triton_kernels        implicit-GEMM grouped convolution (forward, input and weight gradients)
triton_convs          the swap the hook calls: a batched ensemble's grouped convolutions on those kernels
triton_fused          BatchNorm + ReLU + grouped convolution as one unit (not wired in; benchmarks only)
triton_fused_kernels  its kernels
implicit_gemm         the address arithmetic both kernel files share (@triton.jit helpers)
"""
from __future__ import annotations

from antimetric.errors import ConfigError
from antimetric.model.kernel_hook import register_conv_kernels


def register() -> None:
    """Make a DevicePlan's `triton_convs=True` swap the grouped convolutions for the Triton kernels'
    (kernels.triton_convs.use_triton_convs); a one-line ConfigError where Triton is not installed."""
    from kernels import triton_convs, triton_kernels  # Triton only when asked

    if triton_kernels.triton is None:
        raise ConfigError("triton_convs=True needs the triton package (pip install triton; Linux torch wheels ship it)")
    register_conv_kernels(triton_convs.use_triton_convs)
