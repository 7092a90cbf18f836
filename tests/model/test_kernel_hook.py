"""A plan's experimental kernels come through antimetric.model.kernel_hook, never by the core importing them."""
import ast
from pathlib import Path

import pytest
import torch

import antimetric
from antimetric.errors import ConfigError
from antimetric.model import DevicePlan, build_model
from antimetric.model.kernel_hook import register_conv_kernels
from antimetric.training.config import ModelConfig

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


def test_no_core_source_imports_the_kernels_package_even_lazily():
    """The hook is the only way in: an import of `kernels` (or of the old antimetric.experimental) anywhere in
    antimetric/, inside a function too, would make the product depend on code outside it."""
    core = Path(antimetric.__file__).parent
    found = []
    for path in sorted(core.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.relative_to(core.parent)}:{node.lineno}: {name}" for name in names
                      if name.partition(".")[0] == "kernels" or name.startswith("antimetric.experimental")]
    assert not found, found
