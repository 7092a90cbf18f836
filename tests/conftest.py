import os
from pathlib import Path

import pytest

from antimetric.data.demo import ensure_demo

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def demo_data_path(tmp_path_factory) -> Path:
    """A data folder holding the generated demo dataset (made once per test session)."""
    data_path = tmp_path_factory.mktemp("data")
    ensure_demo(data_path / "demo")
    return data_path
