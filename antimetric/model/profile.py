"""Parameter and FLOP counts of an ensemble, as the seed's README reports them."""
from __future__ import annotations

import copy
import dataclasses

import torch

from antimetric.model.batched import BranchConv2d, BranchLinear
from antimetric.model.ensemble import EnsembleNet, build_model
from antimetric.model.settings import ModelConfig


def meta_model(config: ModelConfig, implementation: str = "batched") -> EnsembleNet:
    """The network of `config` on the meta device, in eval mode: shapes only (no memory, no weights download)."""
    with torch.device("meta"):
        return build_model(_random_init(config), implementation).eval()


def profile(config: ModelConfig, image_size: int = 256, implementation: str = "batched") -> dict[str, int]:
    """{"params", "flops"} for one 3 x image_size x image_size image; flops is thop's count
    (multiply-accumulates), the figure the seed reported."""
    import thop  # here, not at the top: what imports meta_model (model/cost.py, a study's trial cost) needs no thop
    from thop.vision.basic_hooks import count_convNd

    model = meta_model(config, implementation)
    image = torch.empty(1, 3, image_size, image_size, device="meta")
    # thop leaves buffers in the model it measures: measure a copy.
    macs, _ = thop.profile(copy.deepcopy(model), inputs=(image,), custom_ops={BranchLinear: _count_branch_linear, BranchConv2d: count_convNd},
                           verbose=False)
    return {"params": sum(p.numel() for p in model.parameters()), "flops": int(macs)}


def _random_init(config: ModelConfig) -> ModelConfig:
    return dataclasses.replace(config, pretrained=False, weights_file=None)


def _count_branch_linear(module: BranchLinear, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
    module.total_ops += torch.DoubleTensor([int(output.numel()) * module.weight.shape[-1]])
