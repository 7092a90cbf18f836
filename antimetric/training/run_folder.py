"""A run's folder: made for that run alone before any data is read, and written only by it.

A new run never lands in an existing folder: without --run-name it gets <dataset>-<time>, with
-2, -3 ... appended when another run took that name in the same second; an existing --run-name is
refused unless --reuse-run-name is given, and then only a folder that holds a run's files
(config.json) or nothing is reused, after its run files are removed. Every failure to create or
write the folder is one line naming it.
"""
from __future__ import annotations

import contextlib
import errno
import os
from datetime import datetime
from pathlib import Path
from typing import Iterator

from antimetric.errors import AntimetricError, ConfigError
from antimetric.training.config import RunConfig

# Files of a run folder.
CONFIG_FILE, META_IDS_FILE, EPOCHS_FILE = "config.json", "meta_ids.json", "epochs.csv"
BEST_FILE, LAST_FILE, FEATURES_FILE = "best.pt", "last.pt", "features.npz"
RETRIEVALS_FILE = "retrievals.png"  # the best epoch's retrieval grid (antimetric.evaluation.grid)
RUN_FILES = (CONFIG_FILE, META_IDS_FILE, EPOCHS_FILE, BEST_FILE, LAST_FILE, FEATURES_FILE, RETRIEVALS_FILE)
_MAX_SUFFIX = 1000


class OutputError(AntimetricError):
    """A run folder or file that cannot be created or written."""


def create_run_dir(config: RunConfig) -> Path:
    """A folder of its own for a new run, writable (checked by writing a probe file)."""
    output_dir = Path(config.output_dir)
    with writing(output_dir, "--output-dir"):
        output_dir.mkdir(parents=True, exist_ok=True)
        if config.run_name:
            run_dir = output_dir / config.run_name
            if not _claim(run_dir):
                _reuse(run_dir, config.reuse_run_name)
        else:
            base = f"{config.data.data_name}-{datetime.now():%Y%m%d-%H%M%S}"
            run_dir = next(output_dir / name for name in _numbered(base) if _claim(output_dir / name))
        probe(run_dir)
    return run_dir


def _numbered(base: str) -> Iterator[str]:
    yield base
    for n in range(2, _MAX_SUFFIX):
        yield f"{base}-{n}"
    raise OutputError(f"{_MAX_SUFFIX} runs named {base}-N exist already; pass --run-name")


def _claim(run_dir: Path) -> bool:
    """Create run_dir; False when it exists (mkdir is atomic, so two runs never claim one folder)."""
    try:
        run_dir.mkdir()
    except FileExistsError:
        return False
    return True


def _reuse(run_dir: Path, allowed: bool) -> None:
    if not allowed:
        raise ConfigError(f"run folder {run_dir} exists; choose another --run-name, or pass --reuse-run-name to "
                          "replace that run's files (or use train --resume to continue it)")
    if not run_dir.is_dir():
        raise ConfigError(f"--run-name: {run_dir} exists and is not a folder; choose another --run-name")
    entries = {entry.name for entry in run_dir.iterdir()}
    if entries and CONFIG_FILE not in entries:
        raise ConfigError(f"--reuse-run-name: {run_dir} holds files but no {CONFIG_FILE}, so it is not a run "
                          "folder; choose another --run-name")
    for name in RUN_FILES:  # only the files a run writes; anything else the user put there stays
        (run_dir / name).unlink(missing_ok=True)


def probe(folder: Path, what: str = "the run folder") -> None:
    """Fail now, in one line naming `what`, when `folder` cannot take a file (read-only, full, not a folder)."""
    with writing(folder, what):
        descriptor = os.open(folder / ".antimetric-probe", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(descriptor, b"probe\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
            os.unlink(folder / ".antimetric-probe")


@contextlib.contextmanager
def writing(path: Path, what: str = "the run folder") -> Iterator[None]:
    """Turn an OSError raised while writing under `path` into one line naming it and the cause."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or str(error)
        hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
                errno.EFBIG: "the file is larger than this system or process allows",
                errno.EROFS: "choose a writable folder", errno.EACCES: "choose a writable folder",
                errno.EPERM: "choose a writable folder"}.get(error.errno, "choose another folder")
        raise OutputError(f"cannot write {what} {path} ({reason}); {hint}; files written earlier are kept") from None
