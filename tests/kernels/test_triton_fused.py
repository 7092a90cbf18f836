"""The fused BatchNorm-ReLU-convolution kernels compute what torch's BatchNorm (training mode), ReLU and
grouped convolution compute: outputs, batch statistics and every gradient.

The kernel checks run Triton's interpreter (TRITON_INTERPRET=1, set before Triton is imported, hence a
subprocess, one for all checks of a config) in float32 on tiny shapes; on a GPU,
benchmarks/conv_kernels.py's fused rows check bf16."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent('''
    import json, sys
    import torch
    import torch.nn.functional as F
    from torch import nn
    from kernels.triton_fused import ChannelSums, bn_add_relu, bn_relu_conv

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()

    def make_bn(c, g):
        bn = nn.BatchNorm2d(c)
        with torch.no_grad():
            bn.weight.copy_(1 + 0.3 * torch.randn(c, generator=g))
            bn.bias.copy_(0.4 + 0.3 * torch.randn(c, generator=g))  # shift mostly > 0: act(0) > 0
        return bn

    def torch_bn(t, bn):
        return F.batch_norm(t, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)

    def sums_of(t):
        t = t.detach()
        return ChannelSums(t.sum((0, 2, 3)), (t * t).sum((0, 2, 3)), t.numel() // t.shape[1])

    def compare(run, params, g, worst):
        """run(fused) -> (output, its sums); worst errors of the fused output, sums and every gradient."""
        results, projection = [], None
        for fused in (False, True):
            for p in params.values():
                p.grad = None
            out, sums = run(fused)
            projection = torch.randn(out.shape, generator=g) if projection is None else projection
            (out * projection).sum().backward()
            results.append({"out": out.detach(), "total": sums[0], "squares": sums[1],
                            **{k: p.grad.clone() for k, p in params.items()}})
        for key in results[0]:
            worst[key] = max(worst.get(key, 0.0), rel(results[1][key], results[0][key]))

    def units(cases):
        worst, act0_padding = {}, []
        for n, groups, ci, co, size, k, stride in cases:
            pad = k // 2
            g = torch.Generator().manual_seed(0)
            x = (2 * torch.randn(n, groups * ci, size, size, generator=g) + 0.5).contiguous(
                memory_format=torch.channels_last).requires_grad_(True)
            w = (torch.randn(groups * co, ci, k, k, generator=g) / (ci * k * k) ** 0.5).requires_grad_(True)
            bn = make_bn(groups * ci, g)

            def run(fused):
                if fused:
                    y, s = bn_relu_conv(x, w, groups, stride, pad, bn=bn, x_sums=sums_of(x))
                    return y, (s.total, s.squares)
                y = F.conv2d(F.relu(torch_bn(x, bn)), w, None, stride, pad, 1, groups)
                return y, sums_of(y)[:2]

            compare(run, {"grad_x": x, "grad_w": w, "grad_gamma": bn.weight, "grad_beta": bn.bias}, g, worst)
            if pad:  # what padding with act(0) = relu(shift) instead of 0 computes: the check must tell
                with torch.no_grad():
                    act = F.relu(torch_bn(x, bn))
                    shift = bn.bias - x.mean((0, 2, 3)) * bn.weight * torch.rsqrt(
                        x.var((0, 2, 3), unbiased=False) + bn.eps)
                    border = F.pad(torch.zeros_like(act), (pad,) * 4, value=1.0) * shift.relu()[:, None, None]
                    wrong = F.conv2d(F.pad(act, (pad,) * 4) + border, w, None, stride, 0, 1, groups)
                    act0_padding.append(rel(wrong, F.conv2d(act, w, None, stride, pad, 1, groups)))
        return {**worst, "act0_padding_is_wrong_by": min(act0_padding, default=None)}

    def blocks(cases):
        worst = {}
        for n, groups, ci, co, size, stride in cases:
            g = torch.Generator().manual_seed(1)
            x = torch.randn(n, groups * ci, size, size, generator=g).relu().contiguous(
                memory_format=torch.channels_last).requires_grad_(True)  # a block's input: a ReLU's output
            w1 = (torch.randn(groups * co, ci, 3, 3, generator=g) / (9 * ci) ** 0.5).requires_grad_(True)
            w2 = (torch.randn(groups * co, co, 3, 3, generator=g) / (9 * co) ** 0.5).requires_grad_(True)
            bn1, bn2 = make_bn(groups * co, g), make_bn(groups * co, g)
            params = {"grad_x": x, "grad_w1": w1, "grad_w2": w2, "grad_gamma1": bn1.weight, "grad_beta1": bn1.bias,
                      "grad_gamma2": bn2.weight, "grad_beta2": bn2.bias}
            downsample = stride != 1 or ci != co
            if downsample:
                wd = (torch.randn(groups * co, ci, 1, 1, generator=g) / ci ** 0.5).requires_grad_(True)
                bnd = make_bn(groups * co, g)
                params.update(grad_wd=wd, grad_gammad=bnd.weight, grad_betad=bnd.bias)

            def run(fused):
                if fused:
                    y1, s1 = bn_relu_conv(x, w1, groups, stride, 1)
                    y2, s2 = bn_relu_conv(y1, w2, groups, 1, 1, bn=bn1, x_sums=s1)
                    if downsample:
                        yd, sd = bn_relu_conv(x, wd, groups, stride, 0)
                        return bn_add_relu(y2, s2, bn2, yd, bnd, sd), (s2.total, s2.squares)
                    return bn_add_relu(y2, s2, bn2, x), (s2.total, s2.squares)
                y1 = F.conv2d(x, w1, None, stride, 1, 1, groups)
                y2 = F.conv2d(F.relu(torch_bn(y1, bn1)), w2, None, 1, 1, 1, groups)
                residual = torch_bn(F.conv2d(x, wd, None, stride, 0, 1, groups), bnd) if downsample else x
                return F.relu(torch_bn(y2, bn2) + residual), sums_of(y2)[:2]

            compare(run, params, g, worst)
        return worst

    def benchmark(conv):
        from benchmarks.conv_kernels import measure_fused

        return measure_fused(conv, 2, torch.device("cpu"), torch.float32, 1, ("fused-unit", "fused-add"))

    checks = json.loads(sys.argv[1])
    print(json.dumps({name: {"units": units, "blocks": blocks, "benchmark": benchmark}[name](cases)
                      for name, cases in checks.items()}))
''')


def _interpreted(checks: dict, config: int | None = None) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("ANTIMETRIC_TRITON_FUSED_CONFIG", None)
    if config is not None:
        env["ANTIMETRIC_TRITON_FUSED_CONFIG"] = str(config)
    proc = subprocess.run([sys.executable, "-c", CHECK, json.dumps(checks)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def small_tiles():
    """Every check on the interpreter's own config (32 x 16 x 16 tiles, split-K 3), in one subprocess."""
    return _interpreted({
        "units": [  # n, groups, channels in / out per group, size, kernel, stride
            [2, 2, 16, 16, 5, 3, 1],  # 3x3 on an odd size
            [1, 3, 16, 32, 5, 3, 2],  # 3x3 stride 2 on an odd size, widening, 3 groups
            [2, 2, 32, 16, 5, 1, 1],  # 1x1, narrowing
            [2, 2, 16, 16, 7, 1, 2],  # 1x1 stride 2: odd parity classes of the input gradient get no tap
        ],
        # n, groups, channels in / out, size, stride: a block with a downsample, one without (rows past a tile's
        # end); 16 channels a group, as a wider block only adds programs to the units' checks above
        "blocks": [[2, 2, 16, 16, 7, 2], [2, 2, 16, 16, 5, 1]],
        # the rows' plumbing: a 1x1 convolution on 3 x 3 pixels, the fewest programs that run both rows
        "benchmark": {"input_chw": [32, 3, 3], "out_channels": 32, "groups": 2, "branches": 2, "stride": 1,
                      "padding": 0, "kernel": 1},
    })


def _assert_close(errors: dict, names: set) -> None:
    assert names <= errors.keys(), names - errors.keys()
    for name in names:
        assert errors[name] < 1e-5, (name, errors[name])


UNIT_RESULTS = {"out", "total", "squares", "grad_x", "grad_w", "grad_gamma", "grad_beta"}


@pytest.mark.slow
def test_bn_relu_conv_matches_batch_norm_relu_conv_in_the_interpreter(small_tiles):
    _assert_close(small_tiles["units"], UNIT_RESULTS)
    assert small_tiles["units"]["act0_padding_is_wrong_by"] > 1e-2  # so padding with act(0) would fail


@pytest.mark.slow
def test_a_basic_block_of_fused_units_matches_torch(small_tiles):
    """conv1 (no prologue, its statistics from the epilogue), bn1 + ReLU fused into conv2, bn2 + residual +
    ReLU at the end, the residual a 1x1 stride-2 convolution with its own BatchNorm or the identity."""
    _assert_close(small_tiles["blocks"], {"out", "total", "squares", "grad_x", "grad_w1", "grad_w2", "grad_gamma1",
                                          "grad_beta1", "grad_gamma2", "grad_beta2", "grad_wd", "grad_gammad",
                                          "grad_betad"})


@pytest.mark.slow
def test_the_benchmark_rows_check_the_fused_kernels_and_time_nothing_on_a_cpu(small_tiles):
    row = small_tiles["benchmark"]
    assert row["fused-unit_max_rel_error"] < 1e-5 and row["fused-add_max_rel_error"] < 1e-5
    assert not [key for key in row if key.endswith("_ms")]


@pytest.mark.slow
def test_the_gpu_configs_compute_the_same():
    """GPU autotune configs (128 x 64 x 64 tiles, split-K 4 for the weight gradient) on 64-channel groups."""
    errors = _interpreted({"units": [[1, 2, 64, 64, 7, 3, 2], [2, 2, 64, 64, 5, 3, 1]]}, config=1)["units"]
    _assert_close(errors, UNIT_RESULTS)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_update_as_batch_norm_does(momentum):
    from kernels.triton_fused import ChannelSums, update_running_stats

    g = torch.Generator().manual_seed(0)
    reference, fused = nn.BatchNorm2d(6, momentum=momentum), nn.BatchNorm2d(6, momentum=momentum)
    for step in range(3):
        x = torch.randn(3, 6, 5, 4, generator=g) * (step + 1) + step
        reference(x)  # training mode: folds the batch into its running statistics
        update_running_stats(fused, ChannelSums(x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), x.numel() // 6))
    torch.testing.assert_close(fused.running_mean, reference.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.running_var, reference.running_var, rtol=1e-5, atol=1e-6)
    assert int(fused.num_batches_tracked) == 3


def test_bad_input_is_refused_with_a_one_line_reason():
    """Refused before any kernel runs (a kernel given wrong sizes would read past its tensors)."""
    from kernels.triton_fused import ChannelSums, bn_add_relu, bn_relu_conv

    x = torch.randn(1, 24, 4, 4)
    with pytest.raises(ValueError, match="pass both bn and x_sums"):
        bn_relu_conv(x, torch.randn(24, 12, 3, 3), 2, 1, 1, bn=nn.BatchNorm2d(24))
    with pytest.raises(ValueError, match="multiples of 16"):
        bn_relu_conv(x, torch.randn(24, 12, 3, 3), 2, 1, 1)
    with pytest.raises(ValueError, match="32 data channels, but the weight asks for 2 groups of 32"):
        bn_relu_conv(torch.randn(1, 32, 4, 4), torch.randn(32, 32, 3, 3), 2, 1, 1)
    y = torch.randn(1, 32, 4, 4)
    sums = ChannelSums(y.sum((0, 2, 3)), (y * y).sum((0, 2, 3)), 16)
    with pytest.raises(ValueError, match="do not match"):
        bn_add_relu(y, sums, nn.BatchNorm2d(32), torch.randn(1, 32, 2, 2))
