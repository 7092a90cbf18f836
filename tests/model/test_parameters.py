"""Parameter counts equal the seed README's table (ensemble 48, share layer1, with the fc head)."""
import pytest
import torch

from antimetric.errors import AntimetricError, ConfigError
from antimetric.model.backbones.family import get_backbone
from antimetric.model.ensemble import build_model
from antimetric.model.profile import meta_model, profile
from antimetric.model.settings import ModelConfig

SEED_TABLE = {  # backbone: (CARS196/CUB200 meta 12, SOP meta 512, In-shop meta 192)
    "resnet18": (529_365_376, 541_677_376, 533_797_696),
    "resnet34": (1_011_079_808, 1_023_391_808, 1_015_512_128),
    "resnet50": (1_118_974_592, 1_168_150_592, 1_136_677_952),
    "resnext50": (1_094_093_696, 1_143_269_696, 1_111_797_056),
}


# The deeper backbones take seconds each: they run in `make test`, resnet18 in `make test-fast` too.
@pytest.mark.parametrize("backbone", [pytest.param(b, marks=() if b == "resnet18" else pytest.mark.slow)
                                      for b in SEED_TABLE])
def test_parameter_table(backbone):
    for meta, expected in zip((12, 512, 192), SEED_TABLE[backbone]):
        config = ModelConfig(backbone=backbone, share_type="layer1", ensemble_size=48, meta_class_size=meta,
                             with_fc=True)
        for implementation in ("batched", "reference"):
            assert sum(p.numel() for p in meta_model(config, implementation).parameters()) == expected


def test_profile_counts_the_same_flops_for_both_formulations():
    config = ModelConfig(backbone="resnet18", share_type="layer2", ensemble_size=4, meta_class_size=12, with_fc=True)
    batched, reference = profile(config, 64), profile(config, 64, "reference")
    assert batched == reference
    single = profile(ModelConfig(backbone="resnet18", share_type="layer2", ensemble_size=1, meta_class_size=12,
                                 with_fc=True), 64)
    assert single["flops"] < batched["flops"] < 4 * single["flops"]  # the trunk is shared


def test_weights_file_gives_every_branch_the_same_tail(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(get_backbone("resnet18").build(pretrained=False).state_dict(), path)
    config = ModelConfig(backbone="resnet18", share_type="layer2", ensemble_size=3, meta_class_size=4,
                         with_fc=True, pretrained=True, weights_file=str(path))
    model = build_model(config)
    template = torch.load(path, weights_only=True)
    conv = model.state_dict()["branches.stages.layer3.0.conv1.weight"].chunk(3)
    for branch in conv:
        assert torch.equal(branch, template["layer3.0.conv1.weight"])
    assert torch.equal(model.state_dict()["trunk.conv1.weight"], template["conv1.weight"])


def test_unreadable_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(AntimetricError, match="cannot read weights file"):
        get_backbone("resnet18").build(pretrained=True, weights_file=bad)
    with pytest.raises(AntimetricError, match="does not exist"):
        get_backbone("resnet18").build(pretrained=True, weights_file=tmp_path / "missing.pth")


def test_offline_download_failure_says_how_to_provide_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: torchvision must download

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(AntimetricError, match="--weights-file") as info:
        get_backbone("resnet18").build(pretrained=True)
    assert "resnet18-f37072fd.pth" in str(info.value) and "\n" not in str(info.value)


def test_logits_wider_than_the_feature_need_a_head():
    with pytest.raises(ConfigError, match="add --with-fc"):
        build_model(ModelConfig(backbone="tiny", ensemble_size=2, meta_class_size=200, with_fc=False))
