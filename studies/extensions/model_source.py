"""An ensemble kept in MLflow as a local checkpoint file: what `antimetric.load` calls (through the entry point
`model_source` of the group `antimetric.extensions`) for an MLflow run id, `runs:/RUN_ID[/PATH]` or
`models:/NAME/VERSION` (also `models:/NAME@ALIAS` and `models:/NAME/latest`).

A run's checkpoint is the one inside its logged model `model` (a study's trial: record/trial_weights.py, a pyfunc
model: record/pyfunc_model.py) or its artifact best_checkpoint/best.pt (a `train --tracking-uri` run's, or a trial of a
study from before 2026-12-03); a registered version's is the checkpoint inside the logged model it was registered from. Files are downloaded to a
temporary folder of this process, removed when it exits: the loaded ensemble holds its weights in memory.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from antimetric.errors import ConfigError
from antimetric.training.run_folder import BEST_FILE
from antimetric.training.state import STATE_FILE
from studies.lifecycle.checks import STORE_ERRORS, check_tracking_server, quiet_store_errors, store_failure
from studies.record.tracking import CHECKPOINT_ARTIFACT, default_tracking_uri
from studies.record.trial_weights import MODEL_ARTIFACT, logged_model, no_progress_bar

RUN_CHECKPOINT = f"{CHECKPOINT_ARTIFACT}/{BEST_FILE}"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_RUNS_URI = re.compile(r"^runs:/([0-9a-f]{32})(?:/(.*))?$")
_MODELS_URI = re.compile(r"^models:/([^/@]+)(?:/([^/]+)|@([^/]+))/?$")
_downloads: Path | None = None  # this process's download folder


def checkpoint_from_mlflow(source: str, tracking_uri: str | None = None) -> Path:
    """The local checkpoint file of SOURCE (a run id, runs:/ or models:/ URI) in the MLflow store at
    `tracking_uri` (default: $MLFLOW_TRACKING_URI, else the studies' store mlruns/mlflow.db)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    check_store(uri)
    client = MlflowClient(uri, registry_uri=uri)
    run = _RUNS_URI.match(source)
    if _RUN_ID.match(source) or run:
        run_id, path = (source, "") if run is None else (run.group(1), (run.group(2) or "").strip("/"))
        found = _ask(lambda: client.get_run(run_id), f"no MLflow run {run_id} in {uri}; check the run id and --tracking-uri")
        if path == MODEL_ARTIFACT or (not path and not _exists(client, run_id, RUN_CHECKPOINT)):
            model = _ask(lambda: logged_model(client, found), f"cannot list the logged models of run {run_id}")
            if model is not None:  # a study's trial: its weights are its logged model's
                return _download(client, source, uri, model_uri=model.artifact_location)
        return _download(client, source, uri, run_id=run_id, path=path or RUN_CHECKPOINT)
    model = _MODELS_URI.match(source)
    if model is None:
        raise ConfigError(f"{source} is not an MLflow model URI; pass a run id, runs:/RUN_ID or models:/NAME/VERSION")
    version = model_version(client, model.group(1), model.group(2), model.group(3), uri)
    location = _ask(lambda: client.get_model_version_download_uri(version.name, version.version),
                    f"cannot find where {source} is stored")
    return _download(client, source, uri, model_uri=location)


def check_store(uri: str) -> None:
    """A store that can answer: a server that accepts connections, a SQLite file that exists (MLflow would
    make an empty one) and that MLflow can read (not corrupt, of a schema this MLflow knows)."""
    check_tracking_server(uri, f"tracking URI {uri}")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError(f"no MLflow store at {uri}; pass the tracking URI of the store that holds the model "
                          "(--tracking-uri or $MLFLOW_TRACKING_URI)")
    try:
        with quiet_store_errors():
            MlflowClient(uri).search_experiments(max_results=1)
    except STORE_ERRORS as error:
        raise ConfigError(f"the MLflow store at {uri} cannot be read ({store_failure(error)}); repair it, or pass "
                          "the tracking URI of another store") from None


def model_version(client: MlflowClient, name: str, version: str | None, alias: str | None, uri: str) -> ModelVersion:
    """The registered version that models:/NAME/VERSION, models:/NAME@ALIAS or models:/NAME/latest names."""
    what = f"models:/{name}" + (f"@{alias}" if alias else f"/{version}")
    _ask(lambda: client.get_registered_model(name), f"no registered model {name!r} in {uri}; check the name "
         "(`mlflow models` lists none: see the MLflow UI's Models page) and --tracking-uri")
    if alias:
        return _ask(lambda: client.get_model_version_by_alias(name, alias), f"{what}: model {name!r} has no alias "
                    f"{alias!r}")
    if version == "latest":
        versions = _ask(lambda: client.search_model_versions(f"name = '{name}'"), f"{what}: cannot list versions")
        if not versions:
            raise ConfigError(f"{what}: model {name!r} has no version yet")
        return max(versions, key=lambda v: int(v.version))
    if not version.isdigit():
        raise ConfigError(f"{what}: a version is a number, `latest`, or @ALIAS after the name")
    return _ask(lambda: client.get_model_version(name, version), f"{what}: model {name!r} has no version {version}")


def _download(client: MlflowClient, source: str, uri: str, *, run_id: str | None = None, path: str = "",
              model_uri: str | None = None) -> Path:
    """The checkpoint in a run's artifact `path`, or in the model stored at `model_uri`, downloaded."""
    folder = Path(tempfile.mkdtemp(prefix="model-", dir=_download_root()))
    if model_uri is not None:
        local = _ask(lambda: download_artifacts(artifact_uri=model_uri, dst_path=str(folder), tracking_uri=uri),
                     f"cannot download {source} from {model_uri}")
    else:
        if not _exists(client, run_id, path):
            raise ConfigError(f"MLflow run {run_id} has no artifact {path} and no logged model `{MODEL_ARTIFACT}` (a "
                              "study's trial logs its model when it ends, `train --tracking-uri` logs "
                              f"{RUN_CHECKPOINT}); pick a run that finished an epoch, or a models:/NAME@ALIAS")
        local = _ask(lambda: client.download_artifacts(run_id, path, str(folder)),
                     f"cannot download {path} of MLflow run {run_id} from {uri}")
    found = _checkpoint_in(Path(local))
    if found is None:
        raise ConfigError(f"{source} holds no {BEST_FILE} or {STATE_FILE}; pass a run or model that antimetric logged")
    return found


def _exists(client: MlflowClient, run_id: str, path: str) -> bool:
    parent = path.rpartition("/")[0]
    listed = _ask(lambda: client.list_artifacts(run_id, parent or None), f"cannot list the artifacts of run {run_id}")
    return any(info.path == path for info in listed)


def _checkpoint_in(local: Path) -> Path | None:
    """The checkpoint file itself, or the one inside a downloaded folder (a pyfunc model keeps it under
    artifacts/)."""
    if local.is_file():
        return local
    for name in (BEST_FILE, STATE_FILE):
        found = sorted(local.rglob(name))
        if found:
            return found[0]
    return None


def _download_root() -> Path:
    global _downloads
    if _downloads is None:
        _downloads = Path(tempfile.mkdtemp(prefix="antimetric-mlflow-"))
        atexit.register(shutil.rmtree, _downloads, ignore_errors=True)
    return _downloads


def _ask(call, failure: str):
    """call(), with MLflow's errors as one line: `failure` and MLflow's own first line; no progress bar for
    the few small files of a checkpoint, unless MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR says otherwise."""
    try:
        with no_progress_bar():
            return call()
    except MlflowException as error:
        detail = " ".join(str(error.message).split())[:200]
        raise ConfigError(f"{failure} ({detail})") from None
