"""What an ensemble costs to embed one image: the retrieval vector's length, the parameters, the forward FLOPs.

The FLOPs are torch's own count (torch.utils.flop_counter): convolutions and matrix products, a multiply
and an add counted as 2. The elementwise rest (BatchNorm, ReLU, residual adds, pooling, the branch weights,
the final L2 normalisation) is left out: a few operations per activation, about 1 % of the count or less.
(thop, which `antimetric profile` also reports, counts multiply-accumulates and adds BatchNorm:
tests/model/test_cost.py checks the two against each other.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from antimetric.model.backbones.family import get_backbone
from antimetric.model.profile import meta_model
from antimetric.model.settings import ModelConfig


@dataclass(frozen=True)
class EnsembleCost:
    embedding_dims: int  # ensemble_size * branch_dim: the retrieval vector's length
    params: int  # every parameter of the network: trunk, branches and heads
    gflops_per_image: float  # forward FLOPs (multiply and add counted as 2) of embedding one test image, / 1e9


def branch_dim(config: ModelConfig) -> int:
    """Each branch's output width: the meta-class count with a head, else the backbone's pooled feature width."""
    return config.meta_class_size if config.with_fc else get_backbone(config.backbone).feature_width


def ensemble_cost(config: ModelConfig, image_size: int) -> EnsembleCost:
    """The cost of `config` for one 3 x image_size x image_size test image, counted on the meta device
    (no memory, no weights).

    The FLOPs are those of the eval-mode forward pass that EnsembleNet.embed runs (embed itself enters
    autocast, which the meta device does not have); they are the same in bf16 and fp32.
    """
    model = meta_model(config)
    image = torch.empty(1, 3, image_size, image_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(image)  # (1, m, d)
    return EnsembleCost(
        embedding_dims=config.ensemble_size * branch_dim(config),
        params=sum(p.numel() for p in model.parameters()),
        gflops_per_image=counter.get_total_flops() / 1e9,
    )
