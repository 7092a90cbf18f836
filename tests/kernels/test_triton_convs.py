"""kernels.register() wires the Triton grouped convolutions into a DevicePlan through antimetric's one hook."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import kernels
from antimetric.model.batched import BranchConv2d
from antimetric.model.device_plan import DevicePlan
from antimetric.model.ensemble import build_model
from antimetric.model.kernel_hook import register_conv_kernels
from antimetric.model.settings import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ModelConfig(backbone="tiny", share_type="layer1", ensemble_size=2, meta_class_size=4, with_fc=True,
                     with_random=True, pretrained=False)


@pytest.fixture
def registered_kernels():
    """kernels.register() for one test; what was registered before is put back after it."""
    previous = register_conv_kernels(None)
    kernels.register()
    yield
    register_conv_kernels(previous)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CONFIG)


def _output(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return model(torch.randn(4, 3, 32, 32, generator=g), torch.rand(4, 2, generator=g).softmax(1))


def test_the_triton_plan_swaps_the_grouped_convolutions_and_keeps_the_weights(registered_kernels):
    """The same Parameters, state dict and (on a CPU without Triton's interpreter, where the swapped modules
    fall back to torch) the same result."""
    pytest.importorskip("triton")
    from kernels.triton_convs import TritonBranchConv2d

    plain, swapped = _model(), _model()
    parameters = dict(swapped.named_parameters())
    swapped.configure(DevicePlan(triton_convs=True))
    grouped = [name for name, m in plain.named_modules() if isinstance(m, BranchConv2d) and m.branches > 1]
    assert [name for name, m in swapped.named_modules() if isinstance(m, TritonBranchConv2d)] == grouped
    assert len(grouped) == 7  # all but the two dense convolutions reading the shared feature
    assert all(p is parameters[name] for name, p in swapped.named_parameters())
    assert swapped.state_dict().keys() == plain.state_dict().keys()
    assert torch.equal(_output(swapped), _output(plain))


@pytest.mark.slow
def test_registering_without_triton_is_a_one_line_config_error():
    """Triton made unimportable before anything loads it, as on a machine without it (a subprocess)."""
    script = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # `import triton` raises ImportError
        import kernels
        from antimetric.errors import ConfigError
        try:
            kernels.register()
        except ConfigError as error:
            print(error)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == ["triton_convs=True needs the triton package (pip install triton; "
                                                "Linux torch wheels ship it)"]
