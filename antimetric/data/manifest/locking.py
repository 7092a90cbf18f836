"""One process at a time writes what antimetric generates in a dataset folder (the demo, the manifest, the cache);
and holding_lock, the same kind of lock that refuses at once instead of waiting (a study's, studies/lifecycle/study_lock.py).

Two first uses at once (two `train` processes, two Ray trials) would otherwise both generate or prepare,
and one would replace files the other is reading. Each dataset has an advisory lock file beside its
folder, data_path/.NAME.lock; a writer holds it while it works, and re-checks after acquiring it whether
the other process has already done the work. Readers of finished files take no lock.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from antimetric.errors import DatasetLayoutError

try:
    import fcntl
except ImportError:  # Windows has no flock; there first uses are not serialised
    fcntl = None


def lock_path(data_path: Path, name: str) -> Path:
    return Path(data_path) / f".{name}.lock"


@contextlib.contextmanager
def dataset_lock(data_path: Path, name: str) -> Iterator[None]:
    """Hold the exclusive lock of dataset `name`, waiting (with one line on stderr) while another process has it.

    data_path must exist: the lock file is not allowed to create a folder for a mistyped --data-path.

    flock locks belong to an open file, so the lock is released when the process dies, and a second
    acquisition in the same process waits too: never nest it. The lock file is left in place; removing it
    would let a third process lock a new file while the second still holds the old one.
    """
    path = lock_path(data_path, name)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise DatasetLayoutError(f"{name}: cannot create the lock file {path} ({error}); "
                                 "generating or preparing a dataset needs a writable --data-path") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"{name}: waiting for another process that is preparing it ({path})", file=sys.stderr)
                fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


class LockHeld(Exception):
    """Another process holds the lock; `holder` is the note it wrote in the lock file ("" if none yet)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def holding_lock(path: Path, note: str) -> Iterator[None]:
    """Hold the exclusive lock of file `path` (made if missing) without waiting, with `note` (who holds it)
    written in it for the process it refuses; LockHeld if another process holds it, OSError if the file
    cannot be made. As dataset_lock's, it ends with the process that holds it: a crashed holder blocks no one."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockHeld(path, os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip()) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, note.encode(), 0)
        yield
    finally:
        os.close(descriptor)
