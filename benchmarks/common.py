"""What the benchmarks share: the seed configuration, the device, the record of a run (its environment
and torch's settings), and running one measurement in a process of its own."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from antimetric.base.atomic import atomic_open
from antimetric.data.table import TABLE
from antimetric.model.device_plan import cpuinfo_value
from antimetric.model.settings import ModelConfig
from antimetric.training.config import TrainConfig


@dataclass(frozen=True)
class SeedConfiguration:
    """The ensemble the seed's README benchmarks on CUB200 and CARS196, which every speed figure uses."""

    backbone: str
    share_type: str
    ensemble_size: int
    meta_class_size: int
    image_size: int
    batch_size: int


_CUB = TABLE["cub"].training
# ResNet18 x 48 branches sharing layer1, 12 meta-classes, 256 px, batch 32: read from the core's
# dataset table and option defaults, so that the benchmarks measure what training runs.
SEED = SeedConfiguration(backbone=_CUB.backbone, share_type=ModelConfig().share_type,
                         ensemble_size=_CUB.ensemble_size, meta_class_size=_CUB.meta_class_size,
                         image_size=_CUB.image_size, batch_size=TrainConfig().batch_size)


def add_configuration_arguments(p: argparse.ArgumentParser, *, batch_size: bool = True) -> None:
    """The ensemble to measure (and its training batch size); the defaults are the seed configuration."""
    p.add_argument("--backbone", default=SEED.backbone)
    p.add_argument("--share-type", default=SEED.share_type)
    p.add_argument("--ensemble-size", type=int, default=SEED.ensemble_size)
    p.add_argument("--meta-class-size", type=int, default=SEED.meta_class_size)
    p.add_argument("--image-size", type=int, default=SEED.image_size)
    if batch_size:
        p.add_argument("--batch-size", type=int, default=SEED.batch_size)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device())


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The ensemble of add_configuration_arguments' options, as every figure in RESULTS.md measured
    it: random weights and a linear head per branch."""
    return ModelConfig(backbone=args.backbone, share_type=args.share_type, ensemble_size=args.ensemble_size,
                       meta_class_size=args.meta_class_size, with_fc=True, pretrained=False)


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that a clock read after it times them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def environment(device: torch.device) -> dict[str, str | int | None]:
    """What a result was measured on: the device, and the versions of everything between the code and it
    (None where a part is absent, such as CUDA and its driver on a CPU machine)."""
    return {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "driver": nvidia_driver_version(),
            "triton": _installed_version("triton", "pytorch-triton"), "python": platform.python_version(),
            "cpu": cpu_model()}


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver's version as nvidia-smi reports it; None without nvidia-smi or when it fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.split()
    return lines[0] if proc.returncode == 0 and lines else None


def _installed_version(*distributions: str) -> str | None:
    for name in distributions:  # pytorch-triton: the name of Triton in torch's nightly wheels
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str | None:
    """The CPU's model name (Linux's /proc/cpuinfo, else what the platform module knows)."""
    return cpuinfo_value("model name") or platform.processor() or None


def torch_settings() -> dict[str, bool | int | None]:
    """The process-wide settings that change what a measurement measures, read back from torch now (not
    from the plan that asked for them), with the id of the process that holds them."""
    cudnn = torch.backends.cudnn
    try:
        benchmark_limit = cudnn.benchmark_limit  # torch >= 2.0 with cuDNN; None on builds without
    except (AttributeError, RuntimeError):
        benchmark_limit = None
    return {"cudnn_benchmark": cudnn.benchmark, "cudnn_benchmark_limit": benchmark_limit,
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_allow_tf32": cudnn.allow_tf32,
            "torch_threads": torch.get_num_threads(), "pid": os.getpid()}


@dataclass
class ChildRun:
    """How a child process ended: the JSON it wrote, or why there is none."""

    result: dict[str, Any] | None
    error: str | None  # None when result holds what the child wrote
    seconds: float  # wall time, start-up included
    output: str  # its stdout and stderr, interleaved


def run_child(argv: list[str], result_path: Path, timeout_s: float, cwd: Path | None = None) -> ChildRun:
    """Run argv as a process of its own and read the JSON it writes to result_path (with write_result).

    A child that crashes, is killed (the kernel's out-of-memory killer sends SIGKILL) or outlives
    timeout_s is reported in ChildRun.error, never raised. The child leads a process group of its own,
    and the whole group is killed when it ends, so that no worker it started (torch.compile's, a
    DataLoader's) lives on holding memory."""
    start = time.monotonic()
    log_path = Path(result_path).with_suffix(".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:  # on an interrupt of this process too
            _kill_group(proc.pid)
            proc.wait()
    seconds = time.monotonic() - start
    output = log_path.read_text(errors="replace")
    if returncode is None:
        return ChildRun(None, f"timed out after {timeout_s:.0f} s", seconds, output)
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (as the out-of-memory killer does)" if -returncode == signal.SIGKILL else ""
        return ChildRun(None, f"killed by {name}{hint}", seconds, output)
    last_line = output.strip().splitlines()[-1:] or [""]
    if returncode > 0:
        return ChildRun(None, f"exited with status {returncode}: {last_line[0][:300]}", seconds, output)
    try:
        return ChildRun(json.loads(Path(result_path).read_text()), None, seconds, output)
    except (OSError, ValueError) as exc:
        return ChildRun(None, f"exited without a readable result ({type(exc).__name__})", seconds, output)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group has already ended
        pass


def write_result(path: Path, result: dict[str, Any]) -> None:
    """A JSON result file, written whole or not at all (values JSON lacks, such as paths, as text)."""
    with atomic_open(Path(path), "w") as handle:
        json.dump(result, handle, indent=1, default=str)
