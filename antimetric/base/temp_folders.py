"""Hidden work folders beside a target (an index being built, an old index being removed), each locked by
the process that writes it, so that one left behind by a killed process is recognised and removed.

A work folder `.NAME.XXXX.SUFFIX` holds a lock file that its writer keeps locked (flock) until it is done;
the lock belongs to the open file, so it is released when the writer dies, however it dies. The next run
for the same target removes every such folder whose lock it can take. A folder without the lock file is
left alone: it is one being made this instant, or one from a version that wrote no lock, whose writer
cannot be told dead.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows has no flock: stale folders are not recognised there, and none is removed
    fcntl = None

LOCK_FILE = ".antimetric-writing"


class WorkFolder:
    """A new hidden folder beside `target`, locked until close(); remove() deletes it."""

    def __init__(self, target: Path, suffix: str) -> None:
        target = Path(target)
        self.path = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix))
        self._descriptor = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX)

    def finish(self) -> None:
        """Before the folder is renamed into place: its lock file goes (the folder no longer looks like a work
        folder to a cleaner, and the target gets no stray file), then the lock is let go."""
        (self.path / LOCK_FILE).unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)


def remove_stale(target: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Remove the work folders of `target` whose writer is gone; returns the folders removed."""
    target = Path(target)
    if fcntl is None or not target.parent.is_dir():
        return []
    removed = []
    for suffix in suffixes:
        for folder in target.parent.glob(f".{target.name}.*{suffix}"):
            if not folder.is_symlink() and folder.is_dir() and _writer_gone(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _writer_gone(folder: Path) -> bool:
    try:
        descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:  # no lock file: not ours to judge
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(descriptor)
    return True
