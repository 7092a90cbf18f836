"""Reading a checkpoint (best.pt, last.pt, a study's state.pt) that may be damaged, safely.

torch.load(weights_only=True) reads it, and then everything the loaders use is checked: the config
(a dict of known keys, each of its field's type, valid as a whole), the meta-class ids, the epoch, the
metrics and the weights' names and shapes against the network the config describes (built on the meta
device: no memory, no time). Any damage is one ConfigError naming the file and what is wrong. None of
them suggests weights_only=False: a file that holds more than tensors and plain values is not one
antimetric wrote, and unpickling it could run any code.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from antimetric.base.fields import is_count
from antimetric.errors import ConfigError
from antimetric.model.ensemble import build_model
from antimetric.training.config import RunConfig, resolve
from antimetric.training.decisions import DECISIONS_KEY, StartDecisions, split_recorded

TRAINED_KEYS = ("model", "meta_ids", "config")  # what antimetric.load needs
RESUME_KEYS = ("epoch", "optimizer", "scheduler", "tracker")  # what resuming needs besides
_REMEDY = "pass a best.pt, last.pt or run folder that antimetric wrote"
_SHOWN = 3  # names listed of a set of missing or unexpected weights


def read_torch_file(path: Path, what: str = "checkpoint", map_location: str | torch.device = "cpu") -> Any:
    """torch.load(path, weights_only=True), with every failure one ConfigError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {path} ({error.strerror}); {_REMEDY}") from None
    if not path.is_file():
        raise ConfigError(f"{path} is not a regular file, so not a {what}; {_REMEDY}")
    if size == 0:
        raise ConfigError(f"{path} is empty (0 bytes), not a {what}; {_REMEDY}")
    with warnings.catch_warnings():  # torch warns about pickle protocols on files it then refuses
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except OSError as error:
            raise ConfigError(f"cannot read the {what} {path} ({error.strerror or error}); {_REMEDY}") from None
        except Exception as error:  # the unpickler raises IndexError, KeyError, EOFError... on foreign files
            raise ConfigError(f"cannot read {path} as a {what}: {_reason(error)}; {_REMEDY}") from None


def _reason(error: Exception) -> str:
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (f"it holds a Python object ({found.group(1)}) where a checkpoint holds only tensors and plain "
                "values, and antimetric never unpickles objects")
    if "zip archive" in text:
        return "it is cut short or corrupted (its zip archive cannot be read)"
    return "it is not a PyTorch checkpoint (or it is cut short)"


def damaged(path: Path, what: str) -> ConfigError:
    return ConfigError(f"{path} is a damaged checkpoint: {what}; {_REMEDY}")


def check_trained_state(state: Any, path: Path) -> tuple[RunConfig, dict[str, Any]]:
    """Everything antimetric.load takes from a checkpoint's contents, checked; ConfigError otherwise. Returns
    what the checks read: the resolved config and the run's decisions (checkpoint_decisions)."""
    if not isinstance(state, dict):
        raise ConfigError(f"{path} is not an antimetric checkpoint (it holds a {type(state).__name__}, not a "
                          f"dict); {_REMEDY}")
    missing = [key for key in TRAINED_KEYS if key not in state]
    if missing:
        raise ConfigError(f"{path} is not an antimetric checkpoint (it has no {', '.join(missing)}); {_REMEDY}")
    config = checkpoint_config(state["config"], path)
    _check_meta_ids(state["meta_ids"], config, path)
    if "epoch" in state and not is_count(state["epoch"]):
        raise damaged(path, f"its epoch is {state['epoch']!r}, not a whole number")
    if "metrics" in state and not _is_metrics(state["metrics"]):
        raise damaged(path, "its metrics are not a dict of numbers")
    if "tracker" in state:
        check_tracker(state["tracker"], path)
    decisions = checkpoint_decisions(state, path)
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise damaged(path, "its weights ('model') are not a dict of named tensors")
    layout = weight_layout(weights)
    with torch.device("meta"):
        expected = build_model(config.model, layout).state_dict()
    mismatch = weights_mismatch(expected, weights)
    if mismatch:
        raise damaged(path, f"its weights do not fit the {layout} network its config describes ({mismatch})")
    return config, decisions


def checkpoint_config(values: Any, path: Path) -> RunConfig:
    """The resolved config a checkpoint records, with ImageNet weights off (the checkpoint holds every weight)."""
    if not isinstance(values, dict):
        raise damaged(path, f"its config is a {type(values).__name__}, not a dict")
    try:
        config = resolve(RunConfig.from_flat(dict(values)))
    except ConfigError as error:
        raise ConfigError(f"{path}: the config it holds is refused ({error})") from None
    config.model.pretrained, config.model.weights_file = False, None
    return config


def checkpoint_decisions(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """What the checkpoint's run decided when it started (StartDecisions' fields; a checkpoint from before
    2026-12-03 holds them in its config)."""
    if DECISIONS_KEY in state:
        return StartDecisions.from_dict(state[DECISIONS_KEY], f"{path} is a damaged checkpoint").as_dict()
    return split_recorded(state["config"])[1]


def _is_metrics(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, (int, float))
                                           for k, v in value.items())


def _check_meta_ids(meta_ids: Any, config: RunConfig, path: Path) -> None:
    model = config.model
    if not isinstance(meta_ids, torch.Tensor) or meta_ids.is_floating_point() or meta_ids.dtype == torch.bool:
        raise damaged(path, f"its meta_ids are a {type(meta_ids).__name__}, not a tensor of integers")
    if meta_ids.dim() != 2 or meta_ids.shape[0] != model.ensemble_size or meta_ids.shape[1] < 1:
        raise damaged(path, f"its meta_ids have shape {tuple(meta_ids.shape)}, not ({model.ensemble_size} "
                            "branches, training classes)")
    if meta_ids.min() < 0 or meta_ids.max() >= model.meta_class_size:
        raise damaged(path, f"its meta_ids are not all meta-classes 0 to {model.meta_class_size - 1}")


def check_tracker(tracker: Any, path: Path) -> None:
    """The best-epoch record of last.pt/state.pt (training_state.BestTracker.state_dict())."""
    keys = ("key", "best_epoch", "best_value", "best_metrics", "history")
    if not isinstance(tracker, dict) or any(key not in tracker for key in keys) \
            or not isinstance(tracker["history"], list) or not all(_is_metrics(row) for row in tracker["history"]) \
            or not _is_metrics(tracker["best_metrics"]):
        raise damaged(path, "its record of the epochs so far ('tracker') is incomplete")


def weight_layout(state: dict) -> str:
    """'reference' for the per-branch loop's state dict (branches.stages.{m}.…), else 'batched'."""
    return "reference" if any(k.startswith("branches.stages.0.") or k.startswith("branches.heads.") for k in state) \
        else "batched"


def weights_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """How `given` differs from `expected` in names and shapes, shortly; '' when they fit."""
    parts = []
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    for words, names in (("missing", missing), ("unexpected", unexpected)):
        if names:
            more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
            parts.append(f"{words} {', '.join(names[:_SHOWN])}{more}")
    shapes = [f"{name} is {tuple(given[name].shape)}, not {tuple(tensor.shape)}" for name, tensor in expected.items()
              if name in given and given[name].shape != tensor.shape]
    if shapes:
        more = f" and {len(shapes) - 1} more of another shape" if len(shapes) > 1 else ""
        parts.append(f"{shapes[0]}{more}")
    return "; ".join(parts)
