"""The backbone table: which torchvision ResNet each name builds, and its ImageNet weights."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock

from antimetric.errors import AntimetricError, ConfigError
from antimetric.model.settings import BACKBONE_NAMES, BACKBONE_SOURCES, SHARE_TYPES, STAGES, check_name


@dataclass(frozen=True)
class Backbone:
    build: Callable[[], nn.Module]  # returns a randomly initialised ResNet-shaped module
    weights: models.WeightsEnum | None  # ImageNet weights, None where none exist
    feature_width: int  # channels after layer4


def tiny_resnet() -> nn.Module:
    """A ResNet with one BasicBlock per stage and widths 16/32/64/128, for CPUs and tests.

    It has the same children as torchvision's ResNet, so the trunk/branch split and the
    batched network treat it like the real backbones.
    """
    widths = (16, 32, 64, 128)
    net = nn.Module()
    net.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(widths[0])
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    in_ch = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or in_ch != width:
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, width, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )
        setattr(net, f"layer{i + 1}", nn.Sequential(BasicBlock(in_ch, width, stride, downsample)))
        in_ch = width
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def _backbone(builder: str | None, weights: str | None, feature_width: int) -> Backbone:
    if builder is None:
        return Backbone(tiny_resnet, None, feature_width)
    return Backbone(getattr(models, builder), getattr(models, weights).IMAGENET1K_V1, feature_width)


BACKBONES: dict[str, Backbone] = {name: _backbone(*source) for name, source in BACKBONE_SOURCES.items()}


def get_backbone(name: str) -> Backbone:
    check_name("backbone", name, BACKBONE_NAMES)
    return BACKBONES[name]


def build_resnet(name: str, pretrained: bool, weights_file: str | Path | None = None) -> nn.Module:
    """A backbone with ImageNet weights (from torchvision's cache/download or `weights_file`) or random ones."""
    backbone = get_backbone(name)
    net = backbone.build()
    if weights_file is not None:
        state = _read_weights_file(Path(weights_file))
    elif pretrained:
        state = _download_weights(name, backbone)
    else:
        return net
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise AntimetricError(
            f"weights do not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}; "
            f"pass the torchvision ImageNet weights of {name}"
        )
    return net


def _download_weights(name: str, backbone: Backbone) -> dict[str, torch.Tensor]:
    if backbone.weights is None:
        raise ConfigError(f"backbone {name!r} has no ImageNet weights; use --no-pretrained")
    try:
        return backbone.weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        url = backbone.weights.url
        cache = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        raise AntimetricError(
            f"could not get the ImageNet weights of {name} ({type(exc).__name__}: {exc}); "
            f"download {url} to {cache} or pass --weights-file PATH, or train with --no-pretrained"
        ) from exc


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise AntimetricError(f"weights file {path} does not exist; pass the path of a torchvision .pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or pickled-object file
        raise AntimetricError(f"cannot read weights file {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise AntimetricError(f"weights file {path} does not hold a state dict")
    return state


def split_resnet(net: nn.Module, share_type: str) -> tuple[nn.Sequential, nn.Sequential]:
    """(trunk, tail): the children up to and including `share_type`, and the stages after it."""
    check_name("share type", share_type, SHARE_TYPES)
    cut = STAGES.index(share_type) + 1
    trunk = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in STAGES[:cut]))
    tail = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in STAGES[cut:]))
    return trunk, tail

