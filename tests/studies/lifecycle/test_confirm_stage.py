"""A smoke study with its confirmation stage, sequential (--max-concurrent 1): what it leaves in MLflow, and that
the same command, interrupted and resumed, gives the same study."""
import csv
import io
import math
import signal

import optuna
import pytest

from antimetric.data.manifest.prepare import load_or_prepare
from antimetric.data.readers.source import benchmark
from antimetric.data.splits import make_splits
from tests.fixtures.mlflow_store import new_tracking_uri
from tests.fixtures.studies import run_study, stop_study_when, trial_runs

pytestmark = pytest.mark.slow  # each study: 2 trials and 6 confirmation runs of 2 epochs (~1 min on 2 cores)

ARGS = ("--backbone", "tiny", "--num-samples", "2", "--confirm-top", "2", "--repeats", "2", "--max-concurrent", "1")
TIMING = ("images_per_s", "epoch_seconds", "eval_seconds")  # the clock's, not the study's


def _dirs(folder):
    return {"tracking_uri": new_tracking_uri(folder / "mlflow.db"), "storage": folder / "ray"}


@pytest.fixture(scope="module")
def confirmed(demo_data_path, tmp_path_factory, ray_temp_dir):
    dirs = _dirs(tmp_path_factory.mktemp("confirmed"))
    return dirs, run_study(demo_data_path, dirs, *ARGS, timeout=600)


def snapshot(tracking_uri: str) -> dict:
    """Every run of a study by its name (a search trial's holds its number and values), with its params and
    each metric's history (but the clock's), and the study run's confirmation table and verdict."""
    client, runs, parents = trial_runs(tracking_uri)
    out = {}
    for run in runs:
        histories = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                     for key in run.data.metrics if key not in TIMING}
        out[run.info.run_name] = (run.data.tags["stage"], run.data.params, histories)
    parent = parents[0].info.run_id
    table = client.download_artifacts(parent, "confirmation.csv")
    with open(table) as handle:
        out["confirmation.csv"] = handle.read()
    out["verdict"] = parents[0].data.tags["verdict"]
    return out


def test_the_confirmation_stage_is_recorded(confirmed, demo_data_path):
    """K x N + N confirmation runs nested under the study's run, tagged stage=confirm and not numbered as
    trials; each configuration's repeats on disjoint validation classes; the table with the default and
    untrained rows, the winner's and default's intervals and the verdict on the study's run; the
    registered model is the winner's best repeat, with its interval; the Optuna record has the search alone."""
    dirs, proc = confirmed
    client, runs, parents = trial_runs(dirs["tracking_uri"])
    confirm = [r for r in runs if r.data.tags["stage"] == "confirm"]
    search = [r for r in runs if r.data.tags["stage"] == "search"]
    assert len(search) == 2 and len(confirm) == 2 * 2 + 2
    assert all(r.info.status == "FINISHED" and "trial_number" not in r.data.tags for r in confirm)
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in confirm)
    assert sorted(r.data.params["seed"] for r in search) != ["0"] * 2  # each trial its own seed
    index = load_or_prepare(benchmark("demo", demo_data_path))
    by_config: dict[str, list] = {}
    for run in confirm:
        config, repeat = run.info.run_name.removeprefix("confirm: ").rsplit(", repeat ", 1)
        params = run.data.params
        assert params["val_fold"] == repeat and params["split_seed"] == "0"
        held_out = make_splits(index, float(params["val_fraction"]), int(params["max_per_class"]),
                               int(params["split_seed"]), int(params["val_fold"])).val.query
        by_config.setdefault(config, []).append((params["seed"], {r.label for r in held_out}))
    assert len(by_config) == 3 and "default" in by_config
    for config, repeats in by_config.items():
        (seed_a, classes_a), (seed_b, classes_b) = repeats
        assert seed_a != seed_b and classes_a and classes_b and not classes_a & classes_b, config

    parent = parents[0]
    rows = list(csv.DictReader(io.StringIO(open(client.download_artifacts(parent.info.run_id,
                                                                            "confirmation.csv")).read())))
    assert [row["config"] for row in rows][-2:] == ["default", "untrained"] and len(rows) == 4
    for key in ("val_recall_at_1", "test_recall_at_1", "val_map_at_r", "test_map_at_r"):
        assert all(math.isfinite(float(row[f"{key}_mean"])) and float(row[f"{key}_ci95"]) >= 0 for row in rows[:3])
    assert float(rows[-1]["test_recall_at_1_mean"]) > 0
    winner = max(rows[:3], key=lambda row: float(row["val_recall_at_1_mean"]))
    metrics = parent.data.metrics
    assert metrics["confirmed_test_recall_at_1_mean"] == pytest.approx(float(winner["test_recall_at_1_mean"]))
    assert metrics["default_test_recall_at_1_ci95"] == pytest.approx(float(rows[2]["test_recall_at_1_ci95"]))
    assert "(n=2)" in parent.data.tags["verdict"] or "n=2" in parent.data.tags["verdict"]
    assert "confirmation.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert proc.stdout.strip().splitlines()[-1] == f"verdict: {parent.data.tags['verdict']}"

    version = client.search_model_versions("name = 't-ensemble'")[0]
    source = next(r for r in confirm if r.info.run_id == version.run_id)  # a confirmation run: the winner's
    assert (winner["trial"] or "default") in source.info.run_name
    best_of_winner = max((r for r in confirm if (winner["trial"] or "default") + "," in r.info.run_name),
                         key=lambda r: r.data.metrics["best_val_recall_at_1"])
    assert source.info.run_id == best_of_winner.info.run_id
    assert float(version.tags["confirmed_test_recall_at_1_mean"]) == pytest.approx(
        metrics["confirmed_test_recall_at_1_mean"], rel=1e-5)
    assert version.tags["confirmed_test_recall_at_1_n"] == "2"
    # the study's run leads to the confirmed winner's registered run, and says the search's best too
    tags, experiment_id = parent.data.tags, parent.info.experiment_id
    assert tags["best_run_id"] == version.run_id and tags["best_trial"] == (winner["trial"] or "default")
    search_best = next(r for r in search if r.info.run_id == tags["search_best_run_id"])
    assert search_best.data.metrics["best_val_recall_at_1"] == metrics["best_val_recall_at_1"]
    assert tags["search_best_trial"] == f"trial {search_best.data.tags['trial_number']}"
    note = tags["mlflow.note.content"]
    assert f"[{tags['best_trial']}](#/experiments/{experiment_id}/runs/{version.run_id}) (confirmed)" in note
    assert f"(#/experiments/{experiment_id}/runs/{search_best.info.run_id})" in note
    assert tags["verdict"] in note and "models:/t-ensemble@best" in note
    assert {k: v for k, v in parent.data.params.items() if k.startswith("best.")} == {
        f"best.{key}": source.data.params[key] for key in parent.data.params["searched"].split(", ")}
    assert "trials" not in metrics and metrics["trials_done"] + metrics["trials_failed"] == 2
    storage = f"sqlite:///{dirs['tracking_uri'].removeprefix('sqlite:///').rsplit('/', 1)[0]}/optuna.db"
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == 2


def test_a_resumed_study_equals_the_uninterrupted_one(confirmed, demo_data_path, tmp_path):
    """The same command again, in folders of its own, Ctrl-C during its search (after trial 0 and an epoch of
    trial 1), then --resume: the same study as the first, trial by trial, epoch by epoch, with the same
    confirmation table and verdict (so the same command gives the same study, and an interruption changes
    nothing)."""
    dirs, _ = confirmed
    resumed = _dirs(tmp_path)
    stop_study_when(demo_data_path, resumed, ARGS, lambda epochs: sum(epochs.values()) >= 3, signal.SIGINT)
    _, runs, _ = trial_runs(resumed["tracking_uri"])
    assert len(runs) < 2 + 6  # interrupted before its end
    run_study(demo_data_path, resumed, "--resume", timeout=600)
    first, second = snapshot(dirs["tracking_uri"]), snapshot(resumed["tracking_uri"])
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name] == second[name], name
