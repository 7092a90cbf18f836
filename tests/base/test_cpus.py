"""CPUs are counted once, by what this process may run on: the core's loader workers and a study's trials agree."""
import os
import re
from pathlib import Path

import pytest

from antimetric.base.cpus import available_cpus
from antimetric.data.loading import num_workers

ROOT = Path(__file__).resolve().parents[2]
# Counts left to their owners: the manifest's decode threads (the machine's CPUs, at most 8; issue 21's lead owns
# antimetric/data/ now). Each should read available_cpus().


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this system")
def test_cpus_are_those_of_the_affinity_mask_not_the_machine():
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})
    try:
        assert available_cpus() == 1
        assert num_workers(None) == 0  # decoding in the main process on 2 cores or fewer
    finally:
        os.sched_setaffinity(0, mask)
    assert available_cpus() == len(mask)


def test_one_function_counts_cpus():
    counting = [f"{path.relative_to(ROOT)}:{number}" for folder in ("antimetric", "studies")
                for path in sorted((ROOT / folder).rglob("*.py")) if path != ROOT / "antimetric/base/cpus.py"
                for number, line in enumerate(path.read_text().splitlines(), 1)
                if re.search(r"sched_getaffinity|cpu_count\(", line)]
    assert not counting, f"CPUs counted outside antimetric/base/cpus.py: {counting}"
