"""antimetric.load and `evaluate`: a saved ensemble embeds as training did and scores what training reported."""
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import antimetric
from antimetric.cli import main
from antimetric.errors import ConfigError
from antimetric.retrieval.evaluate_model import evaluate_model
from antimetric.training.run_folder import BEST_FILE, EPOCHS_FILE, FEATURES_FILE, LAST_FILE
from tests.fixtures.datasets import make_cub
from tests.fixtures.images import bomb_png


def _epoch_row(run_dir, epoch):
    with (run_dir / EPOCHS_FILE).open() as handle:
        return next(row for row in csv.DictReader(handle) if int(row["epoch"]) == epoch)


@pytest.mark.parametrize("kind", ["run folder", "best.pt", "last.pt", "study checkpoint folder"])
def test_load_each_local_source_kind(demo_run, kind):
    source = {"run folder": demo_run, "best.pt": demo_run / BEST_FILE, "last.pt": demo_run / LAST_FILE,
              "study checkpoint folder": demo_run.parent / "state"}[kind]
    ensemble = antimetric.load(source, device="cpu")
    best = torch.load(demo_run / BEST_FILE, weights_only=True)
    expected_epoch = best["epoch"] if kind != "last.pt" and kind != "study checkpoint folder" else 2
    assert ensemble.epoch == expected_epoch
    assert ensemble.embedding_dim == 4 * 4 and not ensemble.model.training
    assert ensemble.metrics["test_recall_at_1"] == pytest.approx(float(_epoch_row(demo_run, expected_epoch)
                                                                       ["test_recall_at_1"]))
    assert np.array_equal(ensemble.meta_ids, best["meta_ids"].numpy())


def test_embeddings_equal_the_runs_feature_database(demo_run, demo_data_path):
    ensemble = antimetric.load(demo_run, device="cpu")
    saved = np.load(demo_run / FEATURES_FILE)
    paths = [demo_data_path / "demo" / p for p in saved["query_paths"][:20]]
    features = ensemble.embed(paths, batch_size=7)  # batches that do not divide the count
    assert features.shape == (20, ensemble.embedding_dim) and features.dtype == torch.float32
    assert torch.allclose(features, torch.as_tensor(saved["query_features"][:20]).float(), atol=2e-3)
    per_branch = ensemble.embed(paths[:3], per_branch=True)
    assert per_branch.shape == (3, 4, 4)
    assert torch.allclose(per_branch.norm(dim=-1), torch.ones(3, 4), atol=1e-5)
    assert torch.allclose(per_branch.flatten(1), features[:3], atol=1e-6)


def test_every_image_input_kind_embeds_the_same(demo_run, demo_data_path):
    ensemble = antimetric.load(demo_run, device="cpu")
    path = sorted((demo_data_path / "demo").rglob("*.jpg"))[0]
    image = Image.open(path).convert("RGB")
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    as_uint8 = torch.as_tensor(np.array(image)).permute(2, 0, 1)
    inputs = [path, str(path), encoded.getvalue(), image, as_uint8, as_uint8.float() / 255, as_uint8.long(),
              as_uint8.double() / 255]
    features = ensemble.embed(inputs)
    assert torch.allclose(features, features[0].expand_as(features), atol=1e-5)
    assert ensemble.embed(as_uint8[None]).shape == (1, ensemble.embedding_dim)  # a (b, c, h, w) batch


@pytest.mark.parametrize("tensor, says", [
    (torch.full((3, 8, 8), 200.0), "a float image tensor must hold values in 0..1, not 200..200"),
    (torch.full((3, 8, 8), float("nan")), "a float image tensor must hold values in 0..1, not nan..nan"),
    (torch.full((3, 8, 8), 300), "an integer image tensor must hold values in 0..255, not 300..300"),
], ids=["floats in 0..255", "NaN", "integers over 255"])
def test_an_image_tensor_out_of_its_range_is_a_one_line_error(demo_run, tensor, says):
    """Floats are 0..1, as torchvision's to_tensor gives them; 0..255 floats once embedded silently wrong."""
    ensemble = antimetric.load(demo_run, device="cpu")
    with pytest.raises(ConfigError) as error:
        ensemble.embed(tensor)
    assert says in str(error.value) and "\n" not in str(error.value)


def test_a_decompression_bomb_is_a_one_line_error(demo_run, tmp_path):
    ensemble = antimetric.load(demo_run, device="cpu")
    bomb = bomb_png(14000, 14000)
    (tmp_path / "bomb.png").write_bytes(bomb)
    for image in (bomb, tmp_path / "bomb.png"):
        with pytest.raises(ConfigError) as error:
            ensemble.embed([image])
        assert "more than the 89,478,485 pixels an image may have" in str(error.value), str(error.value)
        assert "\n" not in str(error.value)


def test_evaluate_equals_the_metrics_training_reported(demo_run, demo_data_path, capsys):
    best = torch.load(demo_run / BEST_FILE, weights_only=True)
    reported = {k: float(v) for k, v in _epoch_row(demo_run, best["epoch"]).items() if k.startswith("test_")}
    assert main(["evaluate", "--model", str(demo_run), "--data-path", str(demo_data_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(reported, abs=1e-9)
    last = evaluate_model(antimetric.load(demo_run / LAST_FILE, device="cpu"), demo_data_path)
    assert last == pytest.approx({k: float(v) for k, v in _epoch_row(demo_run, 2).items() if k.startswith("test_")})


def test_bad_sources_are_one_line_errors(demo_run, tmp_path, capsys):
    (tmp_path / "notes.pt").write_bytes(b"not a checkpoint")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    (tmp_path / "empty").mkdir()
    for source, says in ((tmp_path / "missing", "no run folder or checkpoint"),
                         (tmp_path / "notes.pt", "cannot read"),
                         (tmp_path / "other.pt", "not an antimetric checkpoint"),
                         (tmp_path / "empty", "holds no best.pt")):
        with pytest.raises(ConfigError, match=says):
            antimetric.load(source)
        assert main(["evaluate", "--model", str(source)]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and error.count("\n") == 1 and says in error


def test_a_checkpoint_whose_config_says_implementation_auto_loads_as_the_batched_network(demo_run, tmp_path):
    """Checkpoints written before 2026-11-29 say auto, which was the batched network on every device."""
    state = torch.load(demo_run / BEST_FILE, weights_only=True)
    state["config"] = {**state["config"], "implementation": "auto"}
    torch.save(state, tmp_path / BEST_FILE)
    old, new = antimetric.load(tmp_path / BEST_FILE, device="cpu"), antimetric.load(demo_run, device="cpu")
    assert old.config.model.implementation == "batched"
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(old.embed_tensor(images), new.embed_tensor(images))


def test_the_readme_python_example_runs_as_written(demo_run, demo_data_path, tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"In Python, images are.*?```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "my-demo").symlink_to(demo_run)
    (tmp_path / "data").symlink_to(demo_data_path)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    epoch, recall, shape = capsys.readouterr().out.split(" ", 2)
    assert int(epoch) == torch.load(demo_run / BEST_FILE, weights_only=True)["epoch"]
    assert 0 <= float(recall) <= 1 and shape.strip() == "torch.Size([1, 16])"


class _NotAllowed:
    """A class torch.load(weights_only=True) refuses to unpickle."""


def _damaged(state: dict, kind: str):
    """A copy of a best.pt state damaged one way, or bytes for a file that is no checkpoint at all."""
    state = dict(state)
    weights = dict(state["model"])
    first = next(iter(weights))
    if kind == "empty file":
        return b""
    if kind == "text file":
        return b"epoch,loss\n1,0.5\n"
    if kind == "cut short":
        return None
    if kind == "pickled object":
        state["extra"] = _NotAllowed()
    elif kind == "wrong-shape weight":
        weights[first] = torch.zeros(3)
    elif kind == "missing weight":
        weights.pop(first)
    elif kind == "extra weight":
        weights["branches.spare"] = torch.zeros(1)
    elif kind == "weights not a dict":
        weights = "weights"
    elif kind == "config not a dict":
        state["config"] = [1, 2]
    elif kind == "config with a wrong type":
        state["config"] = {**state["config"], "ensemble_size": "four"}
    elif kind == "config with an unknown key":
        state["config"] = {**state["config"], "bogus": 1}
    elif kind == "meta_ids a list":
        state["meta_ids"] = state["meta_ids"].tolist()
    elif kind == "meta_ids of another shape":
        state["meta_ids"] = state["meta_ids"][:1]
    elif kind == "epoch not a number":
        state["epoch"] = "abc"
    elif kind == "metrics not a dict":
        state["metrics"] = "abc"
    elif kind == "not a dict":
        return [state]
    state["model"] = weights
    return state


DAMAGES = ("empty file", "text file", "cut short", "pickled object", "wrong-shape weight", "missing weight",
           "extra weight", "weights not a dict", "config not a dict", "config with a wrong type",
           "config with an unknown key", "meta_ids a list", "meta_ids of another shape", "epoch not a number",
           "metrics not a dict", "not a dict")


@pytest.mark.parametrize("kind", DAMAGES)
def test_every_damaged_checkpoint_is_one_line_naming_the_file(demo_run, tmp_path, capsys, kind):
    damaged = _damaged(torch.load(demo_run / BEST_FILE, weights_only=True), kind)
    path = tmp_path / BEST_FILE
    if kind == "cut short":
        path.write_bytes((demo_run / BEST_FILE).read_bytes()[:1000])
    elif isinstance(damaged, bytes):
        path.write_bytes(damaged)
    else:
        torch.save(damaged, path)
    for source in (path, tmp_path):  # the file, and the run folder holding it
        with pytest.raises(ConfigError, match=re.escape(str(path))):
            antimetric.load(source, device="cpu")
        assert main(["evaluate", "--model", str(source), "--device", "cpu"]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and error.count("\n") == 1, error
        assert str(path) in error and "weights_only" not in error and "can still be loaded" not in error, error


def test_a_file_of_the_run_folder_that_is_no_checkpoint_is_one_line(demo_run, capsys):
    assert main(["evaluate", "--model", str(demo_run / EPOCHS_FILE), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "not a PyTorch checkpoint" in error and str(demo_run / EPOCHS_FILE) in error


def test_evaluate_finds_a_relative_data_path_from_another_folder(demo_run, demo_data_path, tmp_path, monkeypatch,
                                                                  capsys):
    """A run trained with --data-path data --output-dir runs, evaluated from another folder: its data is
    <the folder train ran in>/data, which the run folder's place gives."""
    project = tmp_path / "project"
    (project / "runs" / "r").mkdir(parents=True)
    (project / "data").symlink_to(demo_data_path)
    state = torch.load(demo_run / BEST_FILE, weights_only=True)
    state["config"] = {**state["config"], "data_path": "data", "output_dir": "runs", "run_name": "r"}
    torch.save(state, project / "runs" / "r" / BEST_FILE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", "--model", str(project / "runs" / "r"), "--device", "cpu", "--json"]) == 0
    reported = {k: float(v) for k, v in _epoch_row(demo_run, state["epoch"]).items() if k.startswith("test_")}
    assert json.loads(capsys.readouterr().out) == pytest.approx(reported, abs=1e-9)
    assert list(elsewhere.iterdir()) == []  # no demo generated here
    (project / "runs" / "r" / BEST_FILE).rename(elsewhere / "moved.pt")  # no longer in its run folder
    assert main(["evaluate", "--model", str(elsewhere / "moved.pt"), "--device", "cpu"]) == 2
    assert "--data-path" in capsys.readouterr().err and sorted(p.name for p in elsewhere.iterdir()) == ["moved.pt"]


def test_evaluate_says_in_one_line_how_many_queries_it_left_out(demo_run, tmp_path, capsys):
    """Test classes of one image have nothing to find: left out of every metric, and a warning says so."""
    make_cub(tmp_path / "cub", n_classes=6, per_class=3, size=40)
    images = tmp_path / "cub" / "images.txt"
    rows = [row for row in images.read_text().splitlines() if row.strip()]
    images.write_text("\n".join(row for row in rows if int(row.split()[0]) <= 16) + "\n")  # class 6 keeps 1
    assert main(["evaluate", "--model", str(demo_run), "--data-path", str(tmp_path), "--data-name", "cub",
                 "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "warning: 1 of 7 queries have no other item of their class; they are left out of " \
                           "Recall@K, MAP@R and R-precision\n"
    assert all(0 <= value <= 1 for value in json.loads(captured.out).values())
