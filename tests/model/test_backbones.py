"""A backbone is one row of the backbone table (model/backbones/table.py): every known name builds, splits and
loads as its row and its family's layout say, and a row added at run time (a torchvision ResNet the table does
not list) is a backbone the config, the model, its cost and the memory estimate all take."""
import pytest
import torch
from torchvision import models

from antimetric.errors import ConfigError
from antimetric.model.backbones.family import FAMILIES, get_backbone
from antimetric.model.backbones.table import BACKBONES, LAYOUTS, BackboneRow, register_backbone
from antimetric.model.cost import ensemble_cost
from antimetric.model.ensemble import build_model
from antimetric.model.profile import meta_model
from antimetric.model.settings import BACKBONE_NAMES, SHARE_TYPES, ModelConfig
from antimetric.training.memory_estimate import footprint

NEW = "wide_resnet50_2"  # in torchvision, not in the table


@pytest.fixture
def new_row():
    """The row a contributor would add to BACKBONES, registered for this test only."""
    row = BackboneRow("resnet", "wide_resnet50_2", "Wide_ResNet50_2_Weights", 2048)
    assert NEW not in BACKBONES
    register_backbone(NEW, row)
    yield row
    del BACKBONES[NEW]


def _config(backbone: str, **values) -> ModelConfig:
    return ModelConfig(**{"backbone": backbone, "share_type": "layer3", "ensemble_size": 2, "meta_class_size": 4,
                          "with_fc": True, "pretrained": False, **values})


def test_every_row_has_a_family_with_its_code_and_its_layout():
    assert set(FAMILIES) == set(LAYOUTS)
    assert all(FAMILIES[name].layout is layout for name, layout in LAYOUTS.items())
    assert {row.family for row in BACKBONES.values()} <= set(FAMILIES)


def test_the_command_lines_offer_the_rows_and_the_split_points_saved_runs_recorded():
    assert BACKBONE_NAMES == tuple(BACKBONES) == ("resnet18", "resnet34", "resnet50", "resnext50", "tiny")
    assert SHARE_TYPES == LAYOUTS["resnet"].share_types == ("maxpool", "layer1", "layer2", "layer3", "layer4")


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_every_known_backbone_builds_splits_and_names_its_weights_as_its_row_says(name):
    row, layout = BACKBONES[name], LAYOUTS[BACKBONES[name].family]
    model = meta_model(_config(name, with_fc=False))
    assert list(model.trunk._modules) == list(layout.stages[:layout.stages.index("layer3") + 1])
    assert list(model.branches.stages) == ["layer4"]
    out = model(torch.empty(1, 3, 64, 64, device="meta"))
    assert out.shape == (1, 2, row.feature_width)
    weights = get_backbone(name).weights
    if row.weights is None:
        assert weights is None
    else:
        assert weights is getattr(models, row.weights).IMAGENET1K_V1 and weights.url.endswith(".pth")


def test_a_row_added_at_run_time_is_a_backbone_the_config_the_cost_and_the_memory_estimate_take(new_row):
    config = _config(NEW)
    config.check()  # a known name, and layer3 one of its family's split points
    assert get_backbone(NEW).weights is models.Wide_ResNet50_2_Weights.IMAGENET1K_V1  # named, not downloaded
    out = meta_model(config)(torch.empty(3, 3, 32, 32, device="meta"))
    assert out.shape == (3, 2, 4)
    assert ensemble_cost(config, 32).embedding_dims == 2 * 4
    counts = footprint(NEW, "layer3", 32)
    assert counts.branch_params > 0 and 0 < counts.branch_block_values < counts.branch_values


@pytest.mark.slow  # builds a 69M-parameter network twice on the CPU: seconds
def test_a_row_added_at_run_time_trains_and_matches_the_reference_loop(new_row):
    config = _config(NEW, with_random=True)
    torch.manual_seed(0)
    batched = build_model(config).double()  # float64: the two formulations then agree to rounding
    torch.manual_seed(0)
    reference = build_model(config, "reference").double()
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    weights = torch.rand(4, 2, dtype=torch.float64).softmax(1)
    out = batched(images, weights)  # (b, m, d), in training mode
    assert out.shape == (4, 2, 4) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in batched.branches.parameters())
    torch.testing.assert_close(out, reference(images, weights))


def test_register_refuses_a_taken_name_and_a_family_without_code():
    with pytest.raises(ValueError, match="exists already"):
        register_backbone("resnet18", BACKBONES["resnet18"])
    with pytest.raises(ValueError, match="no family 'convnext'"):
        register_backbone("convnext_tiny", BackboneRow("convnext", "convnext_tiny", "ConvNeXt_Tiny_Weights", 768))
    assert "convnext_tiny" not in BACKBONES


def test_an_unknown_backbone_or_split_point_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet19'; choose one of resnet18, "):
        _config("resnet19").check()
    with pytest.raises(ConfigError, match="unknown backbone"):
        get_backbone("resnet19")
    with pytest.raises(ConfigError, match="unknown share type 'layer5'; choose one of maxpool, layer1, "):
        _config("tiny", share_type="layer5").check()
