"""Weight conversion between the batched network and the per-branch reference loop.

Both keep torchvision's parameter names below the branch: the batched key
`branches.stages.layer2.0.conv1.weight` holds, along dim 0, the ensemble_size tensors
`branches.stages.{m}.layer2.0.conv1.weight` of the reference; `branches.head.weight`
(m, d, c) stacks `branches.heads.{m}.weight` (d, c). Every family's batched blocks keep that layout (a branch's
tensor is slice m along dim 0: model/batched.py's BlockBatcher), so nothing here depends on the backbone.

Blocks of branches (branch-parallel training: each of N processes holds the trunk and one block) are
contiguous, not strided (r::N): a block is then one slice per batched tensor, a block's state loads into a
batched ensemble of len(block) branches built from the same ModelConfig, and joining the blocks back is one
concatenation in branch order, which is the checkpoint format of a one-process run.
"""
from __future__ import annotations

import torch

from antimetric.errors import ConfigError

_BATCHED_STAGES = "branches.stages."
_BATCHED_HEAD = "branches.head."


def reference_to_batched(state: dict[str, torch.Tensor], ensemble_size: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    per_branch: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, value in state.items():
        if key.startswith("branches.stages."):
            m, rest = key[len("branches.stages.") :].split(".", 1)
            per_branch.setdefault(_BATCHED_STAGES + rest, []).append((int(m), value))
        elif key.startswith("branches.heads."):
            m, rest = key[len("branches.heads.") :].split(".", 1)
            per_branch.setdefault(_BATCHED_HEAD + rest, []).append((int(m), value))
        else:
            out[key] = value
    for key, items in per_branch.items():
        values = [v for _, v in sorted(items, key=lambda item: item[0])]
        if len(values) != ensemble_size:
            raise ValueError(f"{key}: {len(values)} branches in the state dict, expected {ensemble_size}")
        if key.endswith("num_batches_tracked"):
            out[key] = values[0].clone()
        elif key.startswith(_BATCHED_HEAD):
            out[key] = torch.stack(values)
        else:
            out[key] = torch.cat(values)
    return out


def batched_to_reference(state: dict[str, torch.Tensor], ensemble_size: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_BATCHED_STAGES):
            rest = key[len(_BATCHED_STAGES) :]
            parts = [value] * ensemble_size if key.endswith("num_batches_tracked") else value.chunk(ensemble_size)
            for m, part in enumerate(parts):
                out[f"branches.stages.{m}.{rest}"] = part.clone()
        elif key.startswith(_BATCHED_HEAD):
            rest = key[len(_BATCHED_HEAD) :]
            for m in range(ensemble_size):
                out[f"branches.heads.{m}.{rest}"] = value[m].clone()
        else:
            out[key] = value
    return out


def replicate_tail(tail_state: dict[str, torch.Tensor], ensemble_size: int) -> dict[str, torch.Tensor]:
    """Batched stage weights in which every branch starts from the same (e.g. ImageNet) tail."""
    reference = {
        f"branches.stages.{m}.{key}": value for m in range(ensemble_size) for key, value in tail_state.items()
    }
    return reference_to_batched(reference, ensemble_size)


def branch_blocks(ensemble_size: int, parts: int) -> list[range]:
    """`parts` contiguous blocks of branches, as even as they can be (the first ones one branch larger)."""
    if not 1 <= parts <= ensemble_size:
        raise ConfigError(f"{parts} processes cannot share {ensemble_size} branches: each needs at least one; "
                          f"use at most {ensemble_size} processes or raise --ensemble-size")
    size, extra = divmod(ensemble_size, parts)
    starts = [r * size + min(r, extra) for r in range(parts + 1)]
    return [range(starts[r], starts[r + 1]) for r in range(parts)]


def block_state(state: dict[str, torch.Tensor], ensemble_size: int, block: range) -> dict[str, torch.Tensor]:
    """The state of a batched ensemble reduced to the branches of `block` (the trunk's entries unchanged)."""
    out = {}
    for key, value in state.items():
        if key.startswith(_BATCHED_STAGES) and not key.endswith("num_batches_tracked"):
            width = value.shape[0] // ensemble_size
            out[key] = value[block.start * width:block.stop * width].clone()
        elif key.startswith(_BATCHED_HEAD):
            out[key] = value[block.start:block.stop].clone()
        else:
            out[key] = value.clone()
    return out


def join_blocks(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The whole ensemble's state from its blocks' states, given in branch order (the trunk from the first)."""
    out = {}
    for key, value in states[0].items():
        if (key.startswith(_BATCHED_STAGES) and not key.endswith("num_batches_tracked")) or key.startswith(_BATCHED_HEAD):
            out[key] = torch.cat([state[key] for state in states])
        else:
            out[key] = value.clone()
    return out
