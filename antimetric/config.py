"""Typed configuration. Every field is one command-line option and one key of a study's config dict.

Fields left as None take the dataset's default (`DATASET_DEFAULTS`) when the config is
resolved, so `--data-name sop` alone gives the seed's SOP settings.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from antimetric.errors import ConfigError

DATASETS = ("demo", "cub", "car", "sop", "isc")
CROP_TYPES = ("uncropped", "cropped")
BOXED_DATASETS = ("cub", "car", "demo")  # those with bounding boxes, which crop_type 'cropped' needs
IMPLEMENTATIONS = ("auto", "batched", "reference")


@dataclass
class DataConfig:
    data_name: str = "demo"  # one of DATASETS; 'demo' is generated on first use
    data_path: str = "data"  # parent folder holding cub/, car/, sop/, isc/, demo/
    crop_type: str = "uncropped"  # 'cropped' uses the bounding boxes (cub, car)
    image_size: int | None = None  # side of the square network input (seed: 256)
    val_fraction: float = 0.0  # fraction of the training classes held out for model selection
    max_per_class: int = 300  # training images kept per class (seed: 300)
    num_workers: int | None = None  # data-loader processes; None: chosen from the CPU count
    image_cache: bool = True  # read the resized copies `prepare --cache-size` wrote, when they match


@dataclass
class ModelConfig:
    backbone: str | None = None  # resnet18, resnet34, resnet50, resnext50, tiny
    share_type: str = "layer1"  # last ResNet stage shared by all branches
    ensemble_size: int | None = None  # number of branches
    meta_class_size: int | None = None  # meta-classes each branch predicts
    with_random: bool = False  # scale the shared feature by random softmax weights in training
    with_fc: bool | None = None  # per-branch linear head to meta_class_size (seed default: off)
    pretrained: bool | None = None  # ImageNet weights; default True except for 'demo'
    weights_file: str | None = None  # a local torchvision ImageNet .pth instead of downloading
    implementation: str = "auto"  # 'auto' (= 'batched', every device) or 'reference' (the seed's loop)
    activation_checkpointing: bool | None = None  # recompute activations in backward; None: on after a GPU OOM


@dataclass
class TrainConfig:
    batch_size: int = 32
    num_epochs: int | None = None
    lr: float | None = None  # Adam (seed: 1e-4); MultiStepLR x0.1 at 50% and 70% of the epochs
    seed: int = 0  # meta-class assignment, validation split, initialisation, sampling
    device: str = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:1', ...
    train: bool = True  # False: only evaluate the untrained (or pretrained) ensemble
    load_ids: str | None = None  # meta-class ids file to reuse instead of drawing new ones
    compile: bool = False  # torch.compile the network for training (H100: +9 % images/s, ~40 s to compile)


@dataclass
class EvalConfig:
    recalls: tuple[int, ...] | None = None  # Recall@K values reported
    eval_batch_size: int | None = None  # default: 2 x batch_size
    chunk_size: int = 4096  # query rows per similarity block in the exact kNN search


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs"  # run folders are created below it
    run_name: str | None = None  # default: <dataset>-<timestamp>, made unique
    reuse_run_name: bool = False  # an existing run folder of run_name: replace its run files (else an error)

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
            setattr(getattr(config, section), key, value)
        return config


_SECTIONS = ("data", "model", "train", "eval")
_RUN_KEYS = ("output_dir", "run_name", "reuse_run_name")
_FIELD_SECTION = {
    f.name: section
    for section, kind in zip(_SECTIONS, (DataConfig, ModelConfig, TrainConfig, EvalConfig))
    for f in dataclasses.fields(kind)
}

# The seed's settings per dataset (its README's benchmark section) and a CPU-sized demo.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "car": dict(backbone="resnet18", ensemble_size=48, meta_class_size=12, num_epochs=20, image_size=256,
                recalls=(1, 2, 4, 8), pretrained=True, with_fc=False, lr=1e-4),
    "cub": dict(backbone="resnet18", ensemble_size=48, meta_class_size=12, num_epochs=20, image_size=256,
                recalls=(1, 2, 4, 8), pretrained=True, with_fc=False, lr=1e-4),
    "sop": dict(backbone="resnet18", ensemble_size=48, meta_class_size=512, num_epochs=40, image_size=256,
                recalls=(1, 10, 100, 1000), pretrained=True, with_fc=False, lr=1e-4),
    "isc": dict(backbone="resnet18", ensemble_size=48, meta_class_size=192, num_epochs=40, image_size=256,
                recalls=(1, 10, 20, 30, 40, 50), pretrained=True, with_fc=False, lr=1e-4),
    "demo": dict(backbone="tiny", ensemble_size=12, meta_class_size=6, num_epochs=10, image_size=64,
                 recalls=(1, 2, 4, 8), pretrained=False, with_fc=True, lr=2e-3),
}


def parse_recalls(value: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in (value.split(",") if isinstance(value, str) else value))
    except ValueError:
        raise ConfigError(f"--recalls must be comma-separated integers such as 1,2,4,8, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--recalls must be positive integers such as 1,2,4,8, got {value!r}")
    return tuple(sorted(set(ks)))


def resolve(config: RunConfig) -> RunConfig:
    """A copy with every None default filled in from the dataset, then checked."""
    if config.data.data_name not in DATASETS:
        raise ConfigError(f"unknown dataset {config.data.data_name!r}; choose one of {', '.join(DATASETS)}")
    resolved = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data),
        model=dataclasses.replace(config.model),
        train=dataclasses.replace(config.train),
        eval=dataclasses.replace(config.eval),
    )
    for key, value in DATASET_DEFAULTS[config.data.data_name].items():
        section = getattr(resolved, _FIELD_SECTION[key])
        if getattr(section, key) is None:
            setattr(section, key, value)
    if resolved.eval.eval_batch_size is None:
        resolved.eval.eval_batch_size = 2 * resolved.train.batch_size
    _check(resolved)
    return resolved


def _check(config: RunConfig) -> None:
    data, model, train = config.data, config.model, config.train
    if data.crop_type not in CROP_TYPES:
        raise ConfigError(f"unknown crop type {data.crop_type!r}; choose one of {', '.join(CROP_TYPES)}")
    if data.crop_type == "cropped" and data.data_name not in BOXED_DATASETS:
        raise ConfigError(f"--crop-type cropped needs bounding boxes, which only cub and car have, not {data.data_name}")
    if not 0.0 <= data.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {data.val_fraction}")
    if model.implementation not in IMPLEMENTATIONS:
        raise ConfigError(f"unknown implementation {model.implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    if model.activation_checkpointing and model.implementation == "reference":
        raise ConfigError("--activation-checkpointing works on the batched network; drop --implementation reference")
    for name, value in (("ensemble_size", model.ensemble_size), ("meta_class_size", model.meta_class_size),
                        ("batch_size", train.batch_size), ("num_epochs", train.num_epochs),
                        ("image_size", data.image_size), ("max_per_class", data.max_per_class)):
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if model.meta_class_size < 2:
        raise ConfigError(f"--meta-class-size must be at least 2, got {model.meta_class_size}")
    if not (isinstance(train.lr, (int, float)) and math.isfinite(train.lr) and train.lr > 0):
        raise ConfigError(f"--lr must be a finite positive number such as 1e-4, got {train.lr}")
    if train.seed < 0:
        raise ConfigError(f"--seed must be 0 or more, got {train.seed}")
    if data.num_workers is not None and data.num_workers < 0:
        raise ConfigError(f"--num-workers must be 0 or more (0: load in the main process), got {data.num_workers}")
    for name, value in (("eval_batch_size", config.eval.eval_batch_size), ("chunk_size", config.eval.chunk_size)):
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    _check_device(train.device)
    if not config.run_name and config.run_name is not None:
        raise ConfigError("--run-name must not be empty")
    if config.run_name and (Path(config.run_name).name != config.run_name or config.run_name in (".", "..")):
        raise ConfigError(f"--run-name must be a folder name, not a path, got {config.run_name!r}; "
                          "put the parent folder in --output-dir")
    if train.batch_size < 2 and train.train:
        raise ConfigError("--batch-size must be at least 2 to train (BatchNorm needs two samples)")


def _check_device(name: str) -> None:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (whether CUDA is present is checked when the run starts)."""
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
