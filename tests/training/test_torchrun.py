"""`torchrun --nproc-per-node 2 -m antimetric train --device cpu`: branch-parallel on two gloo processes, one run
folder written by process 0, progress printed once; launches that cannot work refused in one line before any data
is read. The tests that launch torchrun are slow (it starts two Python processes that import torch); a launch refused
before its processes form a group is checked as each of them runs it, in this process."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

import antimetric
from antimetric.training.parallel import distributed
from antimetric.training.run_folder import BEST_FILE, CONFIG_FILE, EPOCHS_FILE, LAST_FILE
from tests.fixtures.cli import run

SMALL = ("--data-name", "cub", "--backbone", "tiny", "--no-pretrained", "--ensemble-size", "3",
         "--meta-class-size", "4", "--image-size", "32", "--batch-size", "8", "--num-epochs", "2", "--lr", "3e-3")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(*args, processes: int = 2) -> subprocess.CompletedProcess:
    """torchrun in its own process group, killed whole if it overruns (its processes would outlive it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "antimetric", "train", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
def test_two_processes_train_into_one_run_folder(cub_path, tmp_path):
    proc = _torchrun(*SMALL, "--data-path", str(cub_path), "--output-dir", str(tmp_path / "runs"), "--device", "cpu",
                     "--run-name", "bp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["bp"]
    run_dir = tmp_path / "runs" / "bp"
    assert {CONFIG_FILE, EPOCHS_FILE, BEST_FILE, LAST_FILE} <= {p.name for p in run_dir.iterdir()}
    epochs = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1", "epoch 2"]  # printed by process 0 alone
    assert antimetric.load(run_dir, device="cpu").model.ensemble_size == 3  # the whole ensemble, not a block
    assert json.loads((run_dir / CONFIG_FILE).read_text())["ensemble_size"] == 3


def _as_launched(rank: int, args: tuple, monkeypatch: pytest.MonkeyPatch) -> subprocess.CompletedProcess:
    """`antimetric train ARGS` as process `rank` of `torchrun --nproc-per-node 2` runs it (torchrun's environment),
    in this process: where the launch is refused before any process group forms, two interpreters importing torch
    show nothing more. Reaching the group fails the test (joining it would wait for a process that never comes)."""
    for name, value in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank}.items():
        monkeypatch.setenv(name, str(value))
    return run("train", *args)


def _group_formed(device: str) -> None:
    raise AssertionError(f"the launch formed its process group (--device {device}): it was not refused before")


@pytest.mark.parametrize("args, needle", [
    (("--ensemble-size", "1", "--device", "cpu"), "2 processes cannot share 1 branch"),
    (("--device", "cuda"), "needs a GPU each"),
])
def test_a_launch_that_cannot_work_is_one_line_before_any_data_is_read(tmp_path, monkeypatch, args, needle):
    """Both processes of the launch refuse it; process 0 alone prints the line."""
    if "cuda" in args and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    monkeypatch.setattr(distributed, "join_process_group", _group_formed)
    missing = tmp_path / "no-data"  # never read: the launch is refused first
    args = ("--data-name", "cub", "--data-path", str(missing), "--output-dir", str(tmp_path / "runs"), *args)
    processes = [_as_launched(rank, args, monkeypatch) for rank in (0, 1)]  # a traceback of ours raises here
    assert all(proc.returncode != 0 for proc in processes)
    stderr = "".join(proc.stderr for proc in processes)
    assert len(_errors(stderr)) == 1 and needle in _errors(stderr)[0], stderr[-2000:]
    assert os.path.dirname(antimetric.__file__) not in stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_reference_run_on_two_processes_is_one_line_before_any_data_is_read(tmp_path):
    """Refused once the launched processes have formed their group, whose size the check reads: the real launch."""
    missing = tmp_path / "no-data"  # never read: the launch is refused first
    proc = _torchrun("--data-name", "cub", "--data-path", str(missing), "--output-dir", str(tmp_path / "runs"),
                     "--device", "cpu", "--implementation", "reference")
    assert proc.returncode != 0
    errors = _errors(proc.stderr)
    assert len(errors) == 1 and "drop --implementation reference" in errors[0], proc.stderr[-2000:]
    assert os.path.dirname(antimetric.__file__) not in proc.stderr  # no traceback of ours (torchrun prints its own)
    assert not (tmp_path / "runs").exists()
