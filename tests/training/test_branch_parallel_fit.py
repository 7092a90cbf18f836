"""A whole run on two processes (gloo, each holding the trunk and a block of the branches) against one process with
the same seed: the same losses and Recall@K per epoch, one run folder written by process 0, a best.pt that loads
on one device and embeds as the run did, and states that resume on another number of processes.

The tolerances are those of tests/training/test_branch_parallel.py, and why: the trunk's gradient is summed across
the processes in another order than one backward pass sums it (losses rtol 1e-5); Recall@K to 1e-9 because the
embeddings agree to float16 rounding, far below any gap between neighbours on these images. Every process runs
as many CPU threads as the one process: CPU kernels round differently on another number of threads, which Adam
magnifies as it does the summation order (measured: 7e-3 of the epoch loss with 1 thread against 2)."""
import csv
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import antimetric
from antimetric.training.config import RunConfig
from antimetric.training.loop import fit, resume_run
from antimetric.training.parallel.distributed import leave_process_group
from antimetric.training.run_folder import BEST_FILE, CONFIG_FILE, EPOCHS_FILE, FEATURES_FILE, LAST_FILE

pytestmark = pytest.mark.slow  # processes are spawned, each importing torch

SMALL = dict(data_name="cub", backbone="tiny", pretrained=False, ensemble_size=3, meta_class_size=4, image_size=32,
             batch_size=8, num_epochs=2, lr=3e-3, val_fraction=0.2, with_random=True, with_fc=True, seed=5,
             num_workers=0, device="cpu", precision="fp32")  # bf16 rounds each order differently
COMPARED = ("loss", "branch_accuracy", "val_recall_at_1", "test_recall_at_1", "test_map_at_r")


def _config(data_path, out, run_name):
    return RunConfig.from_flat({**SMALL, "data_path": str(data_path), "output_dir": str(out), "run_name": run_name})


def _rows(run_dir):
    return [{key: float(row[key]) for key in COMPARED} for row in csv.DictReader((run_dir / EPOCHS_FILE).open())]


def _join(rank: int, world: int, init_file: str) -> None:  # torch's threads as in the one process: CPU kernels
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def _fit_on(rank: int, world: int, init_file: str, data_path: str, out: str) -> None:
    _join(rank, world, init_file)
    seen = []

    def keep(result, save):
        seen.append(result.metrics["loss"])
        if result.epoch == 1:
            save(os.path.join(out, "state"))  # every process gathers; process 0 writes
    fit(_config(data_path, out, "two"), keep)
    torch.save(seen, os.path.join(out, f"seen{rank}.pt"))
    leave_process_group()


def _resume_on(rank: int, world: int, init_file: str, run_dir: str) -> None:
    _join(rank, world, init_file)
    resume_run(run_dir)
    leave_process_group()


@pytest.fixture(scope="module")
def runs(cub_path, tmp_path_factory):
    """(one process's run folder, two processes' output folder)."""
    one = fit(_config(cub_path, tmp_path_factory.mktemp("one"), "one")).run_dir
    out = tmp_path_factory.mktemp("two")
    mp.spawn(_fit_on, args=(2, str(out / "init"), str(cub_path), str(out)), nprocs=2, join=True)
    return one, out


def test_two_processes_train_and_evaluate_as_one(runs):
    one, out = runs
    two = out / "two"
    expected, found = _rows(one), _rows(two)
    assert len(found) == len(expected) == SMALL["num_epochs"]
    for got, want in zip(found, expected):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["branch_accuracy"] == pytest.approx(want["branch_accuracy"], abs=1e-6)
        for key in ("val_recall_at_1", "test_recall_at_1", "test_map_at_r"):
            assert got[key] == pytest.approx(want[key], abs=1e-9), key
    # every process was told the same results; only process 0 wrote, one run folder
    seen = [torch.load(out / f"seen{r}.pt", weights_only=True) for r in range(2)]
    assert seen[0] == seen[1] == [row["loss"] for row in found]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["state", "two"]
    assert {CONFIG_FILE, BEST_FILE, LAST_FILE, FEATURES_FILE} <= {p.name for p in two.iterdir()}


def test_a_branch_parallel_best_pt_loads_on_one_device_and_embeds_as_the_run_did(runs, cub_path):
    one, out = runs
    ensemble = antimetric.load(out / "two", device="cpu")
    saved = np.load(out / "two" / FEATURES_FILE)
    paths = [cub_path / "cub" / p for p in saved["query_paths"][:12]]
    features = ensemble.embed(paths, batch_size=5)
    assert features.shape == (12, SMALL["ensemble_size"] * SMALL["meta_class_size"])
    assert torch.allclose(features, torch.as_tensor(saved["query_features"][:12]).float(), atol=2e-3)
    # and as the one-process run's ensemble does, to the tolerance of the weights
    alone = antimetric.load(one, device="cpu").embed(paths, batch_size=5)
    assert torch.allclose(features, alone, atol=2e-3)


def test_a_state_of_two_processes_resumes_on_one(runs, cub_path, tmp_path):
    one, out = runs
    resumed = fit(_config(cub_path, tmp_path, "resumed"), resume_from=out / "state")
    assert _rows(resumed.run_dir)[-1]["loss"] == pytest.approx(_rows(one)[-1]["loss"], rel=1e-5)


def test_a_one_process_run_resumes_on_two(runs, cub_path, tmp_path):
    one, out = runs
    cut = fit(_config(cub_path, tmp_path, "cut"), lambda result, save: True)  # stops after epoch 1
    mp.spawn(_resume_on, args=(2, str(tmp_path / "init"), str(cut.run_dir)), nprocs=2, join=True)
    rows = _rows(cut.run_dir)
    assert len(rows) == 2
    assert rows[-1]["loss"] == pytest.approx(_rows(one)[-1]["loss"], rel=1e-5)
    assert rows[-1]["test_recall_at_1"] == pytest.approx(_rows(one)[-1]["test_recall_at_1"], abs=1e-9)
