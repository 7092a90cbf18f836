"""`antimetric train --tracking-uri`: a plain run in MLflow as a study's trial is recorded, in a real SQLite store,
on a tiny CUB-layout dataset."""
import csv

import pytest
import torch
from mlflow.tracking import MlflowClient

import antimetric
import antimetric.cli as cli
from antimetric.training.config import RunConfig
from antimetric.training.run_folder import EPOCHS_FILE
from tests.fixtures.mlflow_store import new_tracking_uri

TINY = ["--data-name", "cub", "--backbone", "tiny", "--no-pretrained", "--ensemble-size", "3", "--meta-class-size",
        "4", "--image-size", "32", "--batch-size", "8", "--val-fraction", "0.2", "--quiet"]

pytestmark = pytest.mark.slow  # each test trains, and records in MLflow


@pytest.fixture
def store(tmp_path):
    """(tracking URI, client) of an empty SQLite store."""
    uri = new_tracking_uri(tmp_path / "mlflow.db")
    return uri, MlflowClient(uri)


def _train(cub_path, tmp_path, uri, *extra) -> int:
    return cli.main(["train", *TINY, "--data-path", str(cub_path), "--output-dir", str(tmp_path / "runs"),
                     "--tracking-uri", uri, *extra])


def _runs(client, experiment="cub-study"):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id])


def _steps(client, run, key="val_recall_at_1"):
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


def _interrupt_at(epoch: int, error: BaseException):
    """An epoch printer that raises `error` (Ctrl-C is a KeyboardInterrupt) when epoch `epoch` ends."""
    def printer(args):
        def report(result, _save):
            if result.epoch == epoch:
                raise error
        return report
    return printer


def test_a_train_run_is_recorded_as_a_trial_is(cub_path, tmp_path, store, capsys):
    uri, client = store
    assert _train(cub_path, tmp_path, uri, "--num-epochs", "2") == 0
    assert f"in experiment cub-study at {uri}" in capsys.readouterr().out  # the dataset's studies' experiment
    [run] = _runs(client)
    run_dir = next((tmp_path / "runs").iterdir())
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.tags["dataset"] == "cub" and run.data.tags["run_dir"] == str(run_dir)
    params, metrics = run.data.params, run.data.metrics
    # the whole resolved config, as a trial's params, and the digest of the data it trained on (a decision)
    assert set(params) == set(RunConfig().to_flat()) | {"data_digest"}
    assert params["ensemble_size"] == "3" and params["val_fraction"] == "0.2"
    assert params["device"] == "cpu" and params["implementation"] == "batched" and params["num_workers"] == "0"
    assert "lr" not in metrics and "lr_epoch" in metrics
    for key in ("loss", "branch_accuracy", "val_recall_at_1", "test_recall_at_1", "test_map_at_r", "lr_epoch"):
        assert _steps(client, run, key) == [1, 2], key
    rows = list(csv.DictReader((run_dir / EPOCHS_FILE).open()))
    best = max(rows, key=lambda row: (float(row["val_recall_at_1"]), -int(row["epoch"])))  # the first best epoch
    assert metrics["best_epoch"] == int(best["epoch"])
    for key in ("val_recall_at_1", "test_recall_at_1", "test_map_at_r"):
        assert metrics[f"best_{key}"] == pytest.approx(float(best[key]), rel=1e-6), key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "best_checkpoint")}
    expected = {f"best_checkpoint/{name}" for name in ("best.pt", "retrievals.png") if (run_dir / name).is_file()}
    assert "best_checkpoint/best.pt" in artifacts and artifacts == expected
    # the run is a model source like a trial's
    from_mlflow, from_folder = antimetric.load(run.info.run_id, tracking_uri=uri), antimetric.load(run_dir)
    assert from_mlflow.epoch == from_folder.epoch == int(best["epoch"])
    state = from_folder.model.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in from_mlflow.model.state_dict().items())


def test_ctrl_c_ends_the_run_killed_and_resume_continues_it(cub_path, tmp_path, store, monkeypatch):
    uri, client = store
    with monkeypatch.context() as patch:
        patch.setattr(cli, "_epoch_printer", _interrupt_at(1, KeyboardInterrupt()))
        assert _train(cub_path, tmp_path, uri, "--num-epochs", "2", "--run-name", "r", "--experiment", "mine") == 130
    [run] = _runs(client, "mine")
    assert run.info.status == "KILLED" and run.data.tags["interrupted"] == "true" and run.info.run_name == "r"
    assert run.data.tags["run_dir"] == str(tmp_path / "runs" / "r") and _steps(client, run) == [1]
    assert "best_checkpoint/best.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "best_checkpoint")}

    assert cli.main(["train", "--resume", str(tmp_path / "runs" / "r"), "--tracking-uri", uri, "--experiment", "mine",
                     "--quiet"]) == 0
    [resumed] = _runs(client, "mine")  # the same run, continued
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed_at_epoch"] == "2" and _steps(client, resumed) == [1, 2]


def test_an_error_ends_the_run_failed(cub_path, tmp_path, store, monkeypatch):
    uri, client = store
    monkeypatch.setattr(cli, "_epoch_printer", _interrupt_at(1, RuntimeError("disk on fire")))
    with pytest.raises(RuntimeError, match="disk on fire"):
        _train(cub_path, tmp_path, uri, "--num-epochs", "1")
    [run] = _runs(client)
    assert run.info.status == "FAILED" and "RuntimeError: disk on fire" in run.data.tags["error"]
    assert "Traceback" in run.data.tags["error"]


def test_bad_input_is_one_line_and_records_no_run(cub_path, tmp_path, store, capsys):
    uri, client = store
    cases = [
        (["train", *TINY, "--experiment", "x"], "--experiment names the MLflow experiment of --tracking-uri"),
        (["train", *TINY, "--tracking-uri", "http://127.0.0.1:9"], "no MLflow server answers there"),
        ([*_args(tmp_path / "nowhere", tmp_path, uri)], "nowhere"),  # no dataset: found once the data is read
        ([*_args(cub_path, tmp_path, uri), "--meta-class-size", "2", "--ensemble-size", "2"], "meta-classes"),
    ]
    for argv, needle in cases:
        assert cli.main([*argv, "--output-dir", str(tmp_path / "runs")]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and needle in err, err
    assert _runs(client) == []  # the store was opened, and no run was left in it


def _args(data_path, tmp_path, uri):
    return ["train", *TINY, "--data-path", str(data_path), "--tracking-uri", uri]
