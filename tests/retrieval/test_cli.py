"""`python -m antimetric index` and `retrieve` on the demo dataset, through antimetric.cli.main."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from antimetric.cli import main
from antimetric.data.readers import read_dataset
from antimetric.retrieval.gallery_index import read_index
from antimetric.retrieval.trained import load
from tests.fixtures.folders import make_fifo


def run_json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def one_line_error(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def demo_index(demo_run, demo_data_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("indexes") / "demo"
    assert main(["index", "--model", str(demo_run), "--images", str(demo_data_path / "demo"), "--out", str(out),
                 "--device", "cpu"]) == 0
    return out


def test_retrieve_returns_a_known_query_first_and_the_brute_force_top_k(demo_run, demo_index, capsys):
    index = read_index(demo_index)
    assert index.info["dataset"] == "demo" and index.info["images"] == 900 and index.info["model"] == str(demo_run)
    position = 37
    query = index.file(position)
    result = run_json(capsys, "retrieve", "--index", str(demo_index), "--query", str(query), "--top-k", "6")
    (answer,) = result["queries"]
    assert answer["query"] == str(query) and answer["index_position"] == position
    label = index.labels[position]
    assert answer["label"] == str(label)
    first = answer["neighbours"][0]
    assert first["path"] == str(query) and first["is_query"] and first["correct"] is True
    assert first["similarity"] == pytest.approx(1.0, abs=2e-3)
    # brute force: the query's own embedding against every stored row, dot / ensemble_size
    embedded = load(demo_run, device="cpu").embed([query]).numpy()[0]
    sims = index.embeddings.astype(np.float32) @ embedded / 4
    expected = np.argsort(-sims, kind="stable")[:6]
    assert [n["index_position"] for n in answer["neighbours"]] == expected.tolist()
    np.testing.assert_allclose([n["similarity"] for n in answer["neighbours"]], sims[expected], atol=1e-5)
    assert [n["correct"] for n in answer["neighbours"]] == (index.labels[expected] == label).tolist()
    assert [n["rank"] for n in answer["neighbours"]] == [1, 2, 3, 4, 5, 6]


def test_retrieve_prints_each_query_and_marks_the_query_itself(demo_index, capsys):
    index = read_index(demo_index)
    assert main(["retrieve", "--index", str(demo_index), "--query", str(index.file(5)), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"query {index.file(5)} (label {index.labels[5]}; in the index as #5)"
    assert lines[1].split()[:5] == ["rank", "cosine", "same", "label", "path"]
    rank, cosine, same = lines[2].split()[:3]
    # itself at cosine 1, up to bf16 arithmetic (the index embedded it in a larger batch)
    assert len(lines) == 5 and (rank, same) == ("1", "yes") and float(cosine) > 0.999
    assert lines[2].endswith("(the query)")
    assert "(the query)" not in "".join(lines[3:])


def test_a_dataset_image_outside_the_index_has_its_label(demo_data_path, demo_index, capsys):
    record = read_dataset("demo", demo_data_path / "demo").split("train")[0]  # a training class's image
    train_image = demo_data_path / "demo" / record.path
    answer = run_json(capsys, "retrieve", "--index", str(demo_index), "--query", str(train_image),
                      "--top-k", "4")["queries"][0]
    assert answer["label"] == str(record.label) and answer["index_position"] is None
    assert [n["correct"] for n in answer["neighbours"]] == [False] * 4  # test classes are other classes
    assert not any(n["is_query"] for n in answer["neighbours"])


def test_a_folder_index_labels_queries_by_subfolder_name(demo_run, demo_data_path, tmp_path, capsys):
    images = demo_data_path / "demo"
    test_classes = sorted({r.path.split("/")[0] for r in read_dataset("demo", images).split("test")})
    gallery, queries = tmp_path / "gallery", tmp_path / "queries"
    for folder, name in ((test_classes[0], "c31"), (test_classes[1], "c32")):
        files = sorted(images.glob(f"{folder}/*.jpg"))
        for file in files[:5]:
            (gallery / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(file, gallery / name / file.name)
        (queries / name).mkdir(parents=True)
        shutil.copy(files[5], queries / name / files[5].name)
    (queries / "unknown").mkdir()
    shutil.copy(sorted(images.glob(f"{test_classes[9]}/*.jpg"))[0], queries / "unknown" / "x.jpg")
    summary = run_json(capsys, "index", "--model", str(demo_run), "--images", str(gallery), "--out",
                       str(tmp_path / "index"))
    assert summary["images"] == 10 and summary["labelled"] and summary["dataset"] is None
    result = run_json(capsys, "retrieve", "--index", str(tmp_path / "index"), "--query", str(queries),
                      "--top-k", "10")
    by_label = {answer["label"]: answer for answer in result["queries"]}
    assert set(by_label) == {"c31", "c32", None}
    for name in ("c31", "c32"):
        neighbours = by_label[name]["neighbours"]
        assert [n["correct"] for n in neighbours] == [n["label"] == name for n in neighbours]
        assert sum(n["correct"] for n in neighbours) == 5
    assert {n["correct"] for n in by_label[None]["neighbours"]} == {None}


def test_grid_picture(demo_index, tmp_path, capsys):
    index = read_index(demo_index)
    queries = tmp_path / "queries"
    queries.mkdir()
    for position in (0, 400, 899):
        shutil.copy(index.file(position), queries / f"q{position}.jpg")
    grid = tmp_path / "grid.png"
    assert main(["retrieve", "--index", str(demo_index), "--query", str(queries), "--top-k", "5",
                 "--grid", str(grid)]) == 0
    assert f"grid of 3 of 3 queries written to {grid}" in capsys.readouterr().out
    with Image.open(grid) as picture:
        assert picture.format == "PNG" and picture.width > 6 * 112 and picture.height > 3 * 112


def test_bad_input_is_one_line_before_any_model_is_loaded(demo_index, demo_data_path, tmp_path, capsys):
    missing_model = str(tmp_path / "no-model")  # loading it would fail: each error below comes first
    index, query = str(demo_index), str(read_index(demo_index).file(0))
    retrieve = ["retrieve", "--model", missing_model]
    assert "no such folder" in one_line_error(capsys, *retrieve, "--index", str(tmp_path / "nope"), "--query", query)
    (tmp_path / "plain").mkdir()
    assert "not an antimetric index" in one_line_error(capsys, *retrieve, "--index", str(tmp_path / "plain"),
                                                       "--query", query)
    assert "no such image or folder" in one_line_error(capsys, *retrieve, "--index", index, "--query",
                                                       str(tmp_path / "q.jpg"))
    assert "--top-k 0" in one_line_error(capsys, *retrieve, "--index", index, "--query", query, "--top-k", "0")
    assert "cannot write" in one_line_error(capsys, *retrieve, "--index", index, "--query", query, "--grid",
                                            str(tmp_path / "missing" / "g.png"))
    assert "no images found" in one_line_error(capsys, *retrieve, "--index", index, "--query", str(tmp_path / "plain"))
    indexing = ["index", "--model", missing_model, "--images", str(demo_data_path / "demo")]
    assert "already holds an index; pass --force" in one_line_error(capsys, *indexing, "--out", index)
    assert "not an antimetric index" in one_line_error(capsys, *indexing, "--out", str(tmp_path / "plain"),
                                                       "--force")
    assert "--images" in one_line_error(capsys, "index", "--model", missing_model, "--images",
                                        str(tmp_path / "none"), "--out", str(tmp_path / "new"))
    assert "no run folder or checkpoint" in one_line_error(capsys, *indexing, "--out", str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_grid_never_replaces_a_file_it_did_not_write(demo_index, tmp_path, capsys):
    query = str(read_index(demo_index).file(0))
    retrieve = ["retrieve", "--index", str(demo_index), "--query", query, "--top-k", "2", "--grid"]
    precious = tmp_path / "best.pt"
    precious.write_bytes(b"weights")
    assert "not a grid antimetric wrote" in one_line_error(capsys, *retrieve, str(precious))
    assert precious.read_bytes() == b"weights"
    picture = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(picture)  # a PNG, but not one of ours
    assert "not a grid antimetric wrote" in one_line_error(capsys, *retrieve, str(picture))
    (tmp_path / "link.png").symlink_to(precious)
    assert "not a grid antimetric wrote" in one_line_error(capsys, *retrieve, str(tmp_path / "link.png"))
    grid = tmp_path / "grid.png"
    for _ in range(2):  # a grid it wrote is replaced by the next one
        assert main([*retrieve, str(grid)]) == 0
    assert precious.read_bytes() == b"weights" and (tmp_path / "link.png").is_symlink()


def test_index_force_keeps_files_an_index_does_not_write(demo_run, tmp_path, capsys):
    gallery = tmp_path / "gallery" / "c"
    gallery.mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(gallery / "a.png")
    Image.new("RGB", (40, 40), (10, 200, 10)).save(gallery / "b.png")
    indexing = ["index", "--model", str(demo_run), "--images", str(tmp_path / "gallery"), "--out",
                str(tmp_path / "index"), "--device", "cpu"]
    assert main(indexing) == 0
    (tmp_path / "index" / "notes.txt").write_text("mine")
    error = one_line_error(capsys, *indexing, "--force")
    assert "notes.txt" in error and "--force" in error
    assert (tmp_path / "index" / "notes.txt").read_text() == "mine" and read_index(tmp_path / "index").info
    (tmp_path / "index" / "notes.txt").unlink()
    assert main([*indexing, "--force"]) == 0


def test_a_fifo_among_the_queries_is_skipped_with_a_reason(demo_index, tmp_path, capsys):
    queries = tmp_path / "queries"
    queries.mkdir()
    shutil.copy(read_index(demo_index).file(0), queries / "a.jpg")
    make_fifo(queries / "b.jpg")
    result = run_json(capsys, "retrieve", "--index", str(demo_index), "--query", str(queries), "--top-k", "2")
    assert [Path(answer["query"]).name for answer in result["queries"]] == ["a.jpg"]
    assert result["skipped_count"] == 1 and "not a regular file" in result["skipped"][0]["reason"]


def test_file_names_are_printed_without_control_characters(demo_index, tmp_path, capsys):
    queries = tmp_path / "queries"
    queries.mkdir()
    shutil.copy(read_index(demo_index).file(0), queries / "two\nlines.jpg")
    assert main(["retrieve", "--index", str(demo_index), "--query", str(queries), "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("query ") and lines[0].endswith("two\\nlines.jpg (label unknown)")
    assert len(lines) == 3


@pytest.mark.parametrize("command", ["evaluate", "index", "retrieve"])
def test_an_unknown_device_is_one_line(demo_run, demo_index, demo_data_path, tmp_path, capsys, command):
    argv = {"evaluate": ["evaluate", "--model", str(demo_run)],
            "index": ["index", "--model", str(demo_run), "--images", str(demo_data_path / "demo"), "--out",
                      str(tmp_path / "new")],
            "retrieve": ["retrieve", "--index", str(demo_index), "--query", str(read_index(demo_index).file(0))]}
    assert "--device must be auto, cpu, cuda or cuda:N, got 'tpu'" in one_line_error(capsys, *argv[command],
                                                                                      "--device", "tpu")
