"""What the benchmarks share: the seed configuration, the device, and the record of a run."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from antimetric.atomic import atomic_open
from antimetric.config import DATASET_DEFAULTS, ModelConfig, TrainConfig


@dataclass(frozen=True)
class SeedConfiguration:
    """The ensemble the seed's README benchmarks on CUB200 and CARS196, which every speed figure uses."""

    backbone: str
    share_type: str
    ensemble_size: int
    meta_class_size: int
    image_size: int
    batch_size: int


_CUB = DATASET_DEFAULTS["cub"]
# ResNet18 x 48 branches sharing layer1, 12 meta-classes, 256 px, batch 32: read from the core's
# dataset table and option defaults, so that the benchmarks measure what training runs.
SEED = SeedConfiguration(backbone=_CUB["backbone"], share_type=ModelConfig().share_type,
                         ensemble_size=_CUB["ensemble_size"], meta_class_size=_CUB["meta_class_size"],
                         image_size=_CUB["image_size"], batch_size=TrainConfig().batch_size)


def add_configuration_arguments(p: argparse.ArgumentParser, *, batch_size: bool = True) -> None:
    """The ensemble to measure (and its training batch size); the defaults are the seed configuration."""
    p.add_argument("--backbone", default=SEED.backbone)
    p.add_argument("--share-type", default=SEED.share_type)
    p.add_argument("--ensemble-size", type=int, default=SEED.ensemble_size)
    p.add_argument("--meta-class-size", type=int, default=SEED.meta_class_size)
    p.add_argument("--image-size", type=int, default=SEED.image_size)
    if batch_size:
        p.add_argument("--batch-size", type=int, default=SEED.batch_size)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device())


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The ensemble of add_configuration_arguments' options, as every figure in RESULTS.md measured
    it: random weights and a linear head per branch."""
    return ModelConfig(backbone=args.backbone, share_type=args.share_type, ensemble_size=args.ensemble_size,
                       meta_class_size=args.meta_class_size, with_fc=True, pretrained=False)


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that a clock read after it times them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def environment(device: torch.device) -> dict[str, str]:
    """What a result was measured on: the device and torch's version."""
    return {"device": device_name(device), "torch": torch.__version__}


def write_result(path: Path, result: dict[str, Any]) -> None:
    """A JSON result file, written whole or not at all (values JSON lacks, such as paths, as text)."""
    with atomic_open(Path(path), "w") as handle:
        json.dump(result, handle, indent=1, default=str)
