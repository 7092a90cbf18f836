"""The run config: what a user asks of a run, composed of one section per part of the core (data, model,
training, evaluation), each declared and checked by its owner. Every field is one command-line option and one
key of a study's config dict (`antimetric.base.fields`); `antimetric.options` builds the arguments of
`antimetric train` and `studies.search` from the sections.

Fields left as None take the dataset's default (its row of `antimetric.data.table`) when the config is
resolved, so `--data-name sop` alone gives the seed's SOP settings. What a run decides when it starts (device,
precision, workers, ...) is not written back here: see `antimetric.training.decisions.StartDecisions`.

This module imports no torch: every command imports it to build its options.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from antimetric.base.fields import check_at_least, check_types, option
from antimetric.data.settings import DEFAULT_DATA_PATH, DataConfig, check_dataset, parse_rgb
from antimetric.data.table import OWN_DATA_TRAINING, OWN_DATA_TRAINING_BY_BACKBONE, TABLE
from antimetric.errors import ConfigError
from antimetric.evaluation.settings import EvalConfig, parse_recalls
from antimetric.model.settings import PRECISIONS, ModelConfig, check_name


@dataclass
class TrainConfig:
    batch_size: int = option(32, "training batch size", parse=int)
    num_epochs: int | None = option(None, "epochs", parse=int)
    lr: float | None = option(None, "Adam learning rate; x0.1 after 50 % and 70 % of the epochs", parse=float)
    seed: int = option(0, "meta-class assignment, validation split, initialisation, sampling", parse=int)
    device: str = option("auto", "auto (CUDA if present), cpu, cuda, cuda:N")
    train: bool = option(True, "train (--no-train: only evaluate the untrained or pretrained ensemble)",
                         aliases=("--with-train",))
    load_ids: str | None = option(None, "reuse meta-class ids: a meta_ids.json, or none for the latest run of "
                                        "this dataset in --output-dir", metavar="PATH", const="latest")
    precision: str = option("auto", "arithmetic of the forward pass: bf16 autocast or fp32; auto: bf16 on CUDA and "
                                    "on CPUs with native bf16 (AVX512-BF16, AMX), fp32 elsewhere", choices=PRECISIONS)
    compile: bool = option(False, "torch.compile the network for training (on a GPU: faster steps after a "
                                  "compilation per process; measured: benchmarks/RESULTS.md)")

    def check(self) -> None:
        """The rules of a resolved training section (every None default filled in)."""
        check_at_least({"batch_size": self.batch_size, "num_epochs": self.num_epochs}, 1)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a finite positive number such as 1e-4, got {self.lr}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be 0 or more, got {self.seed}")
        check_device(self.device)
        check_name("precision", self.precision, PRECISIONS)
        if self.batch_size < 2 and self.train:
            raise ConfigError("--batch-size must be at least 2 to train (BatchNorm needs two samples)")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = option("runs", "run folders are created here")
    run_name: str | None = option(None, "run folder name (default: <dataset>-<time>, made unique)")
    reuse_run_name: bool = option(False, "an existing --run-name folder: replace that run's files instead of "
                                         "stopping with an error")

    def to_flat(self) -> dict[str, Any]:
        flat: dict[str, Any] = {key: getattr(self, key) for key in _RUN_KEYS}
        for section in _SECTIONS:
            flat.update(dataclasses.asdict(getattr(self, section)))
        return flat

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> "RunConfig":
        """Build a config from one flat dict (CLI or study); unknown keys are an error."""
        config = cls()
        for key, value in values.items():
            if key in _RUN_KEYS:
                setattr(config, key, value)
                continue
            section = _FIELD_SECTION.get(key)
            if section is None:
                raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(_FIELD_SECTION))}")
            if key == "recalls" and value is not None:
                value = parse_recalls(value)
            if key in ("mean", "std") and value is not None:  # a config.json holds a list
                value = parse_rgb(value)
            if key == "implementation" and value == "auto":  # a config.json from before 2026-11-29
                value = "batched"
            setattr(getattr(config, section), key, value)
        return config


_SECTIONS = ("data", "model", "train", "eval")
SECTION_CLASSES = (DataConfig, ModelConfig, TrainConfig, EvalConfig)
_RUN_KEYS = ("output_dir", "run_name", "reuse_run_name")
_FIELD_SECTION = {
    f.name: section
    for section, kind in zip(_SECTIONS, SECTION_CLASSES)
    for f in dataclasses.fields(kind)
}


def resolve(config: RunConfig, *, progress: bool = False) -> RunConfig:
    """A copy with every None default filled in from the dataset, then checked.

    A user's own data (--data) is read for the defaults it gives (antimetric.data.readers.own_defaults), after
    every rule that needs no data is checked, and only when a field it decides is left as None: the resolved
    config a run writes holds them all, so resuming or evaluating the run does not measure them again.
    """
    if config.data.data is None:
        check_dataset(config.data.data_name)
    resolved = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data),
        model=dataclasses.replace(config.model),
        train=dataclasses.replace(config.train),
        eval=dataclasses.replace(config.eval),
    )
    if resolved.data.data is None:
        _fill(resolved, TABLE[config.data.data_name].defaults())
        if resolved.data.data_path is None:
            resolved.data.data_path = DEFAULT_DATA_PATH
    else:
        _fill_own_data(resolved, progress)
    if resolved.eval.eval_batch_size is None:
        resolved.eval.eval_batch_size = 2 * resolved.train.batch_size
    _check(resolved)
    return resolved


def _fill(config: RunConfig, defaults: dict[str, Any]) -> None:
    """Set each field left as None to its value in `defaults` (config field name -> value)."""
    for key, value in defaults.items():
        section = getattr(config, _FIELD_SECTION[key])
        if getattr(section, key) is None:
            setattr(section, key, value)


def _fill_own_data(config: RunConfig, progress: bool) -> None:
    """The defaults of a user's folder or table: the seed's training settings (the demo's with the tiny backbone),
    then what is measured on the data; its name and absolute paths, so that the run's config finds it again."""
    from antimetric.data.readers.source import data_source  # the readers import torch, which this module does not

    data, model = config.data, config.model
    source = data_source(data)
    data.data, data.data_path, data.data_name = str(Path(data.data).expanduser().absolute()), \
        str(source.dataset_dir), source.name
    if model.backbone is None:
        model.backbone = OWN_DATA_TRAINING.backbone
    meta_asked = model.meta_class_size is not None
    _fill(config, dataclasses.asdict(OWN_DATA_TRAINING_BY_BACKBONE.get(model.backbone, OWN_DATA_TRAINING)))
    measured_fields = ("recalls", "mean", "std")
    if meta_asked and all(getattr(getattr(config, _FIELD_SECTION[key]), key) is not None for key in measured_fields):
        return
    _check(config)  # every rule that needs no data (the meta-class size the preferred one), before the data is read
    from antimetric.data.manifest.prepare import load_or_prepare
    from antimetric.data.readers import own_defaults

    index = load_or_prepare(source, progress=progress)
    split_seed = data.split_seed if data.split_seed is not None else config.train.seed
    classes = own_defaults.training_classes(index, data.val_fraction, data.max_per_class, split_seed, data.val_fold)
    if not meta_asked:  # the preferred size, brought within the training classes
        model.meta_class_size = own_defaults.meta_class_size(model.meta_class_size, classes, model.ensemble_size)
    measured: dict[str, Any] = {"recalls": own_defaults.recalls_for(index)}
    if data.mean is None or data.std is None:
        measured["mean"], measured["std"] = own_defaults.normalisation(index, config.model.pretrained)
    _fill(config, measured)


def _check(config: RunConfig) -> None:
    for section in (config, *(getattr(config, name) for name in _SECTIONS)):
        check_types(section)
    config.data.check()
    config.model.check()
    config.train.check()
    config.eval.check()
    if not config.run_name and config.run_name is not None:
        raise ConfigError("--run-name must not be empty")
    if config.run_name and (Path(config.run_name).name != config.run_name or config.run_name in (".", "..")):
        raise ConfigError(f"--run-name must be a folder name, not a path, got {config.run_name!r}; "
                          "put the parent folder in --output-dir")


def check_device(name: str) -> None:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (whether CUDA is present is checked when the run starts)."""
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
