"""The one door from the model to experimental kernels kept outside the product.

The core never imports them (the repository's `kernels/` package, not installed with antimetric):
they register here, and EnsembleNet.configure calls what is registered when a DevicePlan asks
(`triton_convs=True`). From the repository root, `import kernels; kernels.register()` registers the
Triton grouped convolutions; benchmarks/throughput.py does so for its Triton rows.

A conv-kernel swap is `swap(model: nn.Module) -> int`: it replaces, in place, the convolutions of
`model` it covers by its own modules holding the same weight Parameters (so optimisers, state dicts
and checkpoints are unchanged), leaves the others to torch, and returns how many it replaced.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from antimetric.errors import ConfigError

ConvKernels = Callable[[nn.Module], int]

_conv_kernels: ConvKernels | None = None


def register_conv_kernels(swap: ConvKernels | None) -> ConvKernels | None:
    """Make `swap` what a plan's `triton_convs` calls (None: nothing); returns the swap it replaces, so a
    caller can put it back."""
    global _conv_kernels
    previous, _conv_kernels = _conv_kernels, swap
    return previous


def swap_conv_kernels(model: nn.Module) -> int:
    """Run the registered swap on `model`: how many convolutions it replaced."""
    if _conv_kernels is None:
        raise ConfigError("triton_convs=True, but no convolution kernels are registered: they live outside the "
                          "antimetric package; from the repository root, `import kernels; kernels.register()` first")
    return _conv_kernels(model)
