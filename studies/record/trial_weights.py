"""A trial's best weights in MLflow as soon as it ends, and its Ray checkpoints deleted then.

A trial's run gets, once, its best epoch's weights as the pyfunc logged model `model` (pyfunc_model.py), the one
copy of them in MLflow (registry.py registers the study's best from it, without a copy), and that epoch's
retrievals.png at the run's artifact root. Then the trial's checkpoint folders are deleted from the study's
storage: an ended trial is never resumed, so a resume needs none of them. They are deleted only once Ray's saved
experiment state (which Ray writes after the callbacks ran, and copies to storage in the background) records the
trial as ended, so that a driver killed at any moment leaves a study whose unfinished trials can resume, and whose
ended trials' weights are in MLflow or still in their checkpoints (the study's summary logs those: log_ended_trial).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.tracking import MlflowClient
from pyarrow.fs import FileSelector, FileType
from ray.tune import Checkpoint

from antimetric.base.atomic import torch_save
from antimetric.model.cost import branch_dim
from antimetric.training.checkpoints import checkpoint_config, read_torch_file
from antimetric.training.run_folder import BEST_FILE, RETRIEVALS_FILE
from studies.compat import TRAIN_CHECKPOINT_PATH, ended_trial_ids, is_experiment_state, trial_storage
from studies.record.pyfunc_model import model_arguments

MODEL_ARTIFACT = "model"  # runs:/RUN_ID/model: the run's logged model
CHECKPOINT_FOLDER = re.compile(r"^checkpoint_\d{6}$")  # the folders Ray writes a trial's checkpoints to
BEST_KEYS = ("epoch", "model", "meta_ids", "config", "metrics")  # what antimetric.load reads; no optimiser state


def logged_model(client: MlflowClient, run) -> Any | None:
    """The run's logged model (a LoggedModel; a trial logs one), if it has one."""
    found = client.search_logged_models([run.info.experiment_id], max_results=10,
                                        filter_string=f"source_run_id = '{run.info.run_id}'")
    return found[0] if found else None


def logged_model_name(run_name: str) -> str:
    """The name of a run's logged model, as the experiment's Models tab lists it: the trial's name ("trial 7:
    ensemble_size=..." gives `trial-7`, "confirm: trial 7, repeat 1" `confirm-trial-7-repeat-1`)."""
    head = run_name if run_name.startswith("confirm: ") else run_name.split(": ", 1)[0]
    return re.sub(r"[^A-Za-z0-9]+", "-", head).strip("-") or MODEL_ARTIFACT


def compact_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's keys antimetric.load reads, its convolution and linear weights (tensors of 2 or more
    dimensions) in bf16 when it serves in bf16 (its config's precision): autocast rounds exactly those to bf16
    before every product, so the embeddings, and Recall@K, are the fp32 weights' bit for bit, at half the bytes.
    An fp32 ensemble keeps fp32 weights (bf16 ones would move its embeddings)."""
    kept = {key: state[key] for key in BEST_KEYS if key in state}
    if state.get("config", {}).get("precision") == "bf16":
        kept["model"] = {name: tensor.to(torch.bfloat16) if tensor.is_floating_point() and tensor.dim() >= 2 else tensor
                         for name, tensor in state["model"].items()}
    return kept


def log_best_weights(tracking_uri: str, run_id: str, folder: Path) -> bool:
    """Log the best epoch's files of a checkpoint `folder` to the run: best.pt inside the pyfunc logged model
    named after the run (logged_model_name; linked to the run's metrics at that epoch), retrievals.png at the run's root. False: no best.pt."""
    path = folder / BEST_FILE
    if not path.is_file():
        return False
    client = MlflowClient(tracking_uri)
    if (folder / RETRIEVALS_FILE).is_file():
        client.log_artifact(run_id, str(folder / RETRIEVALS_FILE))
    best = compact_weights(read_torch_file(path))
    config = checkpoint_config(best.get("config"), path)
    run = client.get_run(run_id).info
    with tempfile.TemporaryDirectory() as out:
        checkpoint = Path(out) / BEST_FILE
        torch_save(checkpoint, best)
        with tracking_uri_for_fluent_api(tracking_uri), quiet("mlflow"), mlflow.start_run(run_id=run_id):
            embedding_dim = config.model.ensemble_size * branch_dim(config.model)
            mlflow.pyfunc.log_model(name=logged_model_name(run.run_name or ""), step=int(best.get("epoch", 0)),
                                    **model_arguments(checkpoint, embedding_dim))
            mlflow.end_run(run.status)  # as it was: the callback or the summary ends the run
    return True


def log_ended_trial(tracking_uri: str, run, checkpoint) -> None:
    """The best weights of an ended trial's `checkpoint` (a tune.Checkpoint, or None) in its run, unless
    logged before (by the MLflow callback when the trial ended, or before the study was resumed). A logged model
    left PENDING (the driver was killed while it logged it: no weights in it) is replaced."""
    client = MlflowClient(tracking_uri)
    logged = logged_model(client, run)
    if checkpoint is None or (logged is not None and logged.status == LoggedModelStatus.READY):
        return
    if checkpoint.filesystem.get_file_info(checkpoint.path).type == FileType.NotFound:
        return  # deleted after a trial that logged nothing (it had no best epoch)
    with checkpoint.as_directory() as folder:
        if logged is not None and (Path(folder) / BEST_FILE).is_file():
            client.delete_logged_model(logged.model_id)
        log_best_weights(tracking_uri, run.info.run_id, Path(folder))


def ended_checkpoint(checkpoint, metrics: dict[str, Any] | None, filesystem):
    """An ended trial's last checkpoint: Tune's (`checkpoint`), or, for a multi-worker trial (studies/trials/train_driver.py),
    which Tune keeps none of, its Train run's that its last `metrics` name, on the study's storage `filesystem`."""
    path = (metrics or {}).get(TRAIN_CHECKPOINT_PATH)
    if checkpoint is not None or not path:
        return checkpoint
    return Checkpoint(path, filesystem=filesystem)


def delete_train_run(filesystem, metrics: dict[str, Any] | None) -> None:
    """Delete the folder of an ended multi-worker trial's Train run (its checkpoints and Ray Train's snapshot of
    them), which its last `metrics` name; nothing for a one-device trial."""
    path = (metrics or {}).get(TRAIN_CHECKPOINT_PATH)
    if not path or not CHECKPOINT_FOLDER.match(Path(path).name):
        return
    run_folder = str(Path(path).parent)
    if filesystem.get_file_info(run_folder).type == FileType.Directory:  # not deleted before
        filesystem.delete_dir(run_folder)


def delete_checkpoints(filesystem, folder: str) -> None:
    """Delete the checkpoint folders Ray wrote in an ended trial's `folder` on its storage's pyarrow `filesystem`;
    nothing else of that folder."""
    for info in filesystem.get_file_info(FileSelector(folder, allow_not_found=True)):
        if info.type == FileType.Directory and CHECKPOINT_FOLDER.match(info.base_name):
            filesystem.delete_dir(info.path)


def ended_in_saved_state(trial) -> set[str]:
    """The ids of the trials that the experiment state Ray saved last in the storage of `trial` (any trial of
    the experiment) records as ended: only their checkpoints may go (a driver killed before would resume a
    trial from them). A state file being copied, or none, names none."""
    filesystem, folder, _ = trial_storage(trial)
    states = sorted(info.path for info in filesystem.get_file_info(FileSelector(folder, allow_not_found=True))
                    if is_experiment_state(info.base_name))
    if not states:
        return set()
    try:
        with filesystem.open_input_stream(states[-1]) as stream:
            return ended_trial_ids(stream.read())
    except (OSError, ValueError, KeyError, TypeError):
        return set()


@contextlib.contextmanager
def tracking_uri_for_fluent_api(tracking_uri: str):
    """MLflow's fluent API (what log_model uses) on `tracking_uri` for a moment."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def quiet(*loggers: str):
    """MLflow's INFO and WARNING lines (its notes on cloudpickle and on validating the example) off for a
    moment, and no progress bar; errors still show."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with no_progress_bar():
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def no_progress_bar():
    """No progress bar of MLflow's for the few files of a checkpoint, unless MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    says otherwise."""
    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)
