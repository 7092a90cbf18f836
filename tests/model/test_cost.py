"""An ensemble's cost: FLOPs against torchvision's published figure and against thop, sizes against the seed's table."""
import pytest
import torch
from torch import nn
from torchvision.models import ResNet18_Weights

from antimetric.model.cost import branch_dim, ensemble_cost
from antimetric.model.profile import meta_model, profile
from antimetric.model.settings import ModelConfig


def test_one_branch_costs_what_torchvision_publishes_for_resnet18():
    # ensemble_size 1 sharing layer1 is a whole ResNet-18 with a 12-wide head
    config = ModelConfig(backbone="resnet18", share_type="layer1", ensemble_size=1, meta_class_size=12, with_fc=True)
    published_gmacs = ResNet18_Weights.IMAGENET1K_V1.meta["_ops"]  # 1.814, at 224 px with the 1000-class head
    # 0.002: the published figure's rounding to 0.001 GMACs (0.001 GFLOPs) plus its 1000-class head (0.001 GFLOPs)
    assert ensemble_cost(config, 224).gflops_per_image == pytest.approx(2 * published_gmacs, abs=0.002)


def test_sizes_of_the_seed_configuration():
    config = ModelConfig(backbone="resnet18", share_type="layer1", ensemble_size=48, meta_class_size=12, with_fc=True)
    cost = ensemble_cost(config, 64)
    assert cost.params == 529_365_376  # the seed README's table (tests/model/test_parameters.py)
    assert cost.embedding_dims == 48 * 12 == 48 * branch_dim(config)


def test_without_a_head_a_branch_is_the_pooled_feature():
    config = ModelConfig(backbone="tiny", share_type="layer2", ensemble_size=3, meta_class_size=12, with_fc=False)
    assert branch_dim(config) == 128
    assert ensemble_cost(config, 32).embedding_dims == 3 * 128
    model = meta_model(config)
    assert model(torch.empty(1, 3, 32, 32, device="meta")).shape == (1, 3, branch_dim(config))


def test_flops_are_twice_thops_macs_less_its_batchnorm():
    """thop (pinned 0.1.1) counts 4 multiply-accumulates per BatchNorm element (normalise, then the affine
    step) and none for ReLU or pooling; torch counts only convolutions and matrix products. So the two agree
    exactly once thop's BatchNorm is taken out: tolerance 0. (Here BatchNorm is 0.3 % of thop's count.)"""
    config = ModelConfig(backbone="resnet18", share_type="layer2", ensemble_size=4, meta_class_size=12, with_fc=True)
    model = meta_model(config)
    bn_elements = []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(lambda module, inputs, output: bn_elements.append(output.numel()))
    with torch.no_grad():
        model(torch.empty(1, 3, 64, 64, device="meta"))
    thop_macs = profile(config, 64)["flops"]
    torch_flops = round(ensemble_cost(config, 64).gflops_per_image * 1e9)
    assert torch_flops == 2 * thop_macs - 2 * 4 * sum(bn_elements)
