"""What the model asks of a backbone family, the families, and a named backbone: built from its row of table.py
with its ImageNet weights (torchvision's cache or download, or a local file), and split into trunk and tail."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torchvision import models

from antimetric.errors import AntimetricError, ConfigError
from antimetric.model.backbones.resnet import RESNET_FAMILY
from antimetric.model.backbones.table import BACKBONES, BackboneRow, FamilyLayout, backbone_names, share_types_of
from antimetric.model.batched import BlockBatcher
from antimetric.model.settings import check_name


class BackboneFamily(BlockBatcher, Protocol):
    """A family of networks the ensemble can branch (resnet.py is one): a network whose children include its
    layout's stages, what ImageNet weights a row has, and its blocks batched over branches (BlockBatcher)."""

    layout: FamilyLayout

    def build(self, row: BackboneRow) -> nn.Module:
        """A randomly initialised network of `row`."""
        ...

    def imagenet_weights(self, row: BackboneRow) -> models.WeightsEnum | None:
        """The torchvision weights of `row`, None where it has none."""
        ...


FAMILIES: dict[str, BackboneFamily] = {"resnet": RESNET_FAMILY}  # table.py's family names


@dataclass(frozen=True)
class Backbone:
    name: str
    row: BackboneRow
    family: BackboneFamily

    @property
    def feature_width(self) -> int:
        """Channels of the last stage: the pooled feature a branch outputs without a head."""
        return self.row.feature_width

    @property
    def weights(self) -> models.WeightsEnum | None:
        """ImageNet weights, None where none exist."""
        return self.family.imagenet_weights(self.row)

    def build(self, pretrained: bool, weights_file: str | Path | None = None) -> nn.Module:
        """The network with ImageNet weights (from torchvision's cache/download or `weights_file`) or random ones."""
        net = self.family.build(self.row)
        if weights_file is not None:
            state = _read_weights_file(Path(weights_file))
        elif pretrained:
            state = _download_weights(self.name, self.weights)
        else:
            return net
        head = self.family.layout.head + "."
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(head)]
        if missing or unexpected:
            raise AntimetricError(
                f"weights do not fit {self.name}: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                f"pass the torchvision ImageNet weights of {self.name}"
            )
        return net

    def split(self, net: nn.Module, share_type: str) -> tuple[nn.Sequential, nn.Sequential]:
        """(trunk, tail): the stages up to and including `share_type`, and the stages after it."""
        check_name("share type", share_type, share_types_of(self.name))
        stages = self.family.layout.stages
        cut = stages.index(share_type) + 1
        trunk = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in stages[:cut]))
        tail = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in stages[cut:]))
        return trunk, tail


def get_backbone(name: str) -> Backbone:
    """The backbone of a row of table.py (one registered at run time too)."""
    check_name("backbone", name, backbone_names())
    row = BACKBONES[name]
    return Backbone(name, row, FAMILIES[row.family])


def _download_weights(name: str, weights: models.WeightsEnum | None) -> dict[str, torch.Tensor]:
    if weights is None:
        raise ConfigError(f"backbone {name!r} has no ImageNet weights; use --no-pretrained")
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        url = weights.url
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
