"""A study's best trial as a registered MLflow model: one new version of `<experiment>-ensemble` per study.

The model is a pyfunc (pyfunc_model.py) logged as the artifact `model` of the best trial's run, beside
its best_checkpoint, and registered from there. The version carries the study, its run, the trial (its
number, Ray id and MLflow run) and the selected epoch's metrics as tags, and the same in its description.
A study's run id marks its version, so that a study summarized again (after --resume) adds none.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from antimetric.errors import AntimetricError
from antimetric.trained import load
from studies.model_source import checkpoint_from_mlflow
from studies.pyfunc_model import save
from studies.study_run import BEST, STUDY_TAG
from studies.tracking import NUMBER_TAG, TRIAL_TAG, runs_by_trial

MODEL_ARTIFACT = "model"
STUDY_RUN_TAG = "study_run_id"  # on a version: the study it came from (one version per study)
# What the served model needs (pinned to what made it); antimetric itself must be installed beside them.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow")


def model_name(experiment: str) -> str:
    """The registered model of an experiment's studies."""
    return f"{experiment}-ensemble"


def register_best_trial(tracking_uri: str, experiment_id: str, study: str, study_run_id: str,
                        trial_dir: str) -> str | None:
    """models:/NAME/VERSION of the study's best trial (the trial folder `trial_dir`), registered now or by an
    earlier summary of the same study; None, with a note on stderr, when it cannot be (the study's results
    stand without it)."""
    name = model_name(study)
    try:
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        earlier = study_version(client, name, study_run_id)
        if earlier is None:
            run = runs_by_trial(tracking_uri, experiment_id, stage=None)[trial_dir]
            earlier = register_run(client, tracking_uri, name, run, study, study_run_id)
        return f"models:/{name}/{earlier.version}"
    except (MlflowException, AntimetricError, KeyError, OSError) as error:
        print(f"note: the best trial was not registered as MLflow model {name} ({error})", file=sys.stderr)
        return None


def tag_version(tracking_uri: str, model_uri: str, tags: dict[str, str]) -> None:
    """Tags on the version `model_uri` (models:/NAME/VERSION), e.g. the confirmed interval of its configuration."""
    name, number = model_uri.removeprefix("models:/").rsplit("/", 1)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, number, key, value)


def study_version(client: MlflowClient, name: str, study_run_id: str) -> ModelVersion | None:
    """The version a study registered before, if any."""
    found = client.search_model_versions(f"tags.{STUDY_RUN_TAG} = '{study_run_id}'")
    return next((v for v in found if v.name == name), None)


def register_run(client: MlflowClient, tracking_uri: str, name: str, run, study: str,
                 study_run_id: str) -> ModelVersion:
    """Log the run's best checkpoint as a pyfunc model in the run, and register it as a new version."""
    run_id = run.info.run_id
    checkpoint = checkpoint_from_mlflow(run_id, tracking_uri)
    ensemble = load(checkpoint, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / MODEL_ARTIFACT
        with _quiet("mlflow.pyfunc", "mlflow.models"):  # its notes on cloudpickle and on validating the example
            save(path, checkpoint, ensemble.embedding_dim, requirements())
        client.log_artifacts(run_id, str(path), MODEL_ARTIFACT)
    try:
        client.create_registered_model(name, tags={STUDY_TAG: study},
                                       description=f"Ensembles of the best trials of the studies of experiment {study}, "
                                                   "one version per study. Input: images (column `image`: file bytes, "
                                                   "or `path`); output: embeddings.")
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    tags, description = version_tags(run, study, study_run_id, ensemble.epoch)
    return client.create_model_version(name, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id, tags=tags,
                                       description=description)


def version_tags(run, study: str, study_run_id: str, epoch: int) -> tuple[dict[str, str], str]:
    """(tags, description) of a version: the study, the trial, and its selected epoch's metrics (best_*)."""
    run_tags = run.data.tags
    metrics = {key: value for key, value in sorted(run.data.metrics.items()) if key.startswith(BEST)}
    tags = {STUDY_TAG: study, STUDY_RUN_TAG: study_run_id, "run_id": run.info.run_id,
            "trial_number": run_tags.get(NUMBER_TAG, ""), "trial_id": run_tags.get(TRIAL_TAG, ""),
            "dataset": run_tags.get("dataset", ""), "epoch": str(epoch),
            **{key: f"{value:.6g}" for key, value in metrics.items()}}
    shown = ", ".join(f"{key.removeprefix(BEST)}={value:.4f}" for key, value in metrics.items()
                      if key.startswith((f"{BEST}val_", f"{BEST}test_")))
    description = (f"Best trial of study {study} (MLflow run {study_run_id}): {run.info.run_name} (Ray trial "
                   f"{tags['trial_id']}, MLflow run {run.info.run_id}), its selected epoch {epoch}: {shown}")
    return tags, description


@contextlib.contextmanager
def _quiet(*loggers: str):
    """MLflow's INFO and WARNING lines off for a moment; errors still show."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def requirements() -> list[str]:
    """The served model's pip requirements, at the versions installed here (a local build's +cpu dropped)."""
    pinned = []
    for package in REQUIREMENTS:
        try:
            pinned.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(package)
    return pinned
