"""A device plan changes how the ensemble runs, never what it computes."""
import pytest
import torch

from antimetric.model.device_plan import (
    CPU_CHANNELS_LAST_BACKBONES,
    cpu_has_native_bf16,
    cpuinfo_value,
    plan_for,
    resolve_precision,
)
from antimetric.model.ensemble import build_model
from antimetric.model.settings import ModelConfig

CONFIG = ModelConfig(backbone="tiny", share_type="layer1", ensemble_size=2, meta_class_size=4, with_fc=True,
                     with_random=True, pretrained=False)


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return build_model(CONFIG).to(dtype)


def _output_and_grads(model):
    g = torch.Generator().manual_seed(1)
    images, weights = torch.randn(4, 3, 32, 32, generator=g), torch.rand(4, 2, generator=g).softmax(1)
    dtype = next(model.parameters()).dtype
    out = model(images.to(dtype), weights.to(dtype))
    out.pow(2).sum().backward()
    return out.detach(), {name: p.grad for name, p in model.named_parameters()}


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_the_gpu_plan_runs_channels_last_and_computes_what_the_cpu_plan_does():
    """In float64, so that the memory format's other order of summation is far below the tolerance."""
    cpu, gpu = _model(torch.float64), _model(torch.float64)
    assert cpu.configure(plan_for(torch.device("cpu"))) is cpu
    assert gpu.configure(plan_for(torch.device("cuda"))) is gpu  # its memory format, applied here on the CPU
    for model, channels_last in ((cpu, False), (gpu, True)):
        weight = model.branches.stages.layer2[0].conv2.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
        assert not model.grad_checkpointing  # auto: off until a GPU step runs out of memory
    (out_c, grads_c), (out_g, grads_g) = _output_and_grads(cpu), _output_and_grads(gpu)
    assert _rel(out_g, out_c) < 1e-12
    for name, grad in grads_c.items():
        assert _rel(grads_g[name], grad) < 1e-10, name


def test_the_plan_turns_checkpointing_on_and_compiles_when_asked():
    model = _model()
    compiled = model.configure(plan_for(torch.device("cpu"), activation_checkpointing=True, compile=True))
    assert model.grad_checkpointing
    assert compiled is not model and compiled._orig_mod is model  # compiled lazily, on its first call


@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f avx512_bf16 sse", True), ("fpu amx_bf16 amx_tile", True),
                                           ("fpu avx2 avx512f avx512bw", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpuinfo_value("model name", cpuinfo) == "X" and cpuinfo_value("model", cpuinfo) is None
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_precision_auto_is_bf16_on_cuda_and_on_native_bf16_cpus_and_explicit_values_win():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    native = cpu_has_native_bf16()
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert plan_for(cpu).bf16 is native
    assert resolve_precision("auto", cuda) == "bf16" and plan_for(cuda).bf16
    assert not plan_for(cuda, precision="fp32").bf16 and plan_for(cpu, precision="bf16").bf16
    assert not plan_for(cpu, precision="fp32").bf16


def test_embed_computes_in_the_precision_of_the_plan_it_was_configured_with():
    """Unconfigured: fp32, the equality tests' arithmetic; configured for bf16: bf16 rounding, and
    L2-normalised float32 either way."""
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model = _model().eval()
    plain = model.embed(images)
    model.configure(plan_for(torch.device("cpu"), precision="fp32"))
    assert torch.equal(model.embed(images), plain)
    model.configure(plan_for(torch.device("cpu"), precision="bf16"))
    rounded = model.embed(images)
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, plain)
    assert (rounded - plain).abs().max() < 0.05


def test_channels_last_on_a_cpu_is_for_the_backbones_measured_faster_so():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert plan_for(cpu, backbone="tiny").channels_last and "tiny" in CPU_CHANNELS_LAST_BACKBONES
    assert not plan_for(cpu, backbone="resnet18").channels_last and not plan_for(cpu).channels_last
    assert plan_for(cuda, backbone="resnet18").channels_last and plan_for(cuda, backbone="tiny").channels_last
