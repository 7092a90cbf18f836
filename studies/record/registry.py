"""A study's best trial as a registered MLflow model: one new version of `<experiment>-ensemble` per study, with
the alias `best` (models:/NAME@best), moved to each study's new version.

The version is registered from the trial run's logged model `model` (trial_weights.py logs one per trial when it
ends), so the registry holds no copy of the weights. It carries the study, its run, the trial (its number, Ray id
and MLflow run) and the selected epoch's metrics as tags, and the same in its description. A study's run id marks
its version, so that a study summarized again (after --resume) adds none.
"""
from __future__ import annotations

import contextlib
import io
import sys
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from antimetric.errors import AntimetricError
from studies.record.study_run import BEST, STUDY_TAG
from studies.record.tracking import NUMBER_TAG, TRIAL_TAG
from studies.record.trial_weights import logged_model, quiet, tracking_uri_for_fluent_api

ALIAS = "best"  # the alias of the newest study's version
STUDY_RUN_TAG = "study_run_id"  # on a version: the study it came from (one version per study)


def model_name(experiment: str) -> str:
    """The registered model of an experiment's studies."""
    return f"{experiment}-ensemble"


def register_best_trial(tracking_uri: str, study: str, study_run_id: str, trial_dir: str,
                        runs: dict[str, Any]) -> str | None:
    """models:/NAME@best of the study's best trial (the trial folder `trial_dir`, whose run `runs` holds: the trial
    runs by folder, runs_by_trial), registered now or by an earlier summary of the same study (models:/NAME/VERSION
    when the alias has moved on to a later study's); None, with a note on stderr, when it cannot be (the study's
    results stand without it)."""
    name = model_name(study)
    try:
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        registered = study_version(client, name, study_run_id)
        if registered is None:
            registered = register_run(client, tracking_uri, name, runs[trial_dir], study, study_run_id)
        aliased = client.get_registered_model(name).aliases.get(ALIAS)
        if aliased is None:  # a summary stopped between the version and its alias
            client.set_registered_model_alias(name, ALIAS, registered.version)
            aliased = registered.version
        return f"models:/{name}@{ALIAS}" if str(aliased) == str(registered.version) else \
            f"models:/{name}/{registered.version}"
    except (MlflowException, AntimetricError, KeyError, OSError) as error:
        print(f"note: the best trial was not registered as MLflow model {name} ({error})", file=sys.stderr)
        return None


def tag_version(tracking_uri: str, model_uri: str, tags: dict[str, str]) -> None:
    """Tags on the version `model_uri` (models:/NAME@ALIAS or models:/NAME/VERSION), e.g. the confirmed interval
    of its configuration."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    path = model_uri.removeprefix("models:/")
    if "@" in path:
        name, alias = path.split("@", 1)
        number = client.get_model_version_by_alias(name, alias).version
    else:
        name, number = path.rsplit("/", 1)
    for key, value in tags.items():
        client.set_model_version_tag(name, number, key, value)


def study_version(client: MlflowClient, name: str, study_run_id: str) -> ModelVersion | None:
    """The version a study registered before, if any."""
    found = client.search_model_versions(f"tags.{STUDY_RUN_TAG} = '{study_run_id}'")
    return next((v for v in found if v.name == name), None)


def register_run(client: MlflowClient, tracking_uri: str, name: str, run, study: str,
                 study_run_id: str) -> ModelVersion:
    """Register the run's logged model as a new version of `name`, with the alias `best`."""
    model = logged_model(client, run)
    if model is None:
        raise KeyError(f"run {run.info.run_id} has no logged model")
    try:
        client.create_registered_model(name, tags={STUDY_TAG: study},
                                       description=f"Ensembles of the best trials of the studies of experiment {study}, "
                                                   "one version per study; @best is the newest study's. Input: images "
                                                   "(column `image`: file bytes, or `path`); output: embeddings.")
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    tags, description = version_tags(run, study, study_run_id, int(run.data.metrics.get(f"{BEST}epoch", 0)))
    # without MLflow's "Registered model ... already exists" and "Created version" lines (the study prints its URI)
    with tracking_uri_for_fluent_api(tracking_uri), quiet("mlflow"), contextlib.redirect_stderr(io.StringIO()):
        version = mlflow.register_model(model.model_uri, name, tags=tags)
    client.update_model_version(name, version.version, description=description)
    client.set_registered_model_alias(name, ALIAS, version.version)
    return version


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
