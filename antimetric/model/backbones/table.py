"""The backbone table: one row per backbone name, one layout per family of networks.

A row says which family builds the backbone and from what (a torchvision builder and its ImageNet weights enum),
and how wide its pooled feature is. A layout says what the ensemble sees of a family's network, by the names
of its children: the stages in forward order, where a trunk may end, and the classifier it drops. The family's
code (model/backbones/family.py and one module per family, e.g. resnet.py) builds what a row names.

Adding a backbone of a known family is one row here. This module imports no torch: every command reads the
names (model/settings.py takes its choices from here).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyLayout:
    """A family's network as the ensemble sees it, by the names of its children."""

    stages: tuple[str, ...]  # the children the ensemble keeps, in forward order: the trunk, then the branches
    first_share: str  # the earliest child the shared trunk may end at
    head: str  # the classifier child: neither kept nor read from ImageNet weights

    @property
    def share_types(self) -> tuple[str, ...]:
        """Where the trunk may end: the branches hold the stages after it."""
        return self.stages[self.stages.index(self.first_share):]


# torchvision's ResNet, ResNeXt and wide ResNet (BasicBlock or Bottleneck stages): model/backbones/resnet.py.
RESNET = FamilyLayout(stages=("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
                      first_share="maxpool", head="fc")
LAYOUTS: dict[str, FamilyLayout] = {"resnet": RESNET}


@dataclass(frozen=True)
class BackboneRow:
    family: str  # a key of LAYOUTS (and of model/backbones/family.py's FAMILIES)
    builder: str | None  # the torchvision.models function; None: the family's tiny network for CPUs and tests
    weights: str | None  # its torchvision weights enum, whose IMAGENET1K_V1 is loaded; None: no ImageNet weights
    feature_width: int  # channels of the last stage: the pooled feature a branch outputs without a head


BACKBONES: dict[str, BackboneRow] = {
    "resnet18": BackboneRow("resnet", "resnet18", "ResNet18_Weights", 512),
    "resnet34": BackboneRow("resnet", "resnet34", "ResNet34_Weights", 512),
    "resnet50": BackboneRow("resnet", "resnet50", "ResNet50_Weights", 2048),
    "resnext50": BackboneRow("resnet", "resnext50_32x4d", "ResNeXt50_32X4D_Weights", 2048),
    "tiny": BackboneRow("resnet", None, None, 128),  # one BasicBlock per stage, widths 16/32/64/128
}


def register_backbone(name: str, row: BackboneRow) -> None:
    """Add a backbone at run time, as a row of BACKBONES would: the model, the config's checks and the memory
    estimate take it from then on. The command lines offer the names known when they were built."""
    if name in BACKBONES:
        raise ValueError(f"backbone {name!r} exists already")
    if row.family not in LAYOUTS:
        raise ValueError(f"backbone {name!r}: no family {row.family!r}; the families are {', '.join(LAYOUTS)}")
    BACKBONES[name] = row


def backbone_names() -> tuple[str, ...]:
    """Every backbone name, those registered at run time included."""
    return tuple(BACKBONES)


def share_types_of(backbone: str | None) -> tuple[str, ...]:
    """Where the trunk of `backbone` may end (none for an unknown name)."""
    row = BACKBONES.get(backbone)
    return LAYOUTS[row.family].share_types if row is not None else ()


def all_share_types() -> tuple[str, ...]:
    """The share types of every family, each once, in order: what the command line offers."""
    return tuple(dict.fromkeys(name for layout in LAYOUTS.values() for name in layout.share_types))
