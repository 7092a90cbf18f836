"""The seed's formulation: one torchvision tail and one nn.Linear per branch, run in a Python loop.

Kept as the reference the batched network is tested and benchmarked against.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ReferenceBranches(nn.Module):
    def __init__(
        self, tail: nn.Sequential, ensemble_size: int, feature_width: int, meta_class_size: int, with_fc: bool
    ) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        self.stages = nn.ModuleList(copy.deepcopy(tail) for _ in range(ensemble_size))
        self.heads = (
            nn.ModuleList(nn.Linear(feature_width, meta_class_size) for _ in range(ensemble_size)) if with_fc else None
        )
        self.grad_checkpointing = False  # the specification keeps every activation

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise ValueError("activation checkpointing works on the batched network, not the reference loop")

    def forward(self, shared: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        outputs = []
        for m in range(self.ensemble_size):
            x = shared if scale is None else shared * scale[:, m, None, None, None].to(shared.dtype)
            pooled = self.stages[m](x).mean(dim=(2, 3))  # (b, c)
            outputs.append(self.heads[m](pooled) if self.heads is not None else pooled)
        return torch.stack(outputs, dim=1)  # (b, m, d)
