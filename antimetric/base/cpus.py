"""How many CPUs this process may use: the one count the core's data loaders and the studies' trials share."""
from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's or `taskset`'s share), which may be fewer
    than the machine has."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
