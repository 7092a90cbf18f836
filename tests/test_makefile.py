"""`make clean` removes only what can be rebuilt; `make clean-results` lists the results and asks first."""
import shutil
import subprocess
from pathlib import Path

import pytest

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
    declined = _make(project, "clean-results", answer="n\n")
    assert declined.returncode != 0 and "nothing deleted" in declined.stdout
    assert all(f"\t{top}\n" in declined.stdout for top in ("runs", "indexes", "mlruns/mlflow.db", "mlruns/optuna.db"))
    assert all((project / relative).exists() for relative in RESULTS)
    accepted = _make(project, "clean-results", "YES=1")
    assert accepted.returncode == 0, accepted.stderr
    assert not any((project / relative).exists() for relative in RESULTS)
    assert (project / "data/cub/images.txt").exists() and (project / "Makefile").exists()
