"""Run a batched ensemble's grouped convolutions on the Triton kernels of triton_kernels.py.

`use_triton_convs(model)` swaps every BranchConv2d the kernels cover for a TritonBranchConv2d that holds
the same weight Parameter, so optimisers, state dicts and checkpoints are unchanged; the batched network
itself knows nothing of Triton. `kernels.register()` hands it to antimetric's hook (model/kernel_hook.py),
and a DevicePlan then asks for it with `triton_convs=True` (benchmarks/gpu_study.py measures it);
`antimetric train` does not, until a GPU measurement says it pays.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from antimetric.model.batched import BranchConv2d
from kernels import triton_kernels


def runs_on(x: torch.Tensor) -> bool:
    """CUDA tensors; CPU tensors too under Triton's interpreter (TRITON_INTERPRET=1, for tests)."""
    return triton_kernels.triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def supports(conv: nn.Conv2d) -> bool:
    """Convolutions the kernels cover: grouped, no dilation, square stride and padding, and groups
    whose input and output channels are multiples of 16 (tl.dot's smallest tile)."""
    multiple = triton_kernels.MIN_GROUP_CHANNELS
    return (conv.groups > 1 and conv.dilation == (1, 1) and conv.stride[0] == conv.stride[1]
            and not isinstance(conv.padding, str) and conv.padding[0] == conv.padding[1]
            and (conv.in_channels // conv.groups) % multiple == 0
            and (conv.out_channels // conv.groups) % multiple == 0)


class TritonBranchConv2d(BranchConv2d):
    """A BranchConv2d computed by the Triton kernels where they run (else by torch, as its parent)."""

    @classmethod
    def sharing(cls, conv: BranchConv2d) -> TritonBranchConv2d:
        """A TritonBranchConv2d holding `conv`'s weight Parameter itself, not a copy."""
        with torch.device("meta"):  # no memory for a weight that is replaced at once
            new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=False,
                      branches=conv.branches)
        new.weight = conv.weight
        return new.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if runs_on(x):
            return triton_kernels.grouped_conv2d(x, self.weight, self.groups, self.stride[0], self.padding[0])
        return super().forward(x)


def use_triton_convs(model: nn.Module) -> int:
    """Swap each branch-grouped convolution of `model` that the kernels support for a TritonBranchConv2d;
    returns how many were swapped (the dense convolutions reading the shared feature keep torch's)."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is BranchConv2d and child.branches > 1 and supports(child)]
    for parent, name, child in swaps:
        setattr(parent, name, TritonBranchConv2d.sharing(child))
    return len(swaps)
