"""Branch-parallel training across processes: the process group, the checks before it forms, and what crosses it.

A run is branch-parallel when torch.distributed is initialised with more than one process: by `torchrun`
(join_process_group, from the CLI) or by Ray Train, whose workers are in a group before our code runs. Process r
holds the trunk and the r-th contiguous block of branches (model/convert.py's branch_blocks: one slice of every
batched tensor, where every N-th branch would need a gather per tensor). Everything else a run does is the same on
every process (the same data, in the same order, from the same seeds), so only what differs crosses the group: the
trunk's gradients each step (training/step.py), the blocks' embeddings at evaluation and their weights and optimiser
state at a checkpoint, gathered on process 0, which alone writes the run folder.

Objects (states, embeddings) cross on the CPU through a gloo group, even where training uses NCCL: the gathered
whole ensemble would otherwise pass through the GPU memory of process 0.
"""
from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from antimetric.errors import ConfigError

T = TypeVar("T")
_objects_group: Any = None  # the gloo group objects cross in (None: the default group is gloo)
_TIMEOUT = datetime.timedelta(minutes=30)  # a collective waits this long for a slow process (evaluation, a save)


def group_size() -> int:
    """Processes in the run's group: 1 unless torch.distributed is initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's place in the group (0 without one): process 0 writes, prints and records."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_branch_parallel() -> bool:
    return group_size() > 1


def launched_size() -> int:
    """Processes a launcher (torchrun) started for this run, from its environment; 1 without one."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes; "
                          "start the run with torchrun --nproc-per-node N") from None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def check_launch(ensemble_size: int, device: str, processes: int | None = None) -> None:
    """Refuse in one line, before any process group forms or data is read, a launch that cannot work: more
    processes than branches, or CUDA (NCCL) asked for with fewer GPUs on this host than processes on it."""
    processes = launched_size() if processes is None else processes
    if processes > ensemble_size:
        raise ConfigError(f"{processes} processes cannot share {ensemble_size} branch{'es' if ensemble_size > 1 else ''}: "
                          "each needs at least one; "
                          f"use --nproc-per-node {ensemble_size} or fewer, or raise --ensemble-size")
    if not device.startswith("cuda") and not (device == "auto" and torch.cuda.is_available()):
        return
    on_host = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < on_host:
        fewer = f" or --nproc-per-node {gpus}" if gpus else ""
        raise ConfigError(f"--device {device} with {on_host} processes on this host needs a GPU each (NCCL), but "
                          f"torch sees {gpus}; use --device cpu (gloo){fewer}")


def check_group(ensemble_size: int, implementation: str) -> None:
    """Refuse in one line an ensemble the group's processes cannot share (before its run folder is made)."""
    if group_size() == 1:
        return
    if implementation != "batched":
        raise ConfigError(f"a run on {group_size()} processes trains the batched network (a block of branches per "
                          f"process); drop --implementation {implementation} or run on one process")
    check_launch(ensemble_size, "cpu", group_size())


def join_process_group(device: str) -> torch.device | None:
    """Form the group torchrun launched this process into (NCCL with one GPU per process, gloo on the CPU) and
    return this process's device; None when there is nothing to join (one process, or a group formed already)."""
    if launched_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return None
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run on one process")
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        own = torch.device("cuda", local_rank())
        torch.cuda.set_device(own)
        dist.init_process_group("nccl", timeout=_TIMEOUT, device_id=own)
        return own
    dist.init_process_group("gloo", timeout=_TIMEOUT)
    return torch.device("cpu")


def leave_process_group() -> None:
    """Destroy the group join_process_group formed (torchrun's processes exit cleanly then)."""
    global _objects_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _objects_group = None


def _objects() -> Any:
    """The gloo group objects cross in; made on first use, which every process reaches at the same point."""
    global _objects_group
    if dist.get_backend() == "gloo":
        return None
    if _objects_group is None:
        _objects_group = dist.new_group(backend="gloo", timeout=_TIMEOUT)
    return _objects_group


def broadcast(value: T) -> T:
    """Process 0's `value`, on every process."""
    if not is_branch_parallel():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_objects())
    return box[0]


def on_first(action: Callable[[], T]) -> T:
    """`action` run on process 0 alone, its result (or the error it raised) on every process: a run folder that
    cannot be made stops every process with the same one line, not process 0 alone while the others wait."""
    outcome: tuple[Any, BaseException | None] = (None, None)
    if rank() == 0:
        try:
            outcome = (action(), None)
        except Exception as error:  # every process raises it below
            outcome = (None, error)
    value, error = broadcast(outcome)
    if error is not None:
        raise error
    return value


def gather(value: T) -> list[T] | None:
    """Every process's `value`, in process order, on process 0; None on the others."""
    if not is_branch_parallel():
        return [value]
    found: list[Any] | None = [None] * group_size() if rank() == 0 else None
    dist.gather_object(value, found, dst=0, group=_objects())
    return found


def every(value: T) -> list[T]:
    """Every process's `value`, in process order, on every process."""
    if not is_branch_parallel():
        return [value]
    found: list[Any] = [None] * group_size()
    dist.all_gather_object(found, value, group=_objects())
    return found


def check_shared_folder(folder: Path) -> None:
    """Refuse in one line processes on several hosts that do not share `folder`: a resumed run reads its state
    there on every process. Process 0 leaves a token file, every process looks for it."""
    if not is_branch_parallel() or len(set(every(socket.gethostname()))) == 1:
        return
    token = Path(folder) / f".antimetric-shared-{os.environ.get('MASTER_PORT', 'run')}"
    if rank() == 0:
        token.write_text("shared\n")
    dist.barrier(group=_objects())
    seen = every(token.is_file())
    dist.barrier(group=_objects())
    if rank() == 0:
        token.unlink(missing_ok=True)
    if not all(seen):
        hosts = sorted({host for host, ok in zip(every(socket.gethostname()), seen) if not ok})
        raise ConfigError(f"processes on {', '.join(hosts)} cannot see {folder}: processes on several hosts need "
                          "an --output-dir all of them share (a network file system)")
