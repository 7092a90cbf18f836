"""The weights a trial keeps in MLflow: bf16 where the ensemble serves in bf16, and then the same recall."""
from pathlib import Path

import torch

import antimetric
from antimetric.retrieval.evaluate_model import evaluate_model
from antimetric.training.checkpoints import read_torch_file
from studies.record.trial_weights import compact_weights
from tests.fixtures.mlflow_store import new_tracking_uri


def _saved(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_bf16_weights_give_the_fp32_weights_recall(demo_run, demo_data_path, tmp_path):
    """Autocast rounds convolution and linear weights to bf16 before each product, so an ensemble served in bf16
    embeds the same with its weights stored in bf16: Recall@K and MAP@R equal exactly, at about half the bytes."""
    state = read_torch_file(demo_run / "best.pt")
    state["config"] = {**state["config"], "precision": "bf16"}
    full = _saved(state, tmp_path / "fp32.pt")
    compact = _saved(compact_weights(state), tmp_path / "bf16.pt")
    assert {t.dtype for t in read_torch_file(compact)["model"].values() if t.dim() >= 2} == {torch.bfloat16}
    assert compact.stat().st_size < 0.6 * full.stat().st_size
    expected = evaluate_model(antimetric.load(full, device="cpu"), demo_data_path)
    assert evaluate_model(antimetric.load(compact, device="cpu"), demo_data_path) == expected


def test_fp32_ensembles_keep_fp32_weights(demo_run):
    """Served in fp32, bf16 weights would move the embeddings (on the demo: test Recall@1 4.9 % -> 5.0 %)."""
    state = read_torch_file(demo_run / "best.pt")
    state["config"] = {**state["config"], "precision": "fp32"}
    kept = compact_weights({**state, "optimizer": {}})
    assert "optimizer" not in kept
    assert all(torch.equal(kept["model"][k], v) and kept["model"][k].dtype == v.dtype for k, v in state["model"].items())


def test_a_logged_model_is_named_after_its_trial():
    """The experiment's Models tab lists each trial's model by the trial's name, not 20 rows of `model`."""
    from studies.record.trial_weights import logged_model_name

    assert logged_model_name("trial 7: ensemble_size=12, lr=2.1e-03") == "trial-7"
    assert logged_model_name("confirm: trial 7, repeat 1") == "confirm-trial-7-repeat-1"
    assert logged_model_name("confirm: default, repeat 0") == "confirm-default-repeat-0"


def test_a_logged_model_cut_short_before_its_weights_is_logged_again(demo_run, tmp_path):
    """A driver killed while it logged a trial's model leaves it PENDING, without best.pt; the resumed study's
    summary logs the weights anew instead of taking the trial as logged (seen in a killed and resumed study)."""
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking import MlflowClient
    from ray.tune import Checkpoint

    from studies.record.trial_weights import log_ended_trial, logged_model

    uri = new_tracking_uri(tmp_path / "m.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment, run_name="trial 0: ensemble_size=4")
    client.create_logged_model(experiment, source_run_id=run.info.run_id, name="trial-0")  # cut short
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "best.pt").write_bytes((demo_run / "best.pt").read_bytes())
    log_ended_trial(uri, client.get_run(run.info.run_id), Checkpoint.from_directory(folder))
    models = client.search_logged_models([experiment])
    assert [(m.name, m.status) for m in models] == [("trial-0", LoggedModelStatus.READY)]
    assert logged_model(client, run).model_id == models[0].model_id
    assert list((tmp_path / "artifacts").rglob("best.pt"))
