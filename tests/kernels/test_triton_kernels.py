"""The Triton grouped-convolution kernels compute what torch's grouped convolution computes.

Run on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set before Triton is
imported, hence a subprocess); on a GPU the same check runs in benchmarks/conv_kernels.py."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.slow  # Triton's interpreter, in subprocesses
ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent('''
    import json, sys
    import torch
    import torch.nn.functional as F
    from kernels.triton_kernels import grouped_conv2d

    cases = json.loads(sys.argv[1])
    worst = {}
    for case in cases:
        n, groups, ci, co, size, k, stride = case
        pad = k // 2
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, groups * ci, size, size, generator=g, dtype=torch.float64)
        w = torch.randn(groups * co, ci, k, k, generator=g, dtype=torch.float64)
        projection = None
        results = []
        for fn in ("torch", "triton"):
            xi = x.clone().float().contiguous(memory_format=torch.channels_last).requires_grad_(True)
            wi = w.clone().float().requires_grad_(True)
            if fn == "torch":
                y = F.conv2d(xi, wi, None, stride, pad, 1, groups)
            else:
                y = grouped_conv2d(xi, wi, groups, stride, pad)
            if projection is None:
                projection = torch.randn(y.shape, generator=g)
            (y * projection).sum().backward()
            results.append((y.detach(), xi.grad, wi.grad))
        for name, a, b in zip(("out", "grad_input", "grad_weight"), results[1], results[0]):
            assert a.shape == b.shape, (case, name, a.shape, b.shape)
            rel = ((a - b).norm() / b.norm()).item()
            worst[name] = max(worst.get(name, 0.0), rel)
    print(json.dumps(worst))
''')


def _worst_errors(cases, gpu_tiles=False):
    env = {**os.environ, "TRITON_INTERPRET": "1", "ANTIMETRIC_TRITON_GPU_TILES": "1" if gpu_tiles else "0"}
    proc = subprocess.run([sys.executable, "-c", CHECK, json.dumps(cases)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_forward_and_both_gradients_match_torch_in_the_interpreter():
    cases = [  # n, groups, channels in / out per group, size, kernel, stride
        [2, 2, 16, 16, 5, 3, 1],  # a residual block's 3x3 (size not a multiple of anything)
        [1, 3, 16, 32, 6, 3, 2],  # a stage's first 3x3, stride 2, widening
        [1, 2, 16, 16, 7, 3, 2],  # stride 2 on an odd size: parity classes of unequal sizes
        [2, 2, 32, 16, 4, 1, 2],  # the downsample 1x1, stride 2 (odd parity classes get no tap)
        [2, 2, 48, 16, 3, 3, 1],  # channels a multiple of 16 only
    ]
    for name, rel in _worst_errors(cases).items():
        assert rel < 1e-5, (name, rel)


def test_the_gpu_tile_sizes_compute_the_same():
    """The 128 x 128 x 64 tiles a GPU runs (and BK dividing the channels), on ResNet widths."""
    cases = [[1, 2, 128, 128, 8, 3, 1], [1, 2, 64, 128, 8, 3, 2], [2, 2, 64, 128, 6, 1, 2]]
    for name, rel in _worst_errors(cases, gpu_tiles=True).items():
        assert rel < 1e-5, (name, rel)


MODEL_CHECK = textwrap.dedent('''
    import json
    import torch
    import kernels
    from antimetric.model.settings import ModelConfig
    from kernels.triton_convs import TritonBranchConv2d
    from antimetric.model.device_plan import DevicePlan
    from antimetric.model.ensemble import build_model

    kernels.register()

    config = ModelConfig(backbone="tiny", share_type="layer2", ensemble_size=2, meta_class_size=4, with_fc=True,
                         with_random=True, pretrained=False)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    weights = torch.rand(2, 2, generator=g).softmax(1)
    results = []
    for triton in (False, True):
        torch.manual_seed(0)
        # eval: BatchNorm by running statistics; train-mode BatchNorm over 2 images of 1-2 px
        # would amplify float32 rounding in the gradients of either path
        model = build_model(config)
        model.configure(DevicePlan(channels_last=True, triton_convs=triton))
        model.eval()
        assert any(isinstance(m, TritonBranchConv2d) for m in model.modules()) is triton
        out = model(images, weights)
        out.pow(2).sum().backward()
        results.append((out.detach(), {k: p.grad for k, p in model.named_parameters()}))
    (out_c, grads_c), (out_t, grads_t) = results
    errors = {"out": ((out_t - out_c).norm() / out_c.norm()).item()}
    for key in grads_c:
        errors[key] = ((grads_t[key] - grads_c[key]).norm() / grads_c[key].norm().clamp_min(1e-30)).item()
    print(json.dumps(errors))
''')


def test_the_batched_network_trains_the_same_on_the_triton_kernels():
    """The kernels wired into the network (channels-last views, the autograd Function, weight
    layouts): output and every parameter gradient equal the oneDNN path's."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", MODEL_CHECK], capture_output=True, text=True, env=env, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) > 10
    for name, rel in errors.items():
        assert rel < 1e-5, (name, rel)
