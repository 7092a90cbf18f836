"""Tune's state files of a study, whole after any kill: a kept copy of each set, found cut short and restored.

Ray copies its experiment and searcher state from the driver's staging folder into the study folder file by file
without an atomic rename, so a driver killed during a copy leaves a file cut short there, after which Tune logs
"Failed to restore the run state" and starts the whole study over. At every one of Tune's state saves the staged
files are whole for a moment (studies/compat.py: StateSaveHook); StateKeeper copies them then, as one set, into
KEPT_FOLDER of the study folder (a new folder renamed into place, so a kill leaves the previous set whole), and
--resume puts that set back where Tune reads it when the newest state there is cut short.
"""
from __future__ import annotations

import json
import os
import pickletools
import shutil
from pathlib import Path

from studies.compat import EXPERIMENT_STATE_GLOB, SEARCHER_STATE_GLOB, StateSaveHook

# in a study's (and its confirmation stage's) Tune folder; Tune reads only its own names there
KEPT_FOLDER = ".kept-state"
_PARTIAL = ".partial"


def cut_short_state_files(experiment_path: Path) -> list[Path]:
    """The newest searcher and experiment state that Tune would restore (max() of their names), those a killed
    driver left truncated. The check parses the files' structure only: pickle opcodes are listed without building
    any object."""
    newest = [max(found) for found in (list(experiment_path.glob(pattern))
                                       for pattern in (SEARCHER_STATE_GLOB, EXPERIMENT_STATE_GLOB)) if found]
    return [path for path in newest if not _whole(path)]


def _whole(path: Path) -> bool:
    """Whether a state file parses to its end: JSON for .json, the pickle's opcodes (no object built) otherwise."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        else:
            with path.open("rb") as handle:
                for _ in pickletools.genops(handle):
                    pass
    except (ValueError, OSError):
        return False
    return True


def keep_state(staging: Path, experiment_path: Path) -> None:
    """Copy the files at the top of Tune's staging folder (whole now) into the study folder's KEPT_FOLDER as one
    set: a new numbered folder, renamed into place when complete; the older sets are removed after."""
    files = [path for path in staging.iterdir() if path.is_file() and not path.name.startswith("tmp-")]
    if not files:
        return
    root = experiment_path / KEPT_FOLDER
    root.mkdir(exist_ok=True)
    older = _kept_sets(root)
    number = int(older[-1].name) + 1 if older else 1
    partial = root / f"{number}{_PARTIAL}"
    shutil.rmtree(partial, ignore_errors=True)  # our own, left by a kill during a copy
    partial.mkdir()
    for path in files:
        shutil.copyfile(path, partial / path.name)
    os.rename(partial, root / str(number))
    for path in older:
        shutil.rmtree(path, ignore_errors=True)


def _kept_sets(root: Path) -> list[Path]:
    """The complete sets in `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted((path for path in root.iterdir() if path.name.isdigit() and path.is_dir()), key=lambda p: int(p.name))


def restore_kept_state(experiment_path: Path, cut_short: list[Path]) -> bool:
    """Put the newest kept set back into `experiment_path` when it holds a whole copy of every `cut_short` file (the
    same names: the same session's state); each file replaced by a rename. Whether it did."""
    sets = _kept_sets(experiment_path / KEPT_FOLDER)
    if not sets or not all((sets[-1] / path.name).is_file() and _whole(sets[-1] / path.name) for path in cut_short):
        return False
    for kept in sets[-1].iterdir():
        restoring = experiment_path / f"tmp-{kept.name}.restoring"
        shutil.copyfile(kept, restoring)
        os.replace(restoring, experiment_path / kept.name)
    return True


class StateKeeper(StateSaveHook):
    """A Tune callback that keeps each whole set of Tune's staged state files (keep_state)."""

    def on_state_saved(self, staging: Path, experiment_path: Path) -> None:
        keep_state(staging, experiment_path)
