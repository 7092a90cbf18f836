"""The command line: exit codes, one-line errors, --json output; through antimetric.cli.main in the tests'
process, and once as a real `python -m antimetric`."""
import json

import pytest

from tests.fixtures.cli import assert_one_line_error, run, run_process
from tests.fixtures.datasets import make_cub, make_inshop


def test_prepare_json_summary(tmp_path):
    written = make_inshop(tmp_path / "isc", n_classes=4)
    proc = run("prepare", "--data-path", str(tmp_path), "--data-name", "isc", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["splits"] == written["splits"] and summary["unreadable"] == 0
    assert (tmp_path / "isc" / "antimetric-manifest.json").is_file()


@pytest.mark.slow  # starts `python -m antimetric`
def test_prepare_missing_layout(tmp_path):
    """From the command line, in a process of its own: the exit status and the one line a user sees."""
    (tmp_path / "cub").mkdir()
    assert_one_line_error(run_process("prepare", "--data-path", str(tmp_path), "--data-name", "cub"),
                          "images.txt", "CUB-200-2011", "caltech")


def test_profile_json():
    proc = run("profile", "--backbone", "resnet18", "--ensemble-size", "48", "--meta-class-size", "12",
               "--share-type", "layer1", "--with-fc", "--json")
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout)
    assert counts["params"] == 529_365_376 and counts["flops"] > 0
    assert counts["embedding_dims"] == 48 * 12
    assert counts["gflops_per_image"] == pytest.approx(2 * counts["flops"] / 1e9, rel=0.01)  # thop adds BatchNorm


@pytest.mark.parametrize("args,needles", [
    (["--data-name", "cub", "--meta-class-size", "50", "--no-pretrained"], ["--meta-class-size 50", "3 training"]),
    (["--data-name", "cub", "--meta_class_size", "2", "--ensemble_size", "1", "--no-pretrained"], ["2 codes"]),
    (["--data-name", "cub", "--recalls", "1,x"], ["--recalls"]),
    (["--data-name", "cub", "--load-ids"], ["--load-ids", "no earlier cub run"]),
    (["--data-name", "cub", "--crop-type", "cropped", "--data-path", "nowhere"], ["missing images.txt"]),
    (["--data-name", "cub", "--device", "cuda:0", "--no-pretrained"], ["CUDA"]),
    (["--data-name", "cub", "--ensemble-size", "1000000000"], ["--ensemble-size must be at most 1024"]),
    (["--data-name", "cub", "--image-size", "100000"], ["--image-size must be at most 4096"]),
    (["--data-name", "cub", "--no-pretrained", "--ensemble-size", "1024", "--image-size", "4096", "--batch-size",
      "256", "--device", "cpu"], ["this run needs about", "but the cpu has", "lower --batch-size"]),
])
def test_train_bad_input(tmp_path, args, needles):
    make_cub(tmp_path / "data" / "cub", n_classes=6)
    proc = run("train", "--data-path", str(tmp_path / "data"), "--output-dir", str(tmp_path / "runs"),
               "--backbone", "tiny", *args)
    if "cuda" in args[-2:][0] and "CUDA" not in proc.stderr and proc.returncode == 0:
        pytest.skip("a CUDA device is present")
    assert_one_line_error(proc, *needles)


def test_train_seed_options_on_a_real_layout(tmp_path):
    """The seed's underscore options, --no-train, and --load-ids reusing the run's meta-class ids."""
    make_cub(tmp_path / "data" / "cub", n_classes=8, per_class=4, size=32)
    common = ["train", "--data_path", str(tmp_path / "data"), "--data_name", "cub", "--backbone_type", "tiny",
              "--ensemble_size", "3", "--meta_class_size", "2", "--batch_size", "4", "--num_epochs", "1",
              "--image-size", "32", "--no-pretrained", "--output-dir", str(tmp_path / "runs"), "--json", "--quiet"]
    first = run(*common, "--with_fc", "--run-name", "first")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["test_recall_at_1"] <= 1.0 and result["best_epoch"] == 1
    second = run(*common, "--with_fc", "--no-train", "--load_ids", "--run-name", "second")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.strip().splitlines()[-1])["best_epoch"] == 0
    ids = [json.loads((tmp_path / "runs" / name / "meta_ids.json").read_text()) for name in ("first", "second")]
    assert ids[0] == ids[1]


def test_a_diverged_run_is_an_error_not_a_perfect_score(demo_data_path, tmp_path):
    """--lr 1e20 made the loss NaN, and NaN embeddings scored Recall@1 = 1, kept as the best epoch."""
    proc = run("train", "--data-path", str(demo_data_path), "--output-dir", str(tmp_path), "--run-name", "r",
               "--num-epochs", "1", "--ensemble-size", "4", "--meta-class-size", "4", "--image-size", "32",
               "--batch-size", "16", "--val-fraction", "0.2", "--max-per-class", "8", "--lr", "1e20")
    assert_one_line_error(proc, "epoch 1: the training loss became nan", "lower --lr (it was 1e+20)")
    assert not (tmp_path / "r" / "best.pt").exists()
