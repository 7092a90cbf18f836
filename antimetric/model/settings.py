"""The model's names and its section of the run config: which backbones (as the backbone table lists them), share
types, implementations and precisions exist, and the rules a model setting must meet. Everything else (the command
line, the dataset table's defaults, a study's space) takes these names from here.

This module imports no torch: every command imports it to build its options.
"""
from __future__ import annotations

from dataclasses import dataclass

from antimetric.base.fields import check_at_least, check_at_most, option
from antimetric.errors import ConfigError
from antimetric.model.backbones.table import all_share_types, backbone_names, share_types_of

# The command lines' choices, from the backbone table (model/backbones/table.py: one row per backbone, one layout
# per family) as it is at import; the checks below ask the table itself, which may have grown since.
BACKBONE_NAMES = backbone_names()
SHARE_TYPES = all_share_types()  # where a trunk may end, in any family (ModelConfig.check: in the backbone's)
IMPLEMENTATIONS = ("batched", "reference")  # all branches as one network, or the seed's loop over branches
PRECISIONS = ("auto", "fp32", "bf16")  # of the forward pass (model/device_plan.py: what auto means on a device)

# Values no one means, refused at once (what fits the device is estimated when a run starts:
# antimetric.training.memory_estimate). Each is far above any setting in use.
MAX_ENSEMBLE_SIZE = 1024  # 21x the seed's 48 branches
MAX_META_CLASS_SIZE = 100_000  # more than any dataset's training classes (SOP: 11,318)


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

    def check(self) -> None:
        """The rules of a resolved model section (every None default filled in)."""
        check_name("backbone", self.backbone, backbone_names())
        check_name("share type", self.share_type, share_types_of(self.backbone))
        check_name("implementation", self.implementation, IMPLEMENTATIONS)
        if self.activation_checkpointing and self.implementation == "reference":
            raise ConfigError("--activation-checkpointing works on the batched network; drop --implementation "
                              "reference")
        check_at_least({"ensemble_size": self.ensemble_size, "meta_class_size": self.meta_class_size}, 1)
        check_at_least({"meta_class_size": self.meta_class_size}, 2)
        check_at_most({"ensemble_size": (self.ensemble_size, MAX_ENSEMBLE_SIZE),
                       "meta_class_size": (self.meta_class_size, MAX_META_CLASS_SIZE)})


def check_name(what: str, value: str | None, names: tuple[str, ...]) -> None:
    """One of the model's names, e.g. check_name("backbone", "resnet19", BACKBONE_NAMES) refuses a typo."""
    if value not in names:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(names)}")
