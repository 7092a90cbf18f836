"""A study of a user's own folder of class subfolders, end to end: `python -m studies.search FOLDER`."""
import json
import os
import subprocess
import sys

import mlflow
import pytest

import antimetric
from antimetric.cli import main as antimetric_main
from tests.fixtures.mlflow_store import new_tracking_uri
from tests.fixtures.own_data import image_path, make_shapes
from tests.fixtures.studies import RAY_ENV


@pytest.mark.slow
def test_a_study_of_a_folder_of_classes_runs_to_its_verdict_and_registers_a_model_that_retrieves(tmp_path, capsys):
    folder = make_shapes(tmp_path / "shop", n_classes=20, per_class=4)
    tracking_uri = new_tracking_uri(tmp_path / "mlflow.db")
    command = [sys.executable, "-m", "studies.search", str(folder), "--smoke-test", "--backbone", "tiny",
               "--tracking-uri", tracking_uri, "--storage-path", str(tmp_path / "ray"), "--confirm-top", "1",
               "--repeats", "2"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **RAY_ENV})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "verdict:" in proc.stdout and "models:/shop-study-ensemble@best" in proc.stdout

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("shop-study")  # named after the folder
    runs = client.search_runs([experiment.experiment_id])
    trials = [run for run in runs if "trial_id" in run.data.tags]
    assert len(trials) >= 3
    assert {run.data.tags["dataset"] for run in runs} == {"shop"}  # the study's run and its trials, by the folder's name
    measured = {key: {run.data.params[key] for run in trials} for key in ("data", "recalls", "mean", "std")}
    assert measured["data"] == {str(folder)}  # every trial and confirmation run read the folder itself
    for key in ("recalls", "mean", "std"):  # measured once, when the study started, and the same for every run
        assert len(measured[key]) == 1, (key, measured[key])
    assert json.loads(next(iter(measured["mean"])).replace("(", "[").replace(")", "]")) != [0.485, 0.456, 0.406]

    # the registered winner loads and retrieves from that folder: an image of it finds itself first
    model = "models:/shop-study-ensemble@best"
    assert antimetric.load(model, tracking_uri=tracking_uri, device="cpu").config.data.data == str(folder)
    capsys.readouterr()
    assert antimetric_main(["index", "--model", model, "--tracking-uri", tracking_uri, "--images", str(folder),
                            "--out", str(tmp_path / "index"), "--device", "cpu"]) == 0
    query = image_path(folder, 3, 2)
    assert antimetric_main(["retrieve", "--index", str(tmp_path / "index"), "--query", str(query), "--top-k", "3",
                            "--json"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["queries"][0]["neighbours"][0]
    assert first["path"] == str(query) and first["label"] == "class3" and first["similarity"] > 0.99
