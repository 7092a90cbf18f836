"""One study at a time of each name: a study holds a lock on its experiment for its whole life.

Two studies of the same --experiment would run into one Ray folder and one MLflow experiment (two parent
runs, trial runs of both, a registered version tagged with both). The experiment has two homes, so there
are two lock files: `.NAME.lock` in --storage-path (Ray's folder of the study), and, for a local SQLite
MLflow store, `.DB.NAME.lock` beside the database, since two studies with other --storage-path values but
the same name share its MLflow experiment. A store on a server has no file to lock beside it: studies of
one name on two machines that share a server are not stopped. The locks are flocks (antimetric.data.manifest.locking):
they end with the process, so a study that crashed or was killed leaves nothing to clean up.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from antimetric.data.manifest.locking import LockHeld, holding_lock
from antimetric.errors import ConfigError
from studies.design.settings import StudySettings
from studies.record.tracking import local_artifact_root


def lock_files(settings: StudySettings) -> list[Path]:
    """The study's lock files: in --storage-path (which exists: checks.check_storage made it), and beside a
    local SQLite store whose folder exists (when it does not, the store check refuses it)."""
    files = [settings.storage_path / f".{settings.experiment}.lock"]
    store = local_artifact_root(settings.tracking_uri)
    if store is not None and store.is_dir():
        database = settings.tracking_uri.split("?", 1)[0].rpartition("/")[2]
        files.append(store / f".{database}.{settings.experiment}.lock")
    return files


@contextlib.contextmanager
def study_lock(settings: StudySettings) -> Iterator[None]:
    """Hold the study's locks while the block runs; a ConfigError naming the study that holds one."""
    note = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
    with contextlib.ExitStack() as held:
        for path in lock_files(settings):
            try:
                held.enter_context(holding_lock(path, note))
            except LockHeld as error:
                raise ConfigError(f"a study named {settings.experiment} is running ({error.holder or 'its process'}"
                                  f"; lock {path}); wait for it to end, or pass --experiment NEW_NAME") from None
            except OSError as error:
                raise ConfigError(f"cannot create the study's lock file {path} ({error.strerror or error}); "
                                  "a study needs a writable --storage-path and MLflow store folder") from None
        yield
