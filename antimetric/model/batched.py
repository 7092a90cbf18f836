"""All branches of the ensemble as one network.

Branch m of a stage is channel slice [m*C, (m+1)*C) of a grouped convolution with
`groups = ensemble_size` (times the block's own groups, for ResNeXt). A BatchNorm over
ensemble_size*C channels normalises every channel separately, so it is exactly one
BatchNorm per branch. The first convolutions of the first block (a ResNet's conv1 and
downsample conv) read the shared trunk feature, which is the same for every branch: they
are dense convolutions with ensemble_size*C outputs, which costs the same FLOPs as the loop
and saves copying the trunk feature ensemble_size times.

This module holds what every family's batched blocks are made of, and the branches around
them; a backbone family batches its own kind of block (BlockBatcher: the ResNet's is
model/backbones/resnet.py). Parameter names mirror torchvision's (`layer2.0.conv1.weight`),
so a branch's weights are a slice along dim 0 of the batched tensor (see `convert.py`).

This is the one batched formulation; reference.py is the loop it is tested against.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Iterator, Protocol

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def scale_branches(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Multiply branch m's channels of x (b, m*c, h, w) by scale (b, m)."""
    channels = x.shape[1] // scale.shape[1]
    return x * scale.repeat_interleave(channels, dim=1)[:, :, None, None].to(x.dtype)


class BranchConv2d(nn.Conv2d):
    """A convolution holding every branch's weights, grouped by branch unless it reads the shared feature."""

    def __init__(self, *args, branches: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.branches = branches  # 1 for a dense convolution reading the shared feature


def batched_conv(conv: nn.Conv2d, ensemble_size: int, dense_input: bool) -> BranchConv2d:
    """`conv` of every branch: grouped by branch, or dense where it reads the shared feature (dense_input)."""
    if dense_input and conv.groups != 1:
        raise ValueError("a convolution reading the shared feature must be ungrouped")
    return BranchConv2d(
        conv.in_channels * (1 if dense_input else ensemble_size),
        conv.out_channels * ensemble_size,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups * (1 if dense_input else ensemble_size),
        bias=False,
        branches=1 if dense_input else ensemble_size,
    )


def batched_bn(bn: nn.BatchNorm2d, ensemble_size: int) -> nn.BatchNorm2d:
    """`bn` of every branch: one BatchNorm over their channels normalises each channel on its own."""
    return nn.BatchNorm2d(bn.num_features * ensemble_size, eps=bn.eps, momentum=bn.momentum)


class BlockBatcher(Protocol):
    """What the batched network asks of a backbone family (model/backbones/family.py's BackboneFamily)."""

    def batch_block(self, block: nn.Module, ensemble_size: int, dense_input: bool) -> nn.Module:
        """`block` of every branch at once, with a `dense_input` attribute and forward(x, scale): x is the shared
        feature (b, c, h, w) if dense_input, to be scaled per branch by scale (b, m) unless it is None, else
        (b, m*c, h, w); it returns (b, m*c', h', w'). Each of its tensors holds branch m's at slice m along
        dim 0, which model/convert.py relies on."""
        ...

    def init_batched(self, stages: nn.Module, ensemble_size: int) -> None:
        """Draw the weights of the batched stages, each branch's as the family draws a fresh network's."""
        ...


@contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Keep the BatchNorm running statistics inside `module` as they are.

    A checkpointed block runs its forward pass again during the backward pass; without this, its
    BatchNorms would fold the same batch into their running statistics a second time."""
    saved = [(bn, bn.momentum, bn.num_batches_tracked.clone()) for bn in module.modules()
             if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats]
    for bn, _, _ in saved:
        bn.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for bn, momentum, count in saved:
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(count)


def _checkpointed(block: nn.Module, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """block(x, scale), its activations recomputed in the backward pass rather than kept."""
    return checkpoint(block, x, scale, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), frozen_running_stats(block)))


class BranchLinear(nn.Module):
    """One linear layer per branch, computed as a single batched matmul."""

    def __init__(self, ensemble_size: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, out_features))
        bound = 1 / math.sqrt(in_features)  # nn.Linear's default initialisation
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, m, in) -> (m, b, in) @ (m, in, out) -> (b, m, out)
        out = torch.baddbmm(self.bias.unsqueeze(1).to(x.dtype), x.transpose(0, 1), self.weight.transpose(1, 2).to(x.dtype))
        return out.transpose(0, 1)


class BatchedBranches(nn.Module):
    """The branch tails and heads of every branch, taking the shared feature once."""

    def __init__(
        self, tail: nn.Sequential, ensemble_size: int, feature_width: int, meta_class_size: int, with_fc: bool,
        *, family: BlockBatcher,
    ) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        self.stages = nn.ModuleDict()
        dense = True
        for stage_name, stage in tail.named_children():
            blocks = []
            for block in stage:
                blocks.append(family.batch_block(block, ensemble_size, dense_input=dense))
                dense = False
            self.stages[stage_name] = nn.Sequential(*blocks)
        self.head = BranchLinear(ensemble_size, feature_width, meta_class_size) if with_fc else None
        self.grad_checkpointing = False  # set_grad_checkpointing
        family.init_batched(self.stages, ensemble_size)

    def blocks(self) -> list[nn.Module]:
        """The batched blocks in forward order: the units that activation checkpointing recomputes."""
        return [block for stage in self.stages.values() for block in stage]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (training only):
        for large ensembles of deep backbones (Bottleneck ResNets), whose activations outgrow the GPU."""
        self.grad_checkpointing = enable

    def forward(self, shared: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        b, m = shared.shape[0], self.ensemble_size
        x = shared  # (b, c, h, w)
        for stage in self.stages.values():
            for block in stage:
                block_scale = scale if block.dense_input else None
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    x = _checkpointed(block, x, block_scale)
                else:
                    x = block(x, block_scale)  # (b, m*c, h, w)
        if len(self.stages):
            pooled = x.mean(dim=(2, 3)).view(b, m, -1)  # (b, m, c)
        else:  # the trunk is the whole backbone (a ResNet's share type layer4): the branches are only the heads
            pooled = x.mean(dim=(2, 3)).unsqueeze(1).expand(b, m, -1)
            if scale is not None:
                pooled = pooled * scale.unsqueeze(-1).to(pooled.dtype)
        return self.head(pooled) if self.head is not None else pooled  # (b, m, d)
