"""A short real training run on the demo dataset."""
import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from antimetric.evaluation.embed import Embeddings
from antimetric.evaluation.grid import CORRECT_COLOUR, INCORRECT_COLOUR, GridLayout, grid_rows_from_embeddings
from antimetric.model.device_plan import plan_for, resolve_precision
from antimetric.training.config import RunConfig, resolve
from antimetric.training.decisions import DECISIONS_KEY
from antimetric.training.loop import (
    BEST_FILE,
    CONFIG_FILE,
    EPOCHS_FILE,
    FEATURES_FILE,
    LAST_FILE,
    META_IDS_FILE,
    RETRIEVALS_FILE,
    fit,
    start_checkpointing_after_oom,
)
from antimetric.training.session import build_session

pytestmark = pytest.mark.slow  # each test trains (the module's fixture two runs, 4 epochs of 8 branches)


def _config(data_path, tmp_path, **overrides):
    values = dict(data_name="demo", data_path=str(data_path), output_dir=str(tmp_path), ensemble_size=8,
                  meta_class_size=4, num_epochs=4, lr=3e-3, val_fraction=0.2, run_name="run", seed=0)
    values.update(overrides)
    return RunConfig.from_flat(values)


@pytest.fixture(scope="module")
def trained(demo_data_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    untrained = fit(_config(demo_data_path, out, train=False, run_name="untrained"))
    epochs = []
    result = fit(_config(demo_data_path, out), lambda r, save: epochs.append(r))
    return untrained, result, epochs


def test_training_raises_recall(trained):
    untrained, result, _ = trained
    before, after = untrained.best_metrics["test_recall_at_1"], result.best_metrics["test_recall_at_1"]
    assert after > before + 0.08, (before, after)
    assert result.best_metrics["val_recall_at_1"] > untrained.best_metrics["val_recall_at_1"]


def test_every_epoch_reports_all_metrics(trained):
    _, result, epochs = trained
    assert [r.epoch for r in epochs] == [1, 2, 3, 4]
    first, last = epochs[0].metrics, epochs[-1].metrics
    assert last["loss"] < first["loss"] and last["branch_accuracy"] > first["branch_accuracy"]
    for key in ("images_per_s", "epoch_seconds", "test_recall_at_8", "test_map_at_r", "val_recall_at_1"):
        assert np.isfinite(last[key]), key
    assert epochs[-1].metrics["lr"] < epochs[0].metrics["lr"]  # MultiStepLR at 50% and 70%
    assert result.best_epoch == max(epochs, key=lambda r: r.metrics["val_recall_at_1"]).epoch


def test_run_folder(trained):
    _, result, epochs = trained
    run = result.run_dir
    config = json.loads((run / CONFIG_FILE).read_text())
    assert config["ensemble_size"] == 8 and config["backbone"] == "tiny"
    decided = config.pop(DECISIONS_KEY)  # what ran, beside what was asked
    assert decided["device"] == "cpu" and decided["implementation"] == "batched" and decided["num_workers"] >= 0
    assert decided["precision"] == resolve_precision("auto", torch.device("cpu"))
    assert (config["device"], config["precision"], config["num_workers"]) == ("auto", "auto", None)
    assert json.loads(json.dumps(RunConfig.from_flat(config).to_flat())) == config
    assert len(json.loads((run / META_IDS_FILE).read_text())["ids"]) == 8
    rows = list(csv.DictReader((run / EPOCHS_FILE).open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    best = torch.load(run / BEST_FILE, weights_only=True)
    assert best["epoch"] == result.best_epoch
    last = torch.load(run / LAST_FILE, weights_only=True)
    assert last["epoch"] == 4 and "optimizer" in last
    features = np.load(run / FEATURES_FILE, allow_pickle=False)
    n = len(features["query_paths"])
    assert features["query_features"].shape == (n, 8 * 4) and features["query_labels"].shape == (n,)
    assert not list(run.glob(".*.tmp"))


def test_run_folder_shows_the_best_epochs_retrievals(trained):
    untrained, result, _ = trained
    assert Image.open(untrained.run_dir / RETRIEVALS_FILE).format == "PNG"
    grid = Image.open(result.run_dir / RETRIEVALS_FILE).convert("RGB")
    layout = GridLayout(8, 8, 112)  # 8 queries chosen by the run's seed, their top 8
    assert grid.size == layout.size
    # each result's frame gives the verdict of the best epoch's features (features.npz), not the last epoch's
    features = np.load(result.run_dir / FEATURES_FILE, allow_pickle=False)
    query = Embeddings(torch.from_numpy(features["query_features"]), torch.from_numpy(features["query_labels"]),
                       list(features["query_paths"]))
    rows = grid_rows_from_embeddings(query, None, result.run_dir, ensemble_size=8, seed=0)
    expected = [[CORRECT_COLOUR if r.correct else INCORRECT_COLOUR for r in results] for _, results in rows]
    frames = [[grid.getpixel((layout.frame_origin(row, column)[0] + 1,
                              layout.frame_origin(row, column)[1] + layout.cell_width // 2)) for column in range(1, 9)]
              for row in range(8)]
    assert frames == expected
    assert any(CORRECT_COLOUR in row for row in frames)  # training found some


def test_resume_continues_after_the_saved_epoch(demo_data_path, tmp_path):
    states = tmp_path / "states"
    seen = []

    def save_first(result, save):
        seen.append(result.epoch)
        save(states)
        return True  # stop after one epoch

    fit(_config(demo_data_path, tmp_path, num_epochs=2, run_name="a"), save_first)
    assert seen == [1]
    resumed = []
    result = fit(_config(demo_data_path, tmp_path, num_epochs=2, run_name="b"), lambda r, s: resumed.append(r.epoch),
                 resume_from=states)
    assert resumed == [2]
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_resuming_weights_of_the_other_layout_says_which_implementation_to_use(demo_data_path, tmp_path):
    from antimetric.errors import ConfigError

    states = tmp_path / "states"
    fit(_config(demo_data_path, tmp_path, num_epochs=2, run_name="loop", implementation="reference"),
        lambda result, save: save(states) or True)
    with pytest.raises(ConfigError, match="--implementation reference"):
        fit(_config(demo_data_path, tmp_path, num_epochs=2, run_name="batched"), resume_from=states)


def test_a_gpu_out_of_memory_turns_activation_checkpointing_on_once_where_the_plan_allows(demo_data_path, tmp_path):
    """start_checkpointing_after_oom on a real session given the GPU's plans (the step itself cannot run out of
    memory on a CPU): only with the option left to auto, only for the batched network, and only once."""
    session = build_session(resolve(_config(demo_data_path, tmp_path, train=False)))
    cuda = torch.device("cuda")
    for refused in (plan_for(cuda, activation_checkpointing=False), plan_for(cuda, "reference"), session.plan):
        assert not start_checkpointing_after_oom(dataclasses.replace(session, plan=refused))
    assert not session.model.grad_checkpointing
    on_gpu = dataclasses.replace(session, plan=plan_for(cuda))
    assert start_checkpointing_after_oom(on_gpu) and session.model.grad_checkpointing
    assert not start_checkpointing_after_oom(on_gpu)  # nothing left to turn on: the error is raised


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_explicit_precision_is_what_the_session_trains_and_embeds_in(demo_data_path, tmp_path, precision):
    config = resolve(_config(demo_data_path, tmp_path, train=False, precision=precision))
    session = build_session(config)
    assert session.plan.bf16 is (precision == "bf16") and session.model.plan is session.plan
    conv = session.model.branches.stages.layer2[0].conv2.weight  # the tiny backbone: channels-last on a CPU
    assert session.plan.channels_last and conv.is_contiguous(memory_format=torch.channels_last)
    assert session.config.train.precision == precision
