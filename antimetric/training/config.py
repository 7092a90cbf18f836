"""Typed configuration. Every field is one command-line option and one key of a study's config dict,
declared once: its default, help, choices and spellings are the field (`option`), and
`antimetric.options` builds the arguments of `antimetric train` and `studies.search` from them.

Fields left as None take the dataset's default (its row of `antimetric.data.table`) when the
config is resolved, so `--data-name sop` alone gives the seed's SOP settings.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from antimetric.data.table import TABLE
from antimetric.errors import ConfigError

DATASETS = tuple(TABLE)
CROP_TYPES = ("uncropped", "cropped")
BOXED_DATASETS = tuple(name for name, row in TABLE.items() if row.has_boxes)  # what crop_type 'cropped' needs
IMPLEMENTATIONS = ("batched", "reference")
PRECISIONS = ("auto", "fp32", "bf16")


BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "resnext50", "tiny")  # antimetric.model.backbones.BACKBONES
SHARE_TYPES = ("maxpool", "layer1", "layer2", "layer3", "layer4")
# Values no one means, refused at once (what fits the device is estimated when a run starts:
# antimetric.training.memory_estimate). Each is far above any setting in use.
MAX_IMAGE_SIZE = 4096  # 16x the seed's 256 px
MAX_ENSEMBLE_SIZE = 1024  # 21x the seed's 48 branches
MAX_META_CLASS_SIZE = 100_000  # more than any dataset's training classes (SOP: 11,318)


@dataclass(frozen=True)
class Option:
    """How a config field appears on a command line (`antimetric.options` builds the arguments)."""

    help: str
    parse: Callable[[str], Any] | None = None  # text -> value; None: the text itself (bool fields are flags)
    choices: tuple[Any, ...] | None = None
    aliases: tuple[str, ...] = ()  # further spellings, e.g. the seed's --backbone-type
    metavar: str | None = None
    const: Any = None  # the value of the option given without an argument (then optional)


def option(default: Any, help: str, **form: Any) -> Any:
    """A config field with its default and its command-line form: the one declaration of an option."""
    return field(default=default, metadata={"option": Option(help, **form)})


def _recalls_text(text: str) -> tuple[int, ...]:
    return parse_recalls(text)


@dataclass
class DataConfig:
    data_name: str = option("demo", "dataset (demo is generated on first use)", choices=DATASETS)
    data_path: str = option("data", f"parent folder of the dataset folders {', '.join(n + '/' for n in DATASETS)}")
    crop_type: str = option("uncropped", f"cropped uses the bounding boxes ({', '.join(BOXED_DATASETS)})",
                            choices=CROP_TYPES)
    image_size: int | None = option(None, "side of the square network input in pixels", parse=int)
    val_fraction: float = option(0.0, "fraction of the training classes held out to select the best epoch",
                                 parse=float)
    max_per_class: int = option(300, "training images kept per class (the seed's cap)", parse=int)
    val_fold: int | None = option(None, "hold out class-disjoint fold R of the training classes (folds of "
                                        "--val-fraction each) instead of one seeded draw", parse=int, metavar="R")
    split_seed: int | None = option(None, "seed of the validation split and its folds (default: --seed)", parse=int)
    num_workers: int | None = option(None, "data-loader processes (default: none on <= 2 cores, else up to 8)",
                                     parse=int)
    image_cache: bool = option(True, "read the resized images of `prepare --cache-size` when they match")
    image_memory: int | None = option(None, "MiB of resized images kept decoded in memory after their first "
                                            "epoch (default: 1024 when loading in the main process, else 0)",
                                      parse=int, metavar="MIB")


@dataclass
class ModelConfig:
    backbone: str | None = option(None, "torchvision ResNet (tiny: a small one for CPUs)", choices=BACKBONE_NAMES,
                                  aliases=("--backbone-type",))
    share_type: str = option("layer1", "last ResNet stage shared by all branches", choices=SHARE_TYPES)
    ensemble_size: int | None = option(None, "number of branches", parse=int)
    meta_class_size: int | None = option(None, "meta-classes each branch predicts", parse=int)
    with_random: bool = option(False, "scale the shared feature by random softmax weights per sample and branch "
                                      "in training")
    with_fc: bool | None = option(None, "a linear head per branch (without it the pooled feature is the logits)")
    pretrained: bool | None = option(None, "ImageNet weights (downloaded by torchvision, or --weights-file)")
    weights_file: str | None = option(None, "a local torchvision ImageNet .pth instead of downloading",
                                      metavar="PATH")
    implementation: str = option("batched", "branch formulation: batched (all branches as one network) or "
                                            "reference (the seed's loop)", choices=IMPLEMENTATIONS)
    activation_checkpointing: bool | None = option(
        None, "recompute activations in the backward pass (default: turned on after a GPU out-of-memory)")


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
    compile: bool = option(False, "torch.compile the network for training (H100: +9 % images/s, ~40 s to compile)")


@dataclass
class EvalConfig:
    recalls: tuple[int, ...] | None = option(None, "Recall@K values, e.g. 1,2,4,8", parse=_recalls_text)
    eval_batch_size: int | None = option(None, "evaluation batch size (default: 2 x --batch-size)", parse=int)
    chunk_size: int = option(4096, "query rows per block of the exact kNN search", parse=int)


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

# What each dataset gives the fields left as None (the seed's settings, and a CPU-sized demo).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {name: row.defaults() for name, row in TABLE.items()}


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


def check_crop_type(data_name: str, crop_type: str) -> None:
    """A known crop type, and `cropped` only for a dataset with bounding boxes."""
    if crop_type not in CROP_TYPES:
        raise ConfigError(f"unknown crop type {crop_type!r}; choose one of {', '.join(CROP_TYPES)}")
    if crop_type == "cropped" and data_name not in BOXED_DATASETS:
        raise ConfigError(f"--crop-type cropped needs bounding boxes, which {data_name} does not have "
                          f"(only {', '.join(BOXED_DATASETS)} do); drop --crop-type")


def value_kind(f: dataclasses.Field) -> str:
    """What the command line makes of config field f: "bool" (a --flag/--no-flag), "int", "float", "text" (the
    text itself) or "parsed" (its own parse, e.g. --recalls)."""
    if f.type in ("bool", "bool | None"):
        return "bool"
    parse = f.metadata["option"].parse
    return {int: "int", float: "float", None: "text"}.get(parse, "parsed")


_KIND_TEXT = {"bool": "true or false", "int": "a whole number", "float": "a number", "text": "text"}


def check_value(f: dataclasses.Field, value: Any) -> None:
    """A typed value (a study's space, a config.json) of the type the command line gives field f: "false" for a
    flag, 32.5 or True for a whole number, are refused. None passes where the field's default is None."""
    kind = value_kind(f)
    if (value is None and f.default is None) or kind == "parsed":
        return
    accepted = {"bool": isinstance(value, bool),
                "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
                "float": isinstance(value, numbers.Real) and not isinstance(value, bool),
                "text": isinstance(value, (str, os.PathLike))}[kind]
    if not accepted:
        raise ConfigError(f"--{f.name.replace('_', '-')} must be {_KIND_TEXT[kind]}, got {value!r}")


def _check(config: RunConfig) -> None:
    data, model, train = config.data, config.model, config.train
    for section in (config, data, model, train, config.eval):
        for f in dataclasses.fields(section):
            if "option" in f.metadata:
                check_value(f, getattr(section, f.name))
    check_crop_type(data.data_name, data.crop_type)
    if not 0.0 <= data.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {data.val_fraction}")
    if model.backbone not in BACKBONE_NAMES:
        raise ConfigError(f"unknown backbone {model.backbone!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    if model.share_type not in SHARE_TYPES:
        raise ConfigError(f"unknown share type {model.share_type!r}; choose one of {', '.join(SHARE_TYPES)}")
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
    for name, value, cap in (("image_size", data.image_size, MAX_IMAGE_SIZE),
                             ("ensemble_size", model.ensemble_size, MAX_ENSEMBLE_SIZE),
                             ("meta_class_size", model.meta_class_size, MAX_META_CLASS_SIZE)):
        if value > cap:
            raise ConfigError(f"--{name.replace('_', '-')} must be at most {cap}, got {value}")
    if not (isinstance(train.lr, (int, float)) and math.isfinite(train.lr) and train.lr > 0):
        raise ConfigError(f"--lr must be a finite positive number such as 1e-4, got {train.lr}")
    for name, value in (("seed", train.seed), ("split_seed", data.split_seed), ("val_fold", data.val_fold)):
        if value is not None and value < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")
    if data.val_fold is not None and not data.val_fraction:
        raise ConfigError("--val-fold holds out a fold of --val-fraction of the training classes; "
                          "give --val-fraction above 0")
    if data.num_workers is not None and data.num_workers < 0:
        raise ConfigError(f"--num-workers must be 0 or more (0: load in the main process), got {data.num_workers}")
    if data.image_memory is not None and data.image_memory < 0:
        raise ConfigError(f"--image-memory must be 0 or more MiB (0: decode every epoch), got {data.image_memory}")
    if data.image_memory and data.num_workers:
        raise ConfigError(f"--image-memory keeps images in the process that loads them, and the {data.num_workers} "
                          "--num-workers processes restart every epoch; add --num-workers 0 or drop --image-memory")
    for name, value in (("eval_batch_size", config.eval.eval_batch_size), ("chunk_size", config.eval.chunk_size)):
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    check_device(train.device)
    if train.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {train.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not config.run_name and config.run_name is not None:
        raise ConfigError("--run-name must not be empty")
    if config.run_name and (Path(config.run_name).name != config.run_name or config.run_name in (".", "..")):
        raise ConfigError(f"--run-name must be a folder name, not a path, got {config.run_name!r}; "
                          "put the parent folder in --output-dir")
    if train.batch_size < 2 and train.train:
        raise ConfigError("--batch-size must be at least 2 to train (BatchNorm needs two samples)")


def check_device(name: str) -> None:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (whether CUDA is present is checked when the run starts)."""
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
