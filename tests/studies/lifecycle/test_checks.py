"""What a study checks before it reads data or starts Ray, and where a local Ray listens."""
import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from antimetric.base.cpus import available_cpus
from antimetric.errors import ConfigError
from studies.search import main, parse_args
from tests.fixtures.folders import read_only_folder
from tests.fixtures.memory import set_available_memory
from tests.fixtures.studies import RAY_ENV, study_command


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD_OPTIONS = [
    (["--num-samples", "0"], "--num-samples"),
    (["--num-samples", "-1"], "--num-samples"),
    (["--max-epochs", "0"], "--max-epochs"),
    (["--max-concurrent", "-1"], "--max-concurrent"),
    (["--cpus-per-trial", "-1"], "--cpus-per-trial"),
    (["--cpus-per-trial", "100000"], "--cpus-per-trial"),  # more than this machine has: would wait for ever
    (["--seed", "-1"], "--seed"),
    (["--address", "127.0.0.1:{port}"], "--address"),
    (["--address", "no-port"], "--address"),
    (["--tracking-uri", "bogus://x"], "--tracking-uri"),
    (["--tracking-uri", "http://127.0.0.1:{port}"], "--tracking-uri"),  # MLflow would retry for minutes
    (["--storage-path", "{file}"], "--storage-path"),
    (["--storage-path", "{file}/ray"], "--storage-path"),
    (["--experiment", "a/b"], "--experiment"),
    (["--experiment", ".."], "--experiment"),
    (["--experiment", ""], "--experiment"),
    (["--bogus"], "--bogus"),
    pytest.param(["--gpus-per-trial", "1"], "--gpus-per-trial",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    (["--storage-path", "{read_only}"], "--storage-path"),
    pytest.param(["--gpus-per-trial", "2"], "--gpus-per-trial",  # two workers with a GPU each
                 marks=pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has 2 GPUs")),
    # more workers than CPUs here (in ensembles that have as many branches)
    (["--workers-per-trial", "{too_many}", "--ensemble-size", "{too_many}"], "--workers-per-trial"),
]


@pytest.mark.parametrize("options, named", BAD_OPTIONS)
def test_a_bad_option_is_one_line(options, named, demo_data_path, study_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)  # main() sets it; gone again after the test
    a_file, read_only = tmp_path / "a-file", tmp_path / "read-only"
    a_file.write_text("")
    unwritable = read_only_folder(read_only) if "{read_only}" in options else contextlib.nullcontext()
    options = [o.format(port=_closed_port(), file=a_file, read_only=read_only, too_many=available_cpus() + 1)
               for o in options]
    argv = study_command(demo_data_path, study_dirs, *options)[3:]  # after `python -m studies.search`
    with unwritable:
        try:
            status = main(argv)
        except SystemExit as exit:  # argparse
            status = exit.code
    err = capsys.readouterr().err
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], err
    assert not (study_dirs["storage"] / "t").exists()  # nothing of a study started


@pytest.mark.slow
def test_a_usage_error_is_one_line_from_the_command_line(demo_data_path, study_dirs):
    proc = subprocess.run(study_command(demo_data_path, study_dirs, "--num-samples", "-1"), capture_output=True,
                          text=True, timeout=120, env={**os.environ, **RAY_ENV})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: python -m studies.search: argument --num-samples: '-1' is not a whole number of 1 or more (see --help)"]


def test_a_study_refuses_a_space_the_cpus_memory_cannot_train(monkeypatch, tmp_path):
    """The built-in CUB space holds ResNet-18 x 48 sharing at maxpool, about 17 GiB to train on a CPU."""
    set_available_memory(monkeypatch, tmp_path, 9)
    with pytest.raises(ConfigError, match="the cpu has 9.0 GiB available"):
        parse_args(["cub"])


def test_default_cpus_per_trial_fit_this_machine(monkeypatch, tmp_path):
    set_available_memory(monkeypatch, tmp_path, 64)  # the space's ensembles fit: this test is about CPUs
    assert parse_args(["cub"]).cpus_per_trial == min(8, available_cpus())
    assert parse_args(["cub", "--address", "10.0.0.5:6379"]).cpus_per_trial == 8  # a cluster's nodes may be larger
    # as many trials at once as the machine's CPUs hold (GPUs too, where trials ask for them)
    assert parse_args(["cub", "--cpus-per-trial", "1", "--gpus-per-trial", "0"]).max_concurrent == available_cpus()
    assert parse_args(["cub", "--max-concurrent", "1", "--cpus-per-trial", "1"]).max_concurrent == 1


LIST_LISTENING = """
import json, time
from studies.search import parse_args
from studies.lifecycle.study import start_ray
import psutil, ray  # psutil comes with Ray
start_ray(parse_args(["demo"]))
time.sleep(2)  # Ray's first idle workers
listening = []
for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
    try:
        listening += [[process.name(), c.laddr.ip] for c in process.net_connections("inet") if c.status == "LISTEN"]
    except psutil.Error:
        pass
ray.shutdown()
print(json.dumps(listening))
"""


@pytest.mark.slow
def test_a_local_study_listens_on_loopback_only():
    """Run directly, not through make: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is not set."""
    env = {**os.environ, **RAY_ENV}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    proc = subprocess.run([sys.executable, "-c", LIST_LISTENING], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listening = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {name for name, _ in listening} >= {"gcs_server", "raylet"}, listening
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for _, ip in listening), listening
