"""Fixtures shared by every test (session data, a short real training run); the functions tests import are in
tests/fixtures/."""
import os

# One thread per process in every test and in the processes tests start (set before torch is imported, inherited by
# subprocesses and Ray's workers): `make test` runs two test processes on two cores, and a test that compares one
# process with several computes both alike (torch's sums depend on its thread count).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from antimetric.data.demo import ensure_demo  # noqa: E402
from tests.fixtures.datasets import make_cub  # noqa: E402
from tests.fixtures.memory import TESTS_MEMORY_GIB, set_available_memory  # noqa: E402
from tests.fixtures.xdist_groups import file_scheduler  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The files whose tests read the session's smoke study (tests/studies/conftest.py): one test process runs them all,
# so that the study is made once. Checked against the tests at each collection.
SMOKE_STUDY_FILES = ("tests/studies/test_search.py", "tests/studies/record/test_model_registry.py",
                     "tests/studies/record/test_serve.py")
SMOKE_STUDY_GROUP = "smoke-study"


def pytest_collection_modifyitems(config, items) -> None:
    """The files with slow tests first, so that under pytest-xdist (`make test`) the longest studies do not start last
    while the other test process idles; and SMOKE_STUDY_FILES kept true."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
    readers = {item.nodeid.split("::", 1)[0] for item in items if "smoke_study" in getattr(item, "fixturenames", ())}
    if not readers <= set(SMOKE_STUDY_FILES):
        raise pytest.UsageError(f"tests/conftest.py: add {sorted(readers - set(SMOKE_STUDY_FILES))} to "
                                "SMOKE_STUDY_FILES: they read the session's smoke study")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test`: each test file one unit of work, SMOKE_STUDY_FILES one (tests/fixtures/xdist_groups.py)."""
    return file_scheduler(config, log, {SMOKE_STUDY_GROUP: SMOKE_STUDY_FILES})


@pytest.fixture(scope="session")
def demo_data_path(tmp_path_factory) -> Path:
    """A data folder holding the generated demo dataset (made once per test session)."""
    data_path = tmp_path_factory.mktemp("data")
    ensure_demo(data_path / "demo")
    return data_path


@pytest.fixture(scope="module")
def cub_path(tmp_path_factory) -> Path:
    """A data folder holding a small CUB layout: 16 classes of 6 images (6 train, 2 validation and 8 test
    classes), for runs that must finish in seconds. One per test module."""
    data = tmp_path_factory.mktemp("data")
    make_cub(data / "cub", n_classes=16, per_class=6, size=40)
    return data


@pytest.fixture(scope="session")
def demo_run(demo_data_path, tmp_path_factory) -> Path:
    """The folder of a short real training run on the demo dataset (2 epochs, best epoch chosen on a
    validation split), with a study-style checkpoint folder of its last epoch in `<run>/../state`.
    Shared by the tests of what uses a trained ensemble: read it, never change it."""
    from antimetric.training.config import RunConfig
    from antimetric.training.loop import fit

    out = tmp_path_factory.mktemp("demo-run")
    config = RunConfig.from_flat(dict(data_name="demo", data_path=str(demo_data_path), output_dir=str(out),
                                      run_name="run", ensemble_size=4, meta_class_size=4, num_epochs=2, lr=3e-3,
                                      val_fraction=0.2, seed=0))

    def keep_state(result, save) -> None:  # a truthy return would stop training
        save(out / "state")
    return fit(config, keep_state).run_dir


@pytest.fixture(scope="session")
def _memory_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("memory")


@pytest.fixture(autouse=True)
def fixed_available_memory(monkeypatch, _memory_folder) -> None:
    """The memory checks in the tests' own process read TESTS_MEMORY_GIB available, not what other processes leave
    free at the moment (a test of the check sets its own figure; processes a test starts read the machine's)."""
    set_available_memory(monkeypatch, _memory_folder, TESTS_MEMORY_GIB)
