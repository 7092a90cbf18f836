"""The whole ensemble's weights and optimiser state from the blocks of a branch-parallel run, and back.

A branch-parallel run saves what a one-process run saves (best.pt, last.pt, a study's state.pt in today's format,
so that antimetric.load reads it on one device), and resumes from such a file on any number of processes: each
takes its block of it. Adam's state is per parameter, so a branch's moments are cut and joined as its weights are
(model/convert.py); the trunk's are the same on every process (its gradients were summed before each step).
"""
from __future__ import annotations

from typing import Any

import torch

from antimetric.model.convert import block_state, join_blocks
from antimetric.model.ensemble import EnsembleNet
from antimetric.training.parallel.distributed import gather


def whole_model_state(model: EnsembleNet) -> dict[str, torch.Tensor] | None:
    """The whole ensemble's state dict on process 0 (None on the others); the model's own on one process.
    Every process of the group must call it."""
    if model.whole_size == model.ensemble_size:
        return model.state_dict()
    blocks = gather({key: value.cpu() for key, value in model.state_dict().items()})
    return join_blocks(blocks) if blocks is not None else None


def whole_optimizer_state(model: EnsembleNet, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """The optimiser's state dict as a one-process run's optimizer over the whole ensemble holds it, on process 0
    (None on the others). Every process of the group must call it."""
    state = optimizer.state_dict()
    if model.whole_size == model.ensemble_size:
        return state
    names = [name for name, _ in model.named_parameters()]
    blocks = gather({names[index]: {key: value.cpu() if isinstance(value, torch.Tensor) else value
                                    for key, value in per_parameter.items()}
                     for index, per_parameter in state["state"].items()})
    if blocks is None:
        return None
    joined, index_of = {}, {name: index for index, name in enumerate(names)}
    for name, first in blocks[0].items():
        moments = [key for key, value in first.items() if isinstance(value, torch.Tensor) and value.dim() > 0]
        parts = {key: join_blocks([{name: block[name][key]} for block in blocks])[name] for key in moments}
        joined[index_of[name]] = {**first, **parts}
    return {"state": joined, "param_groups": state["param_groups"]}


def block_model_state(state: dict[str, torch.Tensor], model: EnsembleNet) -> dict[str, torch.Tensor]:
    """A whole ensemble's state dict cut to the branches `model` holds (itself where it holds them all)."""
    if model.whole_size == model.ensemble_size:
        return state
    return block_state(state, model.whole_size, model.block)


def block_optimizer_state(state: dict[str, Any], model: EnsembleNet) -> dict[str, Any]:
    """A whole ensemble's optimiser state dict cut to the branches `model` holds."""
    if model.whole_size == model.ensemble_size:
        return state
    names = [name for name, _ in model.named_parameters()]
    cut = {}
    for index, per_parameter in state["state"].items():
        name = names[index]
        cut[index] = {key: block_state({name: value}, model.whole_size, model.block)[name]
                      if isinstance(value, torch.Tensor) and value.dim() > 0 else value
                      for key, value in per_parameter.items()}
    return {"state": cut, "param_groups": state["param_groups"]}
