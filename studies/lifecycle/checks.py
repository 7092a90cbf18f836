"""What must hold before a study starts, checked before any data is read or Ray started (the nodes'
resources: right after Ray starts), so that a study never waits for ever. Each failure is one line."""
from __future__ import annotations

import contextlib
import logging
import re
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import ray
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from antimetric.base.cpus import available_cpus
from antimetric.errors import ConfigError
from antimetric.training.run_folder import probe, writing
from studies.compat import KIND, KIND_TAG, MLFLOW_SQL_STORE_LOGGER
from studies.design.settings import StudySettings
from studies.record.optuna_record import optuna_storage_uri
from studies.record.tracking import ensure_experiment
from studies.trials.trial_workers import DRIVER_CPU, trial_workers

CONNECT_TIMEOUT_S = 5
LOCKED_WAIT_S = 2  # how long the Optuna record may stay locked by another process before the study is refused
# How a tracking or Optuna store fails: MLflow's own errors, and its SQL layer's (a corrupt or read-only file).
STORE_ERRORS = (MlflowException, SQLAlchemyError, sqlite3.Error, OSError)


def check_storage(path: Path) -> None:
    """--storage-path is a folder this process can write (made if missing)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--storage-path {path} is a file; pass a folder")
    with writing(path, "--storage-path"):
        path.mkdir(parents=True, exist_ok=True)
    probe(path, "--storage-path")


def check_resources(settings: StudySettings) -> None:
    """A Ray head that answers (--address), or CPUs and a GPU here for one trial."""
    if settings.address:
        host, _, port = settings.address.removeprefix("ray://").rpartition(":")
        _connect(host, int(port), f"--address {settings.address}: no Ray head node answers there")
        return
    if settings.gpus_per_trial > 0 and not torch.cuda.is_available():
        raise ConfigError(f"--gpus-per-trial {settings.gpus_per_trial:g}: this machine has no CUDA GPU; "
                          "pass --gpus-per-trial 0")
    if settings.cpus_per_trial > available_cpus():
        raise ConfigError(f"--cpus-per-trial {settings.cpus_per_trial:g}: this machine has {available_cpus()} CPUs; "
                          f"pass at most {available_cpus()}")
    if settings.gpus_per_trial > 1 and settings.gpus_per_trial > torch.cuda.device_count():
        raise ConfigError(f"--gpus-per-trial {settings.gpus_per_trial:g}: this machine has {torch.cuda.device_count()} "
                          f"GPUs; pass at most {torch.cuda.device_count()}")
    if settings.workers_per_trial > available_cpus():
        raise ConfigError(f"--workers-per-trial {settings.workers_per_trial}: this machine has {available_cpus()} CPUs, "
                          f"one per worker at least; pass at most {available_cpus()}")
    if settings.workers_per_trial > 1 and settings.cpus_per_trial <= DRIVER_CPU:
        raise ConfigError(f"--cpus-per-trial {settings.cpus_per_trial:g}: a trial on several workers needs more than "
                          f"{DRIVER_CPU:g} (its driver's); pass more")


def check_nodes(settings: StudySettings) -> None:
    """Some node of the Ray cluster (or this machine) has the CPUs and GPUs one trial asks for; for a trial on
    several workers, the nodes hold its workers (and one holds its driver)."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if settings.workers_per_trial > 1:
        _check_worker_nodes(settings, nodes)
        return
    need = {"CPU": settings.cpus_per_trial, "GPU": settings.gpus_per_trial}
    if any(all(node.get(key, 0) >= value for key, value in need.items()) for node in nodes):
        return
    largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)), default={})
    raise ConfigError(f"a trial asks for {need['CPU']:g} CPUs and {need['GPU']:g} GPUs, but the largest Ray node has "
                      f"{largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs; lower --cpus-per-trial "
                      "or --gpus-per-trial")


def _check_worker_nodes(settings: StudySettings, nodes: list[dict[str, float]]) -> None:
    workers = trial_workers(settings.workers_per_trial, settings.cpus_per_trial, settings.gpus_per_trial,
                            settings.experiment_path, 1)
    need = workers.resources_per_worker
    fitting = sum(int(min(node.get(key, 0) / value for key, value in need.items())) for node in nodes)
    if fitting >= workers.workers and any(node.get("CPU", 0) >= DRIVER_CPU for node in nodes):
        return
    raise ConfigError(f"a trial's {workers.workers} workers ask for {need.get('CPU', 0):.3g} CPUs and "
                      f"{need.get('GPU', 0):g} GPUs each, but the Ray cluster holds {fitting} such workers; lower "
                      "--cpus-per-trial, --gpus-per-trial or --workers-per-trial")


def open_experiment(settings: StudySettings, artifact_root: Path | None) -> str:
    """The study's MLflow experiment id, made if new: the tracking store works before the study starts."""
    return open_tracking_experiment(settings.tracking_uri, settings.experiment, artifact_root)


def open_tracking_experiment(uri: str, name: str, artifact_root: Path | None) -> str:
    """The id of MLflow experiment `name` at --tracking-uri `uri`, made if new; one line if the store fails."""
    check_tracking_server(uri, f"--tracking-uri {uri}")
    try:
        with quiet_store_errors():
            experiment_id = ensure_experiment(uri, name, artifact_root)
            # a write the study makes anyway: a read-only store fails here, not after the first epoch
            MlflowClient(uri).set_experiment_tag(experiment_id, KIND_TAG, KIND)
        return experiment_id
    except STORE_ERRORS as exc:
        raise ConfigError(f"--tracking-uri {uri}: the MLflow store cannot be read and written ({store_failure(exc)}); "
                          "make it writable, repair or move it, or pass another --tracking-uri") from None


def store_failure(error: BaseException) -> str:
    """What went wrong in a store, in one short line: the database's own words where there are some (the
    first line of SQLAlchemy's message is the driver's; the rest is the SQL), else MLflow's first line."""
    text = str(getattr(error, "orig", None) or getattr(error, "message", None) or error).strip()
    first = (text.splitlines() or [type(error).__name__])[0]
    return re.sub(r"^\([\w.]+\) ", "", first)[:300]  # "(sqlite3.OperationalError) unable to open ..."


@contextlib.contextmanager
def quiet_store_errors() -> Iterator[None]:
    """MLflow's SQL store logs each error it re-raises with its whole traceback (80 lines); the caller says
    it in one."""
    logger = logging.getLogger(MLFLOW_SQL_STORE_LOGGER)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_optuna_storage(settings: StudySettings) -> None:
    """The SQLite file the Optuna record goes to as the study runs (record/optuna_live.py) can be read and
    written now: a corrupt, read-only or locked one would otherwise fail the study once its first trial started."""
    uri = optuna_storage_uri(settings)
    path = Path(uri[len("sqlite:///"):])
    if not path.exists():
        if path.parent.is_dir():
            probe(path.parent, "the folder of the Optuna record")
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=LOCKED_WAIT_S)) as database:
            database.execute("SELECT count(*) FROM sqlite_master").fetchall()  # a corrupt file fails here
            database.execute("BEGIN IMMEDIATE")  # a write lock: a read-only or locked file fails here
            database.rollback()
        optuna.storages.RDBStorage(uri)  # Optuna's schema, of a version this Optuna reads
    except (*STORE_ERRORS, RuntimeError) as exc:
        raise ConfigError(f"the Optuna record {path} cannot be used ({store_failure(exc)}); move it away, or end "
                          "what holds it locked") from None


def check_tracking_server(uri: str, what: str) -> None:
    """An http(s) tracking URI: a server accepts connections there, checked at once (MLflow retries a dead
    server for minutes). Other URIs pass."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        _connect(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80),
                 f"{what}: no MLflow server answers there")


def _connect(host: str, port: int, failure: str) -> None:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"{failure} ({exc.strerror or exc})") from None
