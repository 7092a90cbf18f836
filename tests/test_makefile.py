"""`make clean` removes only what can be rebuilt; `make clean-results` lists the results and asks first."""
import shutil
import subprocess
from pathlib import Path

import pytest

from antimetric.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ("runs/demo-1/best.pt", "indexes/gallery/index.json", "mlruns/mlflow.db", "mlruns/optuna.db",
           "mlruns/artifacts/1/model.pt")
REBUILT = (".pytest_cache/v/cache/nodeids", "antimetric/__pycache__/x.pyc", "data/demo/demo-version.txt")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.fixture
def project(tmp_path) -> Path:
    """A folder with the project's Makefile, results, caches, a generated demo and a dataset of the user's."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for relative in (*RESULTS, *REBUILT, "data/cub/images.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("x")
    return tmp_path


def _make(folder: Path, *args: str, answer: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=folder, input=answer, capture_output=True,
                          text=True, timeout=60)


def test_clean_keeps_results_and_a_foreign_dataset(project):
    assert _make(project, "clean").returncode == 0
    assert all((project / relative).exists() for relative in (*RESULTS, "data/cub/images.txt"))
    assert not any((project / relative).exists() for relative in REBUILT)


def test_clean_keeps_a_demo_folder_antimetric_did_not_generate(project):
    (project / "data/demo/demo-version.txt").unlink()
    (project / "data/demo/mine.jpg").write_text("x")
    assert _make(project, "clean").returncode == 0
    assert (project / "data/demo/mine.jpg").exists()


def test_clean_results_lists_and_asks_before_deleting(project):
    declined = _make(project, "clean-results", answer="n\n")  # a choice, not a failure: no "make: *** Error 1"
    assert declined.returncode == 0 and "nothing deleted" in declined.stdout and "Error" not in declined.stderr
    assert all(f"\t{top}\n" in declined.stdout for top in ("runs", "indexes", "mlruns/mlflow.db", "mlruns/optuna.db"))
    assert all((project / relative).exists() for relative in RESULTS)
    accepted = _make(project, "clean-results", "YES=1")
    assert accepted.returncode == 0, accepted.stderr
    assert not any((project / relative).exists() for relative in RESULTS)
    assert (project / "data/cub/images.txt").exists() and (project / "Makefile").exists()


def test_demo_passes_args_through(project):
    shown = _make(project, "-n", "demo", "ARGS=--seed 1 --num-samples 4")
    assert shown.returncode == 0, shown.stderr
    command = [line for line in shown.stdout.splitlines() if "studies.search demo" in line][-1]
    assert command.rstrip().endswith("--seed 1 --num-samples 4"), command


def _demo_command(project: Path) -> list[str]:
    """The study `make demo` starts, with `echo` for Python (and its set-up marked done)."""
    stamp = subprocess.run(["cksum", "pyproject.toml"], cwd=project, capture_output=True, text=True).stdout.split()[0]
    (project / ".venv").mkdir(exist_ok=True)
    (project / f".venv/.installed-{stamp}").write_text("")
    done = _make(project, "demo", f"PY={shutil.which('echo')}", "ARGS=--seed 1")
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1].split()


def test_demo_again_starts_a_new_study_that_is_not_refused(project):
    """A second `make demo` names its study demo-study-2 (the first, demo-study, exists: Ray's tuner.pkl in its
    folder), which check_resume does not refuse; --experiment in ARGS still picks the name."""
    from studies.lifecycle.study import check_resume
    from studies.search import parse_args

    first = _demo_command(project)
    assert first == ["-m", "studies.search", "demo", "--experiment", "demo-study", "--seed", "1"]
    (project / "runs/studies/demo-study").mkdir(parents=True)
    (project / "runs/studies/demo-study/tuner.pkl").write_bytes(b"")
    second = _demo_command(project)
    assert second[:5] == ["-m", "studies.search", "demo", "--experiment", "demo-study-2"]

    def settings(argv):
        return parse_args([*argv[2:], "--data-path", str(project / "data"), "--storage-path",
                           str(project / "runs/studies"), "--tracking-uri", f"sqlite:///{project / 'm.db'}"])
    with pytest.raises(ConfigError, match="a study named demo-study exists"):
        check_resume(settings(first))
    check_resume(settings(second))
