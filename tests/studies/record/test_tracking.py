"""The study's MLflow records on a real SQLite store, without Ray: the parent run, the runs-table views
the printed link opens, the summary, and the names of a trial's runs and metrics."""
import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from ray.tune.result import AUTO_RESULT_KEYS

from studies.conclusions.study_note import NOTE_TAG as NOTE
from studies.record.study_run import VIEW_TAG, log_summary, open_study_run, runs_table_url, ui_command
from studies.record.tracking import ensure_experiment, selected, trial_metrics, trial_run_name
from tests.fixtures.mlflow_store import new_tracking_uri

SPACE = {"ensemble_size": {"type": "choice", "values": [4, 8]},
         "lr": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True}}
PARAMS = {"dataset": "demo", "num_samples": 3, "max_epochs": 2, "image_size": 32, "searched": "ensemble_size, lr"}


def _store(tmp_path):
    uri = new_tracking_uri(tmp_path / "mlflow.db")
    return uri, ensure_experiment(uri, "s", tmp_path), MlflowClient(uri)


def test_one_parent_run_per_study_found_again_on_resume(tmp_path):
    uri, experiment_id, client = _store(tmp_path)
    first = open_study_run(uri, experiment_id, "s", PARAMS, {"cpus_per_trial": "1"}, SPACE, new=True)
    client.set_terminated(first, "KILLED")  # Ctrl-C
    assert open_study_run(uri, experiment_id, "s", PARAMS, {"cpus_per_trial": "2"}, SPACE, new=False) == first
    run = client.get_run(first)
    assert run.info.status == "RUNNING" and run.info.run_name == "s" and run.data.tags["cpus_per_trial"] == "2"
    assert run.data.params == {k: str(v) for k, v in PARAMS.items()}
    space = client.download_artifacts(first, "search_space.json", str(tmp_path))
    assert json.loads(Path(space).read_text()) == SPACE
    # a new study of the same name (its Ray folder deleted) gets a parent of its own; the older keeps its trials
    second = open_study_run(uri, experiment_id, "s", PARAMS, {}, SPACE, new=True)
    assert second != first and len(client.search_runs([experiment_id])) == 2


def test_the_ui_link_opens_the_trials_view(tmp_path):
    uri, experiment_id, client = _store(tmp_path)
    open_study_run(uri, experiment_id, "s", PARAMS, {}, SPACE, new=True)
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags[VIEW_TAG])  # the envelope MLflow 3.17's UI reads: name, createdAt, state (a string)
    assert view["name"] == "trials" and isinstance(view["createdAt"], int) and isinstance(view["state"], str)
    state = json.loads(view["state"])
    columns = state["selectedColumns"]
    assert columns[-2:] == ["params.`ensemble_size`", "params.`lr`"]
    assert {"metrics.`best_val_recall_at_1`", "metrics.`best_test_recall_at_1`", "tags.`stopped_early`"} <= set(columns)
    assert state["orderByKey"] == "metrics.`best_val_recall_at_1`" and state["orderByAsc"] is False
    assert client.search_runs([experiment_id], state["searchFilter"]) == []  # valid; the trials alone, not the parent
    study_view = json.loads(json.loads(tags["mlflow.sharedViewState.study"])["state"])
    assert study_view["orderByKey"] == "attributes.start_time"  # the order in which MLflow nests child runs
    url = runs_table_url(experiment_id, 5055)
    assert url == (f"http://127.0.0.1:5055/#/experiments/{experiment_id}/runs"
                   "?workflowType=machine_learning&viewStateShareKey=trials")
    assert ui_command(uri, experiment_id, 5055).endswith(f"# then open {url}")


def test_the_summary_goes_on_the_parent_run(tmp_path):
    uri, experiment_id, client = _store(tmp_path)
    parent = open_study_run(uri, experiment_id, "s", PARAMS, {}, SPACE, new=True)
    client.log_metric(parent, "best_val_recall_at_1", 0.6, step=7)  # live, from a trial that failed later
    table = tmp_path / "trials.csv"
    table.write_text("trial_id\n1\n")
    summary = {"trials": 3, "stopped_early": 1, "failed": 1, "val_recall_at_1": 0.5, "test_recall_at_1": 0.25,
               "untrained_test_recall_at_1": 0.125}
    assert log_summary(uri, experiment_id, "s", {"trials": table}, summary, {"lr": 0.002}) == parent
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"trials_done": 2, "trials_stopped_early": 1, "trials_failed": 1,  # not also trials
                                "best_val_recall_at_1": 0.5, "best_test_recall_at_1": 0.25,
                                "untrained_test_recall_at_1": 0.125}
    assert {a.path for a in client.list_artifacts(parent)} == {"trials.csv", "best_config.json", "search_space.json"}
    assert len(client.search_runs([experiment_id])) == 1  # no summary run among the trials


def test_a_trials_metrics_leave_out_rays_bookkeeping():
    result = {key: 7 for key in AUTO_RESULT_KEYS} | {
        "config": {"lr": 0.001}, "done": False, "trial_id": "abc", "experiment_tag": "1_lr=0.001",
        "should_checkpoint": True, "date": "2026-11-29_18-00-00", "hostname": "h", "node_ip": "127.0.0.1",
        "epoch": 2, "val_recall_at_1": 0.5, "test_recall_at_1": 0.25, "loss": 1.5, "lr": 0.001, "images_per_s": 90.0}
    metrics = trial_metrics(result)
    assert metrics == {"epoch": 2, "val_recall_at_1": 0.5, "test_recall_at_1": 0.25, "loss": 1.5, "lr_epoch": 0.001,
                       "images_per_s": 90.0}
    assert selected(metrics) == {"epoch": 2, "val_recall_at_1": 0.5, "test_recall_at_1": 0.25}


def test_a_trials_run_name_says_its_number_and_searched_values():
    assert trial_run_name(3, {"ensemble_size": 8, "meta_class_size": 5, "lr": 0.0012}) == \
        "trial 3: ensemble_size=8, meta_class_size=5, lr=1.2e-03"
    assert trial_run_name(0, {"share_type": "layer1", "with_random": True, "momentum": 0.9}) == \
        "trial 0: share_type=layer1, with_random=True, momentum=0.9"
    assert trial_run_name(1, {}) == "trial 1"


def test_a_local_stores_artifacts_stay_beside_it(tmp_path, monkeypatch):
    """An experiment made without an artifact root keeps its artifacts beside its SQLite store, never in the
    folder the process happens to run in (a test run from the repository wrote error.txt into its mlruns/)."""
    for folder in ("elsewhere", "store"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    uri = new_tracking_uri(tmp_path / "store" / "mlflow.db")
    client = MlflowClient(uri)
    run = client.create_run(ensure_experiment(uri, "t"))
    client.log_text(run.info.run_id, "x", "error.txt")
    assert not (tmp_path / "elsewhere" / "mlruns").exists()
    assert list((tmp_path / "store" / "artifacts" / "t").rglob("error.txt"))


def test_the_summary_names_its_winner_and_logs_its_params_once(tmp_path, capsys):
    """Tags and description follow the latest summary (a confirmation stage's winner replaces the search's);
    params best.* cannot change in MLflow: a summary again with other values keeps them and says so."""
    uri, experiment_id, client = _store(tmp_path)
    parent = open_study_run(uri, experiment_id, "s", PARAMS, {}, SPACE, new=True)
    summary = {"trials": 1, "stopped_early": 0, "failed": 0}
    capsys.readouterr()  # MLflow's notes on making its store
    log_summary(uri, experiment_id, "s", {}, summary, {}, tags={"best_trial": "trial 2", NOTE: "search"})
    log_summary(uri, experiment_id, "s", {}, summary, {}, tags={"best_trial": "trial 0", NOTE: "confirmed"},
                params={"best.lr": 0.002, "best.ensemble_size": 8})
    assert capsys.readouterr().err == ""
    log_summary(uri, experiment_id, "s", {}, summary, {}, params={"best.lr": 0.003, "best.ensemble_size": 8})
    assert capsys.readouterr().err == ("note: the study's run keeps its earlier params best.lr (MLflow params cannot "
                                       "change); its tags and description name the winner now\n")
    run = client.get_run(parent)
    assert run.data.tags["best_trial"] == "trial 0" and run.data.tags[NOTE] == "confirmed"
    assert {k: v for k, v in run.data.params.items() if k.startswith("best.")} == {"best.lr": "0.002",
                                                                                  "best.ensemble_size": "8"}



def test_a_run_the_killed_driver_made_but_gave_no_params_gets_them_on_resume(tmp_path):
    """The driver can die between creating a trial's run and logging its params; the resumed study finds the
    run by its trial id and logs what it lacks (once: MLflow refuses a param logged again with another value)."""
    from types import SimpleNamespace

    from ray.tune.experiment import Trial

    from studies.record.study_run import parent_run
    from studies.record.tracking import TRIAL_TAG, trial_run

    uri, experiment_id, client = _store(tmp_path)
    open_study_run(uri, experiment_id, "s", PARAMS, {}, SPACE, new=True)
    parent_id, _ = parent_run(client, experiment_id, "s")
    storage = SimpleNamespace(experiment_driver_staging_path=str(tmp_path), trial_driver_staging_path=str(tmp_path / "t"))
    trial = Trial("train_ensemble", trial_id="abc_00000", config={"lr": 2e-3, "ensemble_size": 2, "data_name": "demo"},
                  stub=True, storage=storage)
    killed = client.create_run(experiment_id, run_name="trial 0", tags={TRIAL_TAG: trial.trial_id})  # no params yet
    run_id, existed = trial_run(client, experiment_id, parent_id, trial, "s")
    assert (run_id, existed) == (killed.info.run_id, True)
    params = client.get_run(run_id).data.params
    assert params["lr"] == "0.002" and params["ensemble_size"] == "2"
    assert trial_run(client, experiment_id, parent_id, trial, "s") == (run_id, True)  # again: nothing to add
