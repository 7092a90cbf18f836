"""Result files are written whole or not at all: to a temporary file beside the target, then renamed."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
import torch


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates it private (0600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(payload, handle, indent=1)


def write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def torch_save(path: Path, obj: Any) -> None:
    """torch.save of tensors and plain containers, readable with torch.load(weights_only=True).

    A failed write raises the OSError (disk full, say), which torch.save wraps in a RuntimeError."""
    with atomic_open(path, "wb") as handle:
        try:
            torch.save(obj, handle)
        except RuntimeError as error:
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """An .npz of plain arrays (strings as unicode arrays), readable with allow_pickle=False."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)
