"""The Triton grouped-convolution kernels compute what torch's grouped convolution computes.

Run on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set before Triton is
imported, hence a subprocess); on a GPU the same check runs in benchmarks/conv_kernels.py.
Every check of this file runs in one subprocess (`interpreted`): each start imports torch and
Triton again and pays the interpreter's first launch, seconds that no check needs twice."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.slow  # Triton's interpreter, in a subprocess
ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent('''
    import json, os, sys, traceback
    import torch
    import torch.nn.functional as F
    from kernels.triton_kernels import grouped_conv2d

    def worst_errors(cases):
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
        return worst

    def model_errors():
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
        return errors

    def run(check, gpu_tiles):
        """check()'s result, or its traceback: one check failing leaves the others' results."""
        os.environ["ANTIMETRIC_TRITON_GPU_TILES"] = "1" if gpu_tiles else "0"  # read at each launch
        try:
            return check()
        except Exception:
            return {"failed": traceback.format_exc()}

    checks = json.loads(sys.argv[1])
    print(json.dumps({"small_tiles": run(lambda: worst_errors(checks["small_tiles"]), False),
                      "gpu_tiles": run(lambda: worst_errors(checks["gpu_tiles"]), True),
                      "model": run(model_errors, True)}))
''')


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """The worst relative errors of each check against torch, from one subprocess."""
    checks = {
        # n, groups, channels in / out per group, size, kernel, stride; the interpreter's time goes by program
        # instances, tiles x kernel taps x groups: the fewest pixels that still leave a tile part-filled
        "small_tiles": [
            [2, 2, 16, 16, 3, 3, 1],  # a residual block's 3x3 (size not a multiple of anything, a tile across images)
            [1, 3, 16, 32, 6, 3, 2],  # a stage's first 3x3, stride 2, widening
            [1, 2, 16, 16, 7, 3, 2],  # stride 2 on an odd size: parity classes of unequal sizes
            [2, 2, 32, 16, 4, 1, 2],  # the downsample 1x1, stride 2 (odd parity classes get no tap)
            [1, 2, 48, 16, 3, 3, 1],  # channels a multiple of 16 only
        ],
        "gpu_tiles": [[1, 2, 128, 128, 8, 3, 1], [1, 2, 64, 128, 8, 3, 2], [2, 2, 64, 128, 6, 1, 2]],
    }
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", CHECK, json.dumps(checks)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_close(errors: dict) -> None:
    """Every relative error below 1e-5, after the check ran to its end (its traceback otherwise)."""
    assert "failed" not in errors, errors.get("failed")
    for name, rel in errors.items():
        assert rel < 1e-5, (name, rel)


def test_forward_and_both_gradients_match_torch_in_the_interpreter(interpreted):
    """On the interpreter's own 16 x 16 x 16 tiles."""
    _assert_close(interpreted["small_tiles"])
    assert interpreted["small_tiles"].keys() == {"out", "grad_input", "grad_weight"}


def test_the_gpu_tile_sizes_compute_the_same(interpreted):
    """The 128 x 128 x 64 tiles a GPU runs (and BK dividing the channels), on ResNet widths."""
    _assert_close(interpreted["gpu_tiles"])
    assert interpreted["gpu_tiles"].keys() == {"out", "grad_input", "grad_weight"}


def test_the_batched_network_trains_the_same_on_the_triton_kernels(interpreted):
    """The kernels wired into the network (channels-last views, the autograd Function, weight
    layouts): output and every parameter gradient equal the oneDNN path's.

    On the GPU's tiles: the tiny network's grouped convolutions have 64 and 128 channels a group, which
    the interpreter's 16-wide tiles cut into some 2,000 weight-gradient programs (most of a minute in the
    interpreter), the GPU's into under 100; the wiring checked here is the same for any tile, and each
    tile set is checked against torch above."""
    errors = interpreted["model"]
    _assert_close(errors)
    assert len(errors) > 10
