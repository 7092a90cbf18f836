"""A run's folder is its own: never shared with another run, checked writable before data is read,
and every failure to write it is one line that leaves earlier files whole."""
import resource
import signal
import subprocess
import sys

import pytest

from antimetric.data.manifest.prepare import load_or_prepare
from antimetric.data.readers.source import benchmark
from antimetric.errors import ConfigError
from antimetric.training.config import RunConfig
from antimetric.training.run_folder import CONFIG_FILE, RETRIEVALS_FILE, OutputError, create_run_dir
from tests.fixtures.cli import assert_one_line_error, run
from tests.fixtures.folders import read_only_folder


def _config(tmp_path, **values):
    return RunConfig.from_flat({"output_dir": str(tmp_path / "runs"), **values})


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    folders = [create_run_dir(_config(tmp_path)) for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() for f in folders)
    assert folders[1].name == folders[0].name + "-2"


def test_a_reused_run_name_needs_the_flag_and_keeps_what_the_run_did_not_write(tmp_path):
    first = create_run_dir(_config(tmp_path, run_name="r"))
    (first / CONFIG_FILE).write_text("{}")
    (first / "best.pt").write_text("old weights")
    (first / RETRIEVALS_FILE).write_text("old picture")
    (first / "notes.txt").write_text("the user's")
    with pytest.raises(ConfigError, match="run folder .* exists; choose another --run-name, or pass --reuse-run-name"):
        create_run_dir(_config(tmp_path, run_name="r"))
    assert (first / "best.pt").read_text() == "old weights"
    again = create_run_dir(_config(tmp_path, run_name="r", reuse_run_name=True))
    assert again == first and not (first / "best.pt").exists() and not (first / CONFIG_FILE).exists()
    assert not (first / RETRIEVALS_FILE).exists()
    assert (first / "notes.txt").read_text() == "the user's"


def test_a_folder_that_is_not_a_run_is_never_reused(tmp_path):
    (tmp_path / "runs" / "photos").mkdir(parents=True)
    (tmp_path / "runs" / "photos" / "cat.jpg").write_text("x")
    with pytest.raises(ConfigError, match="not a run folder"):
        create_run_dir(_config(tmp_path, run_name="photos", reuse_run_name=True))
    assert (tmp_path / "runs" / "photos" / "cat.jpg").exists()


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write --output-dir"):
        create_run_dir(_config(tmp_path))


def test_a_read_only_output_dir_fails_before_any_data_is_read(tmp_path):
    with read_only_folder(tmp_path / "readonly") as out:
        # --data-path points nowhere: the output folder must be refused first
        proc = run("train", "--data-name", "cub", "--data-path", str(tmp_path / "nowhere"), "--output-dir", str(out),
                   "--no-pretrained")
    assert_one_line_error(proc, "cannot write", str(out))


def _small_files_only():
    """In the child: files over 64 KiB cannot be written (EFBIG), as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.slow
def test_an_output_folder_that_fills_up_is_one_line_and_loses_nothing(demo_data_path, tmp_path):
    load_or_prepare(benchmark("demo", demo_data_path), progress=False)  # the manifest exists before the limit applies
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "antimetric", "train", "--data-path", str(demo_data_path), "--output-dir", str(out),
         "--run-name", "full", "--num-epochs", "1", "--ensemble-size", "4", "--meta-class-size", "4",
         "--image-size", "32", "--max-per-class", "6", "--quiet"],
        capture_output=True, text=True, timeout=300, preexec_fn=_small_files_only)
    assert_one_line_error(proc, "cannot write the run folder", "full")
    run_dir = out / "full"
    assert (run_dir / CONFIG_FILE).is_file()  # written before the failing weights file
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
