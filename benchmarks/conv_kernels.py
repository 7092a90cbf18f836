"""Time every branch convolution of a configuration, one at a time, by how it is computed.

    python -m benchmarks.conv_kernels --device cuda --json                 # the seed configuration
    python -m benchmarks.conv_kernels --device cpu --backbone tiny --ensemble-size 4 --image-size 32

Where does a training step go? The whole-step profile (benchmarks.profile_step) shows cuDNN copying
channel slices out for our grouped convolutions; this script times each distinct branch
convolution of the batched network (shapes taken from a real forward pass) at one or more batch
sizes, forward + backward and forward alone, computed as:

  grouped-cl    one grouped convolution, channels-last (the default on CUDA)
  grouped-nchw  one grouped convolution, NCHW
  per-branch    one convolution per branch on the same weights
  triton        CUDA (or Triton's CPU interpreter, TRITON_INTERPRET=1): antimetric's implicit-GEMM Triton kernels (kernels/triton_kernels.py),
                forward, input and weight gradients; with its largest relative error against grouped-cl
  tap-gemm      stride-1 3x3 only, forward only: the branch as the batch of 9 accumulated GEMMs
                (torch.baddbmm) over shifted views of a zero-padded, branch-major activation;
                no im2col copy. Tells whether a GEMM formulation can beat cuDNN's kernels.

Timed only when named in --strategies (their autotuning compiles for minutes on a GPU):
  fused-unit    BatchNorm (training mode) + ReLU + this convolution as one unit on the fused Triton
                kernels (kernels/triton_fused.py: BN-apply + ReLU on load, the output's
                batch statistics in the epilogue, split-K weight gradient), against torch's BatchNorm,
                ReLU and cuDNN (unfused-unit); with its largest relative error (output, statistics,
                every gradient). Every grouped convolution is timed as the unit that conv2 of a block is.
  fused-add     a block's end on this convolution's output, relu(BatchNorm(y) + identity), on one
                elementwise Triton kernel forward and two backward, against torch (unfused-add).
                On a CPU the fused rows report their errors under TRITON_INTERPRET=1, and no times.

Needs torch and torchvision only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

from antimetric.model.batched import BranchConv2d
from antimetric.model.ensemble import build_model
from benchmarks.common import add_configuration_arguments, add_device_argument, environment, model_config, sync


def branch_convolutions(args: argparse.Namespace) -> list[dict]:
    """The distinct branch convolutions of the batched network with their input shapes at batch 1."""
    with torch.device("meta"):
        model = build_model(model_config(args)).eval()
        images = torch.empty(1, 3, args.image_size, args.image_size)
    found: dict[tuple, dict] = {}

    def record(name):
        def hook(module, inputs, output):
            conv = module
            key = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.groups,
                   tuple(inputs[0].shape[1:]))
            entry = found.setdefault(key, {"names": [], "in_channels": conv.in_channels,
                                           "out_channels": conv.out_channels, "kernel": conv.kernel_size[0],
                                           "stride": conv.stride[0], "padding": conv.padding[0],
                                           "groups": conv.groups, "branches": conv.branches,
                                           "input_chw": list(inputs[0].shape[1:])})
            entry["names"].append(name)
        return hook

    for name, module in model.branches.named_modules():
        if isinstance(module, BranchConv2d):
            module.register_forward_hook(record(name))
    with torch.no_grad():
        model(images)
    return list(found.values())


def _time(fn, device: torch.device, reps: int) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e3


def tap_gemm_forward(x_padded: torch.Tensor, weight_taps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """3x3 stride-1 convolution of every branch as 9 accumulated batched GEMMs, without im2col.

    x_padded: (g, n*(h+2)*(w+2) + tail, c) branch-major, channels-last, zero-padded images laid end
    to end; the output is computed on the padded grid (its border rows are discarded), so the input
    of tap (dy, dx) is the same buffer shifted by dy*(w+2)+dx rows: a view, not a copy.
    weight_taps: (9, g, c, c_out). Returns (g, n*(h+2)*(w+2), c_out) on the padded grid.
    """
    rows = x_padded.shape[1] - 2 * (width + 2) - 2
    out = None
    for tap in range(9):
        dy, dx = divmod(tap, 3)
        shift = dy * (width + 2) + dx
        a = x_padded[:, shift:shift + rows]
        out = torch.bmm(a, weight_taps[tap]) if out is None else torch.baddbmm(out, a, weight_taps[tap])
    return out


STRATEGIES = ("grouped-cl", "grouped-nchw", "per-branch", "triton", "tap-gemm")
FUSED_STRATEGIES = ("fused-unit", "fused-add")  # not in the default list: minutes of autotuning on a GPU


def _max_error(reference: Callable, candidate: Callable, inputs: list[torch.Tensor],
               params: list[torch.Tensor]) -> float:
    """Largest relative difference (norm) of the output and of every input's and parameter's gradient
    from the reference's (grouped-cl for triton)."""
    results = []
    for fn in (reference, candidate):
        leaves = [t.detach().clone(memory_format=torch.channels_last).requires_grad_(True) for t in inputs]
        for p in params:
            p.grad = None
        out = fn(*leaves)
        projection = torch.randn(out.shape, generator=torch.Generator(out.device).manual_seed(0), device=out.device)
        (out.float() * projection.float()).sum().backward()
        results.append([out.detach().float(), *(t.grad.float() for t in leaves), *(p.grad.float() for p in params)])
    for p in params:
        p.grad = None
    return max(((a - b).norm() / b.norm()).item() for a, b in zip(results[1], results[0]))


def _time_training(name: str, fn: Callable, inputs: list[torch.Tensor], params: list[torch.Tensor],
                   device: torch.device, reps: int) -> dict[str, float]:
    leaves = [t.detach().clone(memory_format=torch.channels_last).requires_grad_(True) for t in inputs]
    with torch.no_grad():
        grad = torch.ones_like(fn(*leaves))
        forward_ms = _time(lambda: fn(*leaves), device, reps)

    def train_pass():
        for t in (*leaves, *params):
            t.grad = None
        fn(*leaves).backward(grad)

    return {f"{name}_forward_ms": forward_ms, f"{name}_train_ms": _time(train_pass, device, reps)}


def measure_fused(conv: dict, batch: int, device: torch.device, dtype: torch.dtype, reps: int,
                  timed: tuple[str, ...]) -> dict:
    """The fused-unit and fused-add rows of the module docstring: errors, and times on CUDA only (the
    interpreter's say nothing of a GPU's)."""
    from kernels import triton_fused  # Triton only where these rows run

    (c_in, h, w), c_out, groups = conv["input_chw"], conv["out_channels"], conv["groups"]
    stride, pad, k = conv["stride"], conv["padding"], conv["kernel"]
    gen = torch.Generator(device).manual_seed(0)

    def data(*shape):
        return torch.randn(*shape, device=device, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)

    def batch_norm(channels):  # float32 parameters, as under autocast
        bn = torch.nn.BatchNorm2d(channels).to(device)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5, generator=gen)
            bn.bias.uniform_(-0.5, 0.5, generator=gen)
        return bn

    def sums(t):  # what the unit making t sums in its epilogue
        t = t.detach().float()
        return triton_fused.ChannelSums(t.sum((0, 2, 3)), (t * t).sum((0, 2, 3)), t.numel() // t.shape[1])

    def torch_bn(t, bn):  # training mode; neither path updates running statistics
        return F.batch_norm(t, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)

    x, bn = data(batch, c_in, h, w), batch_norm(c_in)
    weight = (torch.randn(c_out, c_in // groups, k, k, device=device, generator=gen) * (groups / c_in / k / k) ** 0.5
              ).to(dtype).requires_grad_(True)
    x_sums = sums(x)
    units = {"unfused-unit": lambda x: F.conv2d(F.relu(torch_bn(x, bn)), weight, None, stride, pad, 1, groups),
             "fused-unit": lambda x: triton_fused.bn_relu_conv(x, weight, groups, stride, pad, bn, x_sums)[0]}
    with torch.no_grad():
        y = units["unfused-unit"](x)
        fused_sums = triton_fused.bn_relu_conv(x, weight, groups, stride, pad, bn, x_sums)[1]
    unit_params = [weight, bn.weight, bn.bias]
    statistics_error = max(((a - b).norm() / b.norm()).item() for a, b in zip(fused_sums[:2], sums(y)[:2]))
    result = {"fused-unit_max_rel_error": max(statistics_error, _max_error(*units.values(), [x], unit_params))}
    bn_end, residual, y_sums = batch_norm(c_out), data(*y.shape), sums(y)  # a block's end on this output
    ends = {"unfused-add": lambda y, r: F.relu(torch_bn(y, bn_end) + r),
            "fused-add": lambda y, r: triton_fused.bn_add_relu(y, y_sums, bn_end, r)}
    end_params = [bn_end.weight, bn_end.bias]
    result["fused-add_max_rel_error"] = _max_error(*ends.values(), [y, residual], end_params)
    for name, fn in units.items() if device.type == "cuda" and "fused-unit" in timed else ():
        result.update(_time_training(name, fn, [x], unit_params, device, reps))
    for name, fn in ends.items() if device.type == "cuda" and "fused-add" in timed else ():
        result.update(_time_training(name, fn, [y, residual], end_params, device, reps))
    return result


def measure_conv(conv: dict, batch: int, device: torch.device, dtype: torch.dtype, reps: int,
                 timed: tuple[str, ...] = STRATEGIES) -> dict:
    c_in, h, w = conv["input_chw"]
    g = conv["branches"]
    weight = torch.randn(conv["out_channels"], c_in // conv["groups"], conv["kernel"], conv["kernel"], device=device,
                         dtype=dtype, requires_grad=True)
    base = torch.randn(batch, c_in, h, w, device=device, dtype=dtype)
    kwargs = dict(stride=conv["stride"], padding=conv["padding"], groups=conv["groups"])
    result: dict[str, float] = {}

    def grouped(x):
        return F.conv2d(x, weight, None, **kwargs)

    def per_branch(x):
        per = conv["groups"] // g
        return torch.cat([F.conv2d(xb.contiguous(memory_format=torch.channels_last), wb, None, conv["stride"],
                                   conv["padding"], 1, per)
                          for xb, wb in zip(x.chunk(g, 1), weight.chunk(g, 0))], 1)

    def triton(x):
        from kernels.triton_kernels import grouped_conv2d

        return grouped_conv2d(x, weight, conv["groups"], conv["stride"], conv["padding"])

    strategies = {"grouped-cl": (grouped, torch.channels_last), "grouped-nchw": (grouped, torch.contiguous_format)}
    if g > 1:
        strategies["per-branch"] = (per_branch, torch.channels_last)
    group_in, group_out = c_in // conv["groups"], conv["out_channels"] // conv["groups"]
    triton_runs = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"  # the interpreter: CPU checks
    if g > 1 and triton_runs and group_in % 16 == 0 and group_out % 16 == 0:
        try:  # a kernel that fails here must not take the cuDNN rows with it
            result["triton_max_rel_error"] = _max_error(grouped, triton, [base], [weight])
            strategies["triton"] = (triton, torch.channels_last)
        except Exception as exc:
            result["triton_failure"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    for name, (fn, fmt) in strategies.items():
        if name not in timed:
            continue
        x = base.detach().clone(memory_format=fmt).requires_grad_(True)  # never base itself: it stays gradient-free
        grad = torch.ones_like(fn(x))

        def train_pass(fn=fn, x=x, grad=grad):
            x.grad = weight.grad = None
            fn(x).backward(grad)

        with torch.no_grad():
            result[f"{name}_forward_ms"] = _time(lambda fn=fn, x=x: fn(x), device, reps)
        result[f"{name}_train_ms"] = _time(train_pass, device, reps)
    if "tap-gemm" in timed and g > 1 and conv["kernel"] == 3 and conv["stride"] == 1 and conv["groups"] == g:
        c = c_in // g
        padded = F.pad(base.view(batch, g, c, h, w).permute(1, 0, 3, 4, 2), (0, 0, 1, 1, 1, 1))  # (g, n, h+2, w+2, c)
        flat = F.pad(padded.reshape(g, -1, c), (0, 0, 0, 2 * (w + 2) + 2))
        taps = weight.detach().view(g, -1, c, 3, 3).permute(3, 4, 0, 2, 1).reshape(9, g, c, -1).contiguous()
        with torch.no_grad():
            out = tap_gemm_forward(flat, taps, h, w).view(g, batch, h + 2, w + 2, -1)[:, :, :h, :w]
            expected = grouped(base).view(batch, g, -1, h, w).permute(1, 0, 3, 4, 2)
            result["tap-gemm_max_rel_error"] = ((out - expected).abs().max() / expected.abs().max()).item()
            result["tap-gemm_forward_ms"] = _time(lambda: tap_gemm_forward(flat, taps, h, w), device, reps)
    if set(FUSED_STRATEGIES) & set(timed) and g > 1 and group_in % 16 == 0 and group_out % 16 == 0:
        if not triton_runs:
            result["fused_skipped"] = "needs CUDA, or Triton's interpreter (TRITON_INTERPRET=1)"
        else:
            try:  # as for triton: a failing kernel must not take the other rows with it
                result.update(measure_fused(conv, batch, device, dtype, reps, timed))
            except Exception as exc:
                result["fused_failure"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    out_elems = batch * conv["out_channels"] * ((h + 2 * conv["padding"] - conv["kernel"]) // conv["stride"] + 1) ** 2
    flop_forward = 2 * out_elems * (c_in // conv["groups"]) * conv["kernel"] ** 2
    result["forward_gflop"] = flop_forward / 1e9
    return result


def run(args: argparse.Namespace, result: dict | None = None, on_row: Callable[[], None] | None = None) -> dict:
    """Fills `result` (a new dict by default) in place, calling on_row() after each row."""
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result = {} if result is None else result
    result.update(**environment(device), dtype=str(dtype), rows=[])
    rows = result["rows"]
    for conv in branch_convolutions(args):
        for batch in args.batches:
            row = {**conv, "batch": batch}
            try:
                row.update(measure_conv(conv, batch, device, dtype, args.reps, tuple(args.strategies)))
            except torch.cuda.OutOfMemoryError as exc:
                row["error"] = f"out of memory: {str(exc)[:100]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            if on_row is not None:
                on_row()
            if not args.json:
                _print_row(row)
    return result


def _print_row(row: dict) -> None:
    timings = " ".join(f"{k[:-3]}={v:.2f}" for k, v in row.items() if k.endswith("_ms"))
    timings += "".join(f" {k}={v:.1e}" for k, v in row.items() if k.endswith("_error"))
    timings += f" TRITON FAILED: {row['triton_failure']}" if "triton_failure" in row else ""
    timings += f" FUSED FAILED: {row['fused_failure']}" if "fused_failure" in row else ""
    timings += f" fused rows skipped: {row['fused_skipped']}" if "fused_skipped" in row else ""
    print(f"{row['names'][0]:22s} x{len(row['names'])} {row['in_channels']}->{row['out_channels']} "
          f"k{row['kernel']} s{row['stride']} g{row['groups']} in {row['input_chw'][1]}px b{row['batch']}: "
          f"{timings} ({row['forward_gflop']:.0f} GFLOP fwd)", flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_configuration_arguments(p, batch_size=False)
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES + FUSED_STRATEGIES, default=list(STRATEGIES),
                   help="the ones to time (Triton's error against torch is checked whenever it can run; the fused "
                        "rows' only when named)")
    add_device_argument(p)
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
