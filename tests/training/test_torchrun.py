"""`torchrun --nproc-per-node 2 -m antimetric train --device cpu`: branch-parallel on two gloo processes, one run
folder written by process 0, progress printed once; launches that cannot work refused in one line before any data
is read."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

import antimetric
from antimetric.training.run_folder import BEST_FILE, CONFIG_FILE, EPOCHS_FILE, LAST_FILE

pytestmark = pytest.mark.slow  # torchrun starts two Python processes that import torch

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


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


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


@pytest.mark.parametrize("args, needle", [
    (("--ensemble-size", "1", "--device", "cpu"), "2 processes cannot share 1 branch"),
    (("--device", "cuda"), "needs a GPU each"),
    (("--device", "cpu", "--implementation", "reference"), "drop --implementation reference"),
])
def test_a_launch_that_cannot_work_is_one_line_before_any_data_is_read(tmp_path, args, needle):
    if "cuda" in args and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    missing = tmp_path / "no-data"  # never read: the launch is refused first
    proc = _torchrun("--data-name", "cub", "--data-path", str(missing), "--output-dir", str(tmp_path / "runs"), *args)
    assert proc.returncode != 0
    assert len(_errors(proc)) == 1 and needle in _errors(proc)[0], proc.stderr[-2000:]
    assert os.path.dirname(antimetric.__file__) not in proc.stderr  # no traceback of ours (torchrun prints its own)
    assert not (tmp_path / "runs").exists()
