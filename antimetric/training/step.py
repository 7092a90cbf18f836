"""One optimisation step, shared by training and the throughput benchmark (pure torch), as a DevicePlan says."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from antimetric.model.device_plan import DevicePlan
from antimetric.model.ensemble import EnsembleNet


def make_optimizer(model: nn.Module, lr: float, plan: DevicePlan) -> torch.optim.Adam:
    """Adam, with the fused kernel where the plan says (on CUDA one launch for all 500M+ parameters;
    on CPU 8x less optimiser time, RESULTS.md), else torch's default implementation."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True if plan.fused_adam else None)


def prepare_device(plan: DevicePlan) -> None:
    """The process-wide settings of the plan: cuDNN's algorithm search for our fixed input sizes."""
    torch.backends.cudnn.benchmark = plan.cudnn_benchmark


def _forward_loss(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, bf16: bool,
                  whole_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits): the model's logits (b, k, d) for its k branches, under bf16 autocast if asked
    (DevicePlan.bf16), and the sum of their cross-entropies against targets (b, k) over b x whole_size, the
    whole ensemble's branches: the mean when the model holds them all, this block's share when it holds k."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(images)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
    return loss / (images.shape[0] * whole_size), logits


def training_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                  optimizer: torch.optim.Optimizer, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over branches of logits (b, m, d) against meta-class targets (b, m), under
    bf16 autocast if asked (DevicePlan.bf16). Returns (loss, logits), both detached."""
    loss, logits = _forward_loss(model, images, targets, bf16, whole_size=targets.shape[1])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def branch_parallel_step(model: EnsembleNet, images: torch.Tensor, targets: torch.Tensor,
                         optimizer: torch.optim.Optimizer, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """training_step for a process holding the trunk and one block of branches (EnsembleNet.as_block) in a
    torch.distributed group: the whole batch through the trunk, this block's branches, its share of the loss
    (the sum of its cross-entropies over batch x whole ensemble, so that the shares add up to training_step's
    mean), then one all-reduce of the trunk's gradients; each process steps its own parameters. targets: this
    block's meta-class targets (b, k). Returns (the whole ensemble's loss, this block's logits), detached."""
    share, logits = _forward_loss(model, images, targets, bf16, whole_size=model.whole_size)
    optimizer.zero_grad(set_to_none=True)
    share.backward()
    grads = [p.grad for p in model.trunk.parameters() if p.grad is not None]
    if grads:
        flat = torch.cat([g.flatten() for g in grads])  # one all-reduce of a few MB, not one per tensor
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
    optimizer.step()
    loss = share.detach().clone()
    dist.all_reduce(loss)
    return loss, logits.detach()
