"""A researcher's own search space: a JSON or YAML file in the form of studies.design.spaces, checked entry by
entry before Ray starts, so that a typo is one line naming the entry and not a failed trial."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from antimetric.base.fields import value_kind
from antimetric.errors import ConfigError
from antimetric.options import option_fields, option_names
from antimetric.training.config import RunConfig, resolve
from antimetric.training.memory_estimate import check_memory
from studies.design.spaces import Space

# Config keys the study sets itself: the dataset (NAME, a benchmark's name or a user's folder or table), its folder
# and seeds (the study's --data-path and --seed; each trial's own seed, validation split and fold:
# studies/design/seeds.py), the epochs (--max-epochs, also spelled --num-epochs), and a run's own folder (each trial
# has one). A space cannot search them, and `studies.search` offers no training option for them.
STUDY_OWN_KEYS = ("data_name", "data", "data_path", "seed", "split_seed", "val_fold", "num_epochs", "output_dir",
                  "run_name", "reuse_run_name")
_KINDS = {"choice": ("values",), "int": ("low", "high"), "float": ("low", "high")}


def load_space(path: Path) -> Space:
    """Read a space file (.json, .yaml or .yml); raises ConfigError naming what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--space: cannot read {path} ({error})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            space = yaml.safe_load(text)
        else:
            space = json.loads(text)
    except ValueError as error:  # json.JSONDecodeError and yaml.YAMLError's parser errors
        raise ConfigError(f"--space: {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'} "
                          f"({' '.join(str(error).split())})") from None
    except ImportError:
        raise ConfigError("--space: reading YAML needs pyyaml; use a .json file") from None
    except Exception as error:  # yaml.YAMLError is not a ValueError
        raise ConfigError(f"--space: {path} is not valid YAML ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"--space: {path} must map config keys to entries such as "
                          '{"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": true}}')
    return space


def check_space(space: Space, constants: dict[str, Any], where: str, device: torch.device | None = None) -> None:
    """Every entry a searchable config key with a well-formed spec, each of whose values (a range: its ends) the
    core accepts with the study's other settings (`constants`), of the type the command line would give it, and,
    where the trials' `device` is known, fitting in its memory."""
    for name, spec in space.items():
        _check_entry(name, spec, where)
        values = spec["values"] if spec["type"] == "choice" else [spec["low"], spec["high"]]
        for value in values:
            try:
                if value is not None and not isinstance(value, (bool, int, float, str)):
                    raise ConfigError(f"a value is true, false, a number, text or null, not a {type(value).__name__}")
                check_trial({**constants, name: value}, device)
            except ConfigError as error:
                raise ConfigError(f"{where}: entry {name!r}: the value {value!r} is not accepted ({error})") from None


def check_trial(values: dict[str, Any], device: torch.device | None) -> None:
    """A trial's flat config resolves, and fits in the memory of `device` (None: not checked)."""
    config = resolve(RunConfig.from_flat(values))
    if device is not None:
        check_memory(config, device)


def _check_entry(name: str, spec: Any, where: str) -> None:
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{where}: entry {name!r} {problem}")

    if name not in option_names():
        raise bad("is not a config key (see `python -m antimetric train --help`; keys use underscores)")
    if name in STUDY_OWN_KEYS:
        raise bad("is set by the study itself and cannot be searched")
    if not isinstance(spec, dict) or spec.get("type") not in _KINDS:
        raise bad(f"must be a mapping with \"type\": one of {', '.join(_KINDS)}")
    unknown = set(spec) - {"type", "log", *_KINDS[spec["type"]]}
    missing = [key for key in _KINDS[spec["type"]] if key not in spec]
    if unknown or missing:
        raise bad(f"of type {spec['type']} takes {', '.join(_KINDS[spec['type']])} (and log for numbers); "
                  f"{'unknown: ' + ', '.join(sorted(unknown)) if unknown else 'missing: ' + ', '.join(missing)}")
    if name == "meta_class_size" and spec["type"] != "int":
        raise bad("must be searched as an int range (narrowed per trial to the sizes the ensemble size allows): "
                  '{"type": "int", "low": 2, "high": 12}')
    if spec["type"] == "choice":
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise bad("needs a non-empty list of values")
        return
    takes = value_kind(next(f for f, _ in option_fields() if f.name == name))
    if takes != "float" and (takes != "int" or spec["type"] == "float"):
        what = {"int": "takes whole numbers", "bool": "is true or false"}.get(takes, "takes text")
        raise bad(f"{what}: search it as {'an int range or ' if takes == 'int' else ''}a choice of values")
    kind = int if spec["type"] == "int" else (int, float)
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if any(isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v) for v in (low, high)):
        hint = " (YAML reads 1e-5 as text: write 1.0e-5)" if any(isinstance(v, str) for v in (low, high)) else ""
        raise bad(f"needs {'whole' if spec['type'] == 'int' else 'finite'} numbers as low and high{hint}")
    if not isinstance(log, bool):
        raise bad("has a log that is not true or false")
    if low > high or (spec["type"] == "float" and low == high):
        raise bad(f"has low {low} above high {high}" if low > high else "needs low below high")
    if log and low <= 0:
        raise bad("is searched on a log scale, so low must be above 0")
