"""Blocks of branches: a block of the ensemble is a smaller ensemble with exactly those branches' weights, and the
blocks join back into the whole ensemble's state."""
import dataclasses

import pytest
import torch

from antimetric.errors import ConfigError
from antimetric.model.convert import block_state, branch_blocks, join_blocks
from antimetric.model.ensemble import build_model
from antimetric.model.settings import ModelConfig

CONFIG = ModelConfig(backbone="tiny", share_type="layer1", ensemble_size=5, meta_class_size=4, with_fc=True,
                     pretrained=False)


@pytest.mark.parametrize("size, parts, expected", [(5, 2, [(0, 3), (3, 5)]), (4, 4, [(0, 1), (1, 2), (2, 3), (3, 4)]),
                                                   (7, 3, [(0, 3), (3, 5), (5, 7)]), (3, 1, [(0, 3)])])
def test_blocks_are_contiguous_cover_every_branch_once_and_differ_by_at_most_one(size, parts, expected):
    assert [(b.start, b.stop) for b in branch_blocks(size, parts)] == expected


@pytest.mark.parametrize("parts", [0, 6])
def test_more_processes_than_branches_is_one_line(parts):
    with pytest.raises(ConfigError, match="cannot share 5 branches") as refused:
        branch_blocks(5, parts)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("share_type, with_fc", [("layer1", True), ("maxpool", False), ("layer3", True)])
def test_a_block_embeds_as_its_branches_of_the_whole_ensemble(share_type, with_fc):
    torch.manual_seed(0)
    config = dataclasses.replace(CONFIG, share_type=share_type, with_fc=with_fc)
    whole = build_model(config).eval()
    for module in whole.modules():  # BatchNorm's fresh 0/1 values would hide a wrong slice of them
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor in (module.weight, module.bias, module.running_mean):
                tensor.data.normal_()
            module.running_var.data.uniform_(0.5, 2.0)
    images = torch.rand(3, 3, 32, 32)
    expected = whole.embed(images, per_branch=True)  # (b, m, d)
    for block in branch_blocks(config.ensemble_size, 2):
        part = build_model(dataclasses.replace(config, ensemble_size=len(block))).eval()
        part.load_state_dict(block_state(whole.state_dict(), config.ensemble_size, block))
        torch.testing.assert_close(part.embed(images, per_branch=True), expected[:, block.start:block.stop])


def test_the_blocks_join_into_the_whole_state():
    whole = build_model(CONFIG).state_dict()
    blocks = [block_state(whole, CONFIG.ensemble_size, b) for b in branch_blocks(CONFIG.ensemble_size, 3)]
    joined = join_blocks(blocks)
    assert joined.keys() == whole.keys()
    assert all(torch.equal(joined[key], whole[key]) for key in whole)
