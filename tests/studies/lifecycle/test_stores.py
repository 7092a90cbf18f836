"""A store that cannot be used (the MLflow store: corrupt or read-only; the Optuna record:
corrupt, locked) is one line before any data is read, epoch run or Ray started: in a study, in
`train --tracking-uri` and in `evaluate --model RUN_ID`."""
import sqlite3

import pytest

import antimetric.cli as cli
from studies.record.tracking import ensure_experiment
from studies.search import main
from tests.fixtures.folders import read_only_folder
from tests.fixtures.mlflow_store import new_tracking_uri
from tests.fixtures.studies import study_command


def _corrupt(path):
    path.write_bytes(b"not a database, " * 500)


def _one_line(err: str) -> str:
    """The one error line; MLflow's own INFO lines on making a new store may come before it."""
    lines = [line for line in err.strip().splitlines() if " INFO mlflow." not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("file, spoil, named", [
    ("mlflow.db", _corrupt, "file is not a database"),
    ("optuna.db", _corrupt, "file is not a database"),
    ("optuna.db", "locked", "database is locked"),
])
def test_a_study_refuses_a_store_before_ray_starts(file, spoil, named, demo_data_path, study_dirs, tmp_path, capsys,
                                                    monkeypatch):
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)  # main() sets it
    path = tmp_path / file  # study_dirs' store is tmp_path/mlflow.db; the Optuna record goes beside it
    holder = sqlite3.connect(path, isolation_level=None) if spoil == "locked" else None
    if holder is not None:  # a writer that does not end (SQLite's locks hold between connections of one process)
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("CREATE TABLE x (y)")
    else:
        spoil(path)
    try:
        argv = study_command(demo_data_path, study_dirs, "--num-samples", "1", "--max-epochs", "1")[3:]
        status = main(argv)
    finally:
        if holder is not None:
            holder.close()
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and str(path) in line and named in line, line
    assert not (study_dirs["storage"] / "t").exists()  # Ray never started


TRAIN = ["train", "--data-name", "demo", "--backbone", "tiny", "--no-pretrained", "--image-size", "32",
         "--num-epochs", "1", "--ensemble-size", "4", "--meta-class-size", "4", "--quiet"]


def test_train_and_evaluate_refuse_a_corrupt_store(demo_data_path, tmp_path, capsys):
    store = tmp_path / "mlflow.db"
    _corrupt(store)
    uri = f"sqlite:///{store}"
    runs = tmp_path / "runs"
    assert cli.main([*TRAIN, "--data-path", str(demo_data_path), "--output-dir", str(runs), "--tracking-uri", uri]) == 2
    line = _one_line(capsys.readouterr().err)
    assert uri in line and "file is not a database" in line, line
    assert not runs.exists()  # no epoch ran
    assert cli.main(["evaluate", "--model", "0" * 32, "--tracking-uri", uri]) == 2
    line = _one_line(capsys.readouterr().err)
    assert uri in line and "file is not a database" in line, line


def test_train_refuses_a_read_only_store_before_its_first_epoch(demo_data_path, tmp_path, capsys):
    folder = tmp_path / "store"
    folder.mkdir()
    uri = new_tracking_uri(folder / "mlflow.db")
    ensure_experiment(uri, "demo-study")  # the store and experiment exist; nothing can be written there
    runs = tmp_path / "runs"
    with read_only_folder(folder):
        status = cli.main([*TRAIN, "--data-path", str(demo_data_path), "--output-dir", str(runs), "--tracking-uri", uri])
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and uri in line and "cannot be read and written" in line, line
    assert not runs.exists()  # no epoch ran
