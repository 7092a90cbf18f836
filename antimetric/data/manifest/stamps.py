"""What tells a changed file without reading it: its size and modification time, from one os.stat.

A file replaced or edited since gets another stamp (copying a dataset without keeping times counts as
a change too); the manifest and the image cache use stamps to notice that they are out of date.
"""

from __future__ import annotations

import os

Stamp = tuple[int, int]  # (st_size, st_mtime_ns)


def file_stamp(path: str | os.PathLike[str]) -> Stamp | None:
    """The file's (size, modification time in ns), or None when it cannot be stat'ed (missing)."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    return (stat.st_size, stat.st_mtime_ns)
