"""The best trial of a study as a registered MLflow model, and trained ensembles loaded from MLflow sources: the
session's smoke study (conftest.smoke_study) in its real SQLite store."""
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.models import get_model_info

import antimetric
from antimetric.errors import ConfigError
from studies.record.pyfunc_model import MODEL_CONFIG
from studies.record.registry import model_name, register_best_trial
from studies.record.tracking import runs_by_trial
from tests.fixtures.studies import trial_runs

pytestmark = pytest.mark.slow  # the session's smoke study

MODEL = model_name("t")  # the smoke study's experiment is t


@pytest.fixture(scope="module")
def study(smoke_study, demo_data_path):
    """(tracking URI, client, the best trial's run, the study's run, three demo images)."""
    uri = smoke_study.dirs["tracking_uri"]
    client, runs, parents = trial_runs(uri)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    best = max(finished, key=lambda r: r.data.metrics["best_val_recall_at_1"])
    images = sorted((demo_data_path / "demo").rglob("*.jpg"))[:3]
    return uri, client, best, parents[0], images


def test_a_smoke_study_registers_its_best_trial(study, smoke_study, monkeypatch):
    """The version is the best trial run's logged model (MLflow 3: the run's "Logged models", the experiment's
    Models tab), registered without a copy, with the alias `best` that the printed serve command names."""
    import mlflow

    uri, client, best, parent, images = study
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for get_model_info and mlflow.search_logged_models
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert [int(v.version) for v in versions] == [1]
    version = versions[0]
    logged = mlflow.search_logged_models(experiment_ids=[best.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{best.info.run_id}'")
    assert [m.name for m in logged] == [best.info.run_name.split(":")[0].replace(" ", "-")]  # "trial-2"
    assert version.run_id == best.info.run_id and version.source == logged[0].model_uri
    assert str(client.get_model_version_by_alias(MODEL, "best").version) == "1"
    embedding = antimetric.load(f"models:/{MODEL}@best").embed(images)
    assert embedding.shape == (len(images), antimetric.load(best.info.run_id).embedding_dim)
    tags = version.tags
    assert tags["study"] == "t" and tags["study_run_id"] == parent.info.run_id and tags["run_id"] == best.info.run_id
    assert tags["trial_number"] == best.data.tags["trial_number"] and tags["trial_id"] == best.data.tags["trial_id"]
    assert tags["epoch"] == str(int(best.data.metrics["best_epoch"]))
    assert float(tags["best_val_recall_at_1"]) == pytest.approx(best.data.metrics["best_val_recall_at_1"], rel=1e-5)
    assert f"val_recall_at_1={best.data.metrics['best_val_recall_at_1']:.4f}" in version.description
    assert best.info.run_name in version.description
    # images in (bytes or paths), embeddings out, with an example a server accepts
    info = get_model_info(f"models:/{MODEL}@best")
    assert [(c["name"], c["type"], c["required"]) for c in info.signature.inputs.to_dict()] == \
        [("image", "binary", False), ("path", "string", False)]
    ensemble = antimetric.load(best.info.run_id, tracking_uri=uri)
    assert list(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, ensemble.embedding_dim]
    assert info.saved_input_example_info["type"] == "dataframe"
    assert info.flavors["python_function"]["config"] == MODEL_CONFIG  # what a load or a server may set
    assert f"mlflow models serve -m models:/{MODEL}@best --env-manager local --host 127.0.0.1" in smoke_study.proc.stdout


def test_a_study_summarized_again_registers_no_new_version(study):
    """--resume of a finished study summarizes it again, in the same study run: no second version."""
    uri, client, best, parent, _ = study
    experiment_id = parent.info.experiment_id
    assert register_best_trial(uri, "t", parent.info.run_id, best.data.tags["trial_dir"],
                               runs_by_trial(uri, experiment_id)) == f"models:/{MODEL}@best"
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1


def test_pyfunc_predict_equals_antimetric_load(study, demo_data_path, monkeypatch):
    import mlflow.pyfunc

    uri, _, _, _, images = study
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1", model_config={"image_root": str(demo_data_path)})
    expected = antimetric.load(f"models:/{MODEL}/1").embed(images).numpy()  # its store from the environment
    assert expected.shape[1] == antimetric.load(f"models:/{MODEL}/1").embedding_dim
    by_path = model.predict(pd.DataFrame({"path": [str(p) for p in images]}))
    by_bytes = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in images]}))
    mixed = model.predict(pd.DataFrame({"image": [images[0].read_bytes(), None, None],
                                        "path": [None, str(images[1]), str(images[2])]}))
    for predicted in (by_path, by_bytes, mixed):
        assert predicted.dtype == np.float32 and predicted.shape == expected.shape
        np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-6)
    branches = expected.reshape(len(images), -1, antimetric.load(f"models:/{MODEL}/1").branch_dim)
    np.testing.assert_allclose(np.linalg.norm(branches, axis=-1), 1, atol=1e-5)  # each branch L2-normalised


def test_load_from_each_mlflow_source(study):
    """A run id, runs:/ URIs (the run, its model), models:/ by version, latest and alias: the same weights, the
    trial's best epoch's."""
    uri, client, best, _, _ = study
    run_id = best.info.run_id
    client.set_registered_model_alias(MODEL, "champion", "1")
    reference = antimetric.load(f"models:/{MODEL}@best", device="cpu", tracking_uri=uri)
    sources = [run_id, f"runs:/{run_id}", f"runs:/{run_id}/model", f"models:/{MODEL}/1", f"models:/{MODEL}/latest",
               f"models:/{MODEL}@champion"]
    for source in sources:
        ensemble = antimetric.load(source, device="cpu", tracking_uri=uri)
        assert ensemble.source == source and ensemble.checkpoint.is_file()
        assert ensemble.epoch == reference.epoch == int(best.data.metrics["best_epoch"]), source
        state, expected = ensemble.model.state_dict(), reference.model.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[key], expected[key]) for key in state), source
        assert np.array_equal(ensemble.meta_ids, reference.meta_ids)


def test_bad_mlflow_sources_are_one_line_errors(study, tmp_path):
    uri, _, best, parent, _ = study
    missing_run = "0" * 32
    cases = {
        missing_run: f"no MLflow run {missing_run} in {uri}",
        parent.info.run_id: f"MLflow run {parent.info.run_id} has no artifact best_checkpoint/best.pt and no logged "
                            "model `model`",
        f"runs:/{best.info.run_id}/nothing": "has no artifact nothing",
        "models:/no-such-model/1": "no registered model 'no-such-model'",
        f"models:/{MODEL}/7": f"model '{MODEL}' has no version 7",
        f"models:/{MODEL}@nobody": f"model '{MODEL}' has no alias 'nobody'",
    }
    for source, message in cases.items():
        with pytest.raises(ConfigError) as error:
            antimetric.load(source, tracking_uri=uri)
        assert message in str(error.value) and "\n" not in str(error.value), (source, str(error.value))
    with pytest.raises(ConfigError, match="no MLflow store at sqlite:///"):  # and none is made there
        antimetric.load(best.info.run_id, tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    assert not (tmp_path / "none.db").exists()
    with pytest.raises(ConfigError, match="no MLflow server answers there"):
        antimetric.load(best.info.run_id, tracking_uri="http://127.0.0.1:9")  # the discard port: refused at once
