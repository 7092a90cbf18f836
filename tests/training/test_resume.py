"""A resumed run repeats the uninterrupted one exactly: from a run folder's last.pt (train --resume)
and from a checkpoint folder (what a study's trial resumes from)."""
import csv
import json
import subprocess
import sys

import pytest
import torch

from antimetric.errors import ConfigError
from antimetric.training.config import RunConfig
from antimetric.training.loop import fit, resume_run
from antimetric.training.run_folder import BEST_FILE, CONFIG_FILE, EPOCHS_FILE, LAST_FILE
from tests.fixtures.cli import assert_one_line_error, run

# with_random draws branch weights from torch's generator every step: resuming must restore it too.
SMALL = dict(data_name="cub", backbone="tiny", pretrained=False, ensemble_size=3, meta_class_size=4, image_size=32,
             batch_size=8, num_epochs=3, lr=3e-3, val_fraction=0.2, with_random=True, seed=5)


pytestmark = pytest.mark.slow  # each test trains twice, or starts `python -m antimetric`


def _config(data_path, out, run_name, **values):
    return RunConfig.from_flat({**SMALL, "data_path": str(data_path), "output_dir": str(out), "run_name": run_name,
                                **values})


def _losses(run_dir):
    return [(row["epoch"], row["loss"], row["val_recall_at_1"]) for row in csv.DictReader((run_dir / EPOCHS_FILE).open())]


def _timings(row):
    return {k: v for k, v in row.items() if k in ("images_per_s", "epoch_seconds", "eval_seconds")}


def _assert_same_weights(a, b, names=(BEST_FILE, LAST_FILE)):
    for name in names:
        first, second = (torch.load(folder / name, weights_only=True) for folder in (a, b))
        assert first["epoch"] == second["epoch"]
        for key, tensor in first["model"].items():
            assert torch.equal(tensor, second["model"][key]), (name, key)


@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_a_run_folder_repeats_the_uninterrupted_run(cub_path, tmp_path, workers):
    whole = fit(_config(cub_path, tmp_path, "whole", num_workers=workers))
    cut = fit(_config(cub_path, tmp_path, "cut", num_workers=workers), lambda result, save: True)
    assert [row["epoch"] for row in cut.history] == [1]
    config_file = cut.run_dir / CONFIG_FILE
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**saved, "implementation": "auto"}))  # as written before 2026-11-29
    resumed = resume_run(cut.run_dir)
    assert json.loads(config_file.read_text()) == saved  # auto was the batched network
    assert resumed.run_dir == cut.run_dir and [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert _losses(cut.run_dir) == _losses(whole.run_dir)
    _assert_same_weights(cut.run_dir, whole.run_dir)


def test_resuming_a_checkpoint_repeats_the_uninterrupted_run(cub_path, tmp_path):
    """What a study's trial does: state saved through the epoch callback, resumed in a new run folder."""
    whole = fit(_config(cub_path, tmp_path, "whole", num_epochs=2))
    checkpoint = tmp_path / "checkpoint"
    fit(_config(cub_path, tmp_path, "first", num_epochs=2), lambda result, save: save(checkpoint) or True,
        write_last=False)
    assert not (tmp_path / "first" / LAST_FILE).exists()
    second = fit(_config(cub_path, tmp_path, "second", num_epochs=2), resume_from=checkpoint)
    assert second.history == [{**row, **_timings(second.history[i])} for i, row in enumerate(whole.history)]
    assert second.best_epoch == whole.best_epoch
    _assert_same_weights(second.run_dir, whole.run_dir, names=(LAST_FILE,))


# `python -m antimetric` whose process gets SIGINT (Ctrl-C) right after it printed epoch 1: at that one point
# whatever the machine's load, where a signal from the test, sent once it read the line, could come after the last
# epoch on a busy machine (the run then ended 0).
CTRL_C_AFTER_EPOCH_1 = """
import os, signal, sys
from antimetric import cli
printer = cli._epoch_printer
def interrupting_printer(args):
    report = printer(args)
    def report_then_ctrl_c(result, save):
        report(result, save)
        if result.epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)
    return report_then_ctrl_c
cli._epoch_printer = interrupting_printer
sys.exit(cli.main(sys.argv[1:]))
"""


def test_ctrl_c_then_train_resume_from_the_command_line(cub_path, tmp_path):
    args = ["train", "--data-path", str(cub_path), "--data-name", "cub", "--backbone", "tiny", "--no-pretrained",
            "--output-dir", str(tmp_path), "--run-name", "r", "--num-epochs", "4", "--ensemble-size", "3",
            "--meta-class-size", "4", "--image-size", "32", "--batch-size", "8"]
    interrupted = subprocess.run([sys.executable, "-c", CTRL_C_AFTER_EPOCH_1, *args], capture_output=True, text=True,
                                 timeout=300)
    assert interrupted.returncode == 130, interrupted.stderr
    assert interrupted.stdout.splitlines()[-1].startswith("epoch 1:"), interrupted.stdout
    assert f"continue with: python -m antimetric train --resume {tmp_path / 'r'}" in interrupted.stderr, \
        interrupted.stderr
    assert int(torch.load(tmp_path / "r" / LAST_FILE, weights_only=True)["epoch"]) == 1

    refused = run("train", "--resume", str(tmp_path / "r"), "--lr", "0.1")
    assert_one_line_error(refused, "--resume continues a run with its own config.json; drop --lr")
    again = run("train", "--resume", str(tmp_path / "r"), "--num-workers", "0", "--quiet", "--json")
    assert again.returncode == 0, again.stderr
    epochs = [int(row["epoch"]) for row in csv.DictReader((tmp_path / "r" / EPOCHS_FILE).open())]
    assert epochs == [1, 2, 3, 4]


def test_resume_needs_a_run_that_finished_an_epoch(tmp_path):
    assert_one_line_error(run("train", "--resume", str(tmp_path)), "no config.json in")


@pytest.mark.parametrize("kind", ["empty", "no optimizer", "tracker a list", "wrong-shape weight", "epoch a text"])
def test_a_damaged_last_pt_is_one_line_naming_it(cub_path, tmp_path, kind):
    cut = fit(_config(cub_path, tmp_path, "cut", num_epochs=2), lambda result, save: True)
    last = cut.run_dir / LAST_FILE
    state = torch.load(last, weights_only=True)
    if kind == "empty":
        last.write_bytes(b"")
    else:
        if kind == "no optimizer":
            del state["optimizer"]
        elif kind == "tracker a list":
            state["tracker"] = []
        elif kind == "wrong-shape weight":
            first = next(iter(state["model"]))
            state["model"][first] = torch.zeros(2)
        else:
            state["epoch"] = "abc"
        torch.save(state, last)
    with pytest.raises(ConfigError, match=str(last)) as raised:
        resume_run(cut.run_dir)
    assert "\n" not in str(raised.value) and "weights_only" not in str(raised.value)
