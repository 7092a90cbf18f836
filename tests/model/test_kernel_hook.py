"""A plan's experimental kernels come through antimetric.model.kernel_hook, never by the core importing them."""

import pytest
import torch

from antimetric.errors import ConfigError
from antimetric.model.device_plan import DevicePlan
from antimetric.model.ensemble import build_model
from antimetric.model.kernel_hook import register_conv_kernels
from antimetric.model.settings import ModelConfig

CONFIG = ModelConfig(backbone="tiny", share_type="layer1", ensemble_size=2, meta_class_size=4, with_fc=True,
                     with_random=True, pretrained=False)


@pytest.fixture
def registered():
    """What the test registers is undone after it: the registry is the process's."""
    previous = register_conv_kernels(None)
    yield register_conv_kernels
    register_conv_kernels(previous)


def test_a_triton_plan_with_nothing_registered_is_a_one_line_config_error(registered):
    model = build_model(CONFIG)
    with pytest.raises(ConfigError) as error:
        model.configure(DevicePlan(triton_convs=True))
    assert "\n" not in str(error.value) and "kernels.register()" in str(error.value)


def test_the_plan_calls_the_registered_swap_with_the_model_and_only_when_asked(registered):
    swapped = []

    def swap(model: torch.nn.Module) -> int:
        swapped.append(model)
        return 0

    registered(swap)
    plain, triton = build_model(CONFIG), build_model(CONFIG)
    plain.configure(DevicePlan())
    triton.configure(DevicePlan(triton_convs=True))
    assert swapped == [triton]
