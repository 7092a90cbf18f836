"""Weight conversion between the batched network and the per-branch reference loop.

Both keep torchvision's parameter names below the branch: the batched key
`branches.stages.layer2.0.conv1.weight` holds, along dim 0, the ensemble_size tensors
`branches.stages.{m}.layer2.0.conv1.weight` of the reference; `branches.head.weight`
(m, d, c) stacks `branches.heads.{m}.weight` (d, c).
"""
from __future__ import annotations

import torch

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
