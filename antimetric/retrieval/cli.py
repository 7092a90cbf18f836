"""`python -m antimetric index` (embed a gallery into an index) and `retrieve` (its nearest images to queries).

The modules they call are imported in the handlers, as antimetric.cli does, so that `--help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from antimetric.errors import ConfigError
from antimetric.training.config import check_device

GRID_MAX_QUERIES = 16  # rows of a --grid picture; more would make an unreadably tall image
_MODEL_HELP = "a run folder, best.pt/last.pt, an MLflow run id or models:/NAME/VERSION"


def add_retrieval_commands(commands) -> None:
    """Add the `index` and `retrieve` subcommands to an argparse subparsers object."""
    index = commands.add_parser("index", help="embed a dataset's test images or a folder of images into a "
                                "gallery index")
    index.add_argument("--model", required=True, metavar="SOURCE", help=_MODEL_HELP)
    index.add_argument("--images", required=True, metavar="DIR_OR_DATASET",
                       help="a dataset folder (e.g. data/cub: its test split, labelled) or any folder of images "
                            "(searched recursively; labelled by subfolder when all images are one level down)")
    index.add_argument("--out", required=True, metavar="INDEX", help="the index folder to write")
    index.add_argument("--force", action="store_true", help="replace an existing index at --out")
    _add_common(index)
    index.set_defaults(command=_index)

    retrieve = commands.add_parser("retrieve", help="the nearest gallery images of query images")
    retrieve.add_argument("--index", required=True, metavar="INDEX", help="a folder written by `index`")
    retrieve.add_argument("--query", required=True, metavar="IMAGE_OR_DIR",
                          help="an image file, or a folder of them (searched recursively)")
    retrieve.add_argument("--top-k", "--top_k", type=int, default=10, help="neighbours per query (default: 10)")
    retrieve.add_argument("--grid", metavar="PNG", help="also draw the queries and their neighbours into this "
                          f"picture (at most {GRID_MAX_QUERIES} queries, a seeded choice among more)")
    retrieve.add_argument("--seed", type=int, default=0, help="which queries --grid shows when there are more than "
                          f"{GRID_MAX_QUERIES} (default: 0)")
    retrieve.add_argument("--model", metavar="SOURCE", help=f"default: the index's own model; {_MODEL_HELP}")
    _add_common(retrieve)
    retrieve.set_defaults(command=_retrieve)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda:N")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--num-workers", "--num_workers", type=int, metavar="N",
                        help="data-loader processes (default: none on <= 2 cores, else up to 8)")
    parser.add_argument("--tracking-uri", "--tracking_uri", help="MLflow store of an MLflow SOURCE")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _index(args: argparse.Namespace) -> int:
    from antimetric.data.loading import num_workers
    from antimetric.retrieval.gallery_build import build_index, check_target
    from antimetric.retrieval.gallery_images import find_images
    from antimetric.retrieval.trained import load

    _check_sizes(args)
    out = Path(args.out).expanduser()
    check_target(out, args.force)
    progress = sys.stderr.isatty() and not args.json
    images = find_images(Path(args.images), progress=progress)
    ensemble = load(args.model, device=args.device, tracking_uri=args.tracking_uri)
    summary = build_index(ensemble, images, out, model_source=_model_source(args.model),
                          tracking_uri=args.tracking_uri, force=args.force, batch_size=args.batch_size,
                          workers=num_workers(args.num_workers), progress=progress)
    rate = summary.images / summary.seconds if summary.seconds > 0 else float("inf")
    if args.json:
        print(json.dumps({"index": str(out), **summary.info, "seconds": summary.seconds, "images_per_s": rate}))
        return 0
    print(f"index {shown(out)}: {summary.images} images of {images.describe()} under {shown(images.root)}, "
          f"{summary.info['embedding_dim']}-d, in {summary.seconds:.1f} s ({rate:.1f} images/s)")
    _print_failures("unreadable, skipped", summary.skipped)
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    from antimetric.data.loading import num_workers
    from antimetric.retrieval.gallery_images import Failures
    from antimetric.retrieval.gallery_index import check_model, read_index
    from antimetric.retrieval.search import find_queries, retrieve
    from antimetric.retrieval.trained import load

    _check_sizes(args)
    if args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k}: give at least 1")
    index = read_index(Path(args.index).expanduser())
    queries = find_queries(Path(args.query), index)
    if not queries:
        raise ConfigError(f"--query {args.query}: no images found in that folder")
    grid = Path(args.grid).expanduser() if args.grid else None
    if grid is not None:
        _check_writable(grid)
    source = args.model or index.info["model"]
    ensemble = load(source, device=args.device, tracking_uri=args.tracking_uri or index.info.get("tracking_uri"))
    check_model(index, ensemble)
    failures = Failures()
    results = list(retrieve(ensemble, index, queries, args.top_k, failures, batch_size=args.batch_size,
                            workers=num_workers(args.num_workers), progress=sys.stderr.isatty() and not args.json))
    if not results:
        raise ConfigError(f"--query {args.query}: none of the {len(queries)} images could be read "
                          f"({failures.examples[0][0]}: {failures.examples[0][1]})")
    if grid is not None:
        from antimetric.evaluation.grid import choose_queries

        picked = [results[i] for i in choose_queries(len(results), GRID_MAX_QUERIES, args.seed)]
        _write_grid(grid, picked, index, args.top_k)
    if args.json:
        print(json.dumps({"index": str(index.folder), "top_k": args.top_k, "queries": [r.to_json() for r in results],
                          "skipped": [{"path": p, "reason": r} for p, r in failures.examples],
                          "skipped_count": failures.count}))
        return 0
    for result in results:
        _print_retrieval(result, index)
    _print_failures("unreadable queries, skipped", failures)
    if grid is not None:
        drawn = min(len(results), GRID_MAX_QUERIES)
        chosen = f" (a choice by --seed {args.seed})" if drawn < len(results) else ""
        print(f"grid of {drawn} of {len(results)} queries{chosen} written to {shown(grid)}")
    return 0


def _check_sizes(args: argparse.Namespace) -> None:
    check_device(args.device)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: give at least 1")
    if args.num_workers is not None and args.num_workers < 0:
        raise ConfigError(f"--num-workers {args.num_workers}: give 0 or more")


def _check_writable(path: Path) -> None:
    """A new file, or a grid this command wrote before (an existing file is replaced only then)."""
    from antimetric.evaluation.grid import is_grid

    if path.is_dir():
        raise ConfigError(f"--grid {path} is a folder; give a file name such as retrievals.png")
    if (path.exists() or path.is_symlink()) and not is_grid(path):
        raise ConfigError(f"--grid {path} exists and is not a grid antimetric wrote; choose another file name "
                          "(only a grid is ever replaced)")
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--grid {path}: cannot write in {folder}; choose another path")


def shown(text: object) -> str:
    """A path or name as one line of text: control characters (a newline in a file name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _model_source(source: str) -> str:
    """How to find the model again from anywhere: an existing path made absolute, else as given (MLflow)."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def _print_retrieval(result, index) -> None:
    query = result.query
    where = f"; in the index as #{query.position}" if query.position is not None else ""
    label = f"label {shown(result.label)}" if result.label is not None else "label unknown"
    print(f"query {shown(query.file)} ({label}{where})")
    print(f"  {'rank':>4s}  {'cosine':6s}  {'same':4s}  {'label':>8s}  path (under {shown(index.root)})")
    for n in result.neighbours:
        mark = {True: "yes", False: "no", None: "-"}[n.correct]
        itself = "  (the query)" if n.position == query.position else ""
        print(f"  {n.rank:4d}  {n.similarity:.4f}  {mark:4s}  {shown(n.label or '-'):>8s}  "
              f"{shown(Path(index.paths[n.position]))}{itself}")


def _print_failures(what: str, failures) -> None:
    if failures.count:
        print(f"{failures.count} {what}:", file=sys.stderr)
        for path, reason in failures.examples:
            print(f"  {shown(path)}: {reason}", file=sys.stderr)


def _write_grid(path: Path, results: list, index, k: int) -> None:
    from antimetric.evaluation.grid import GridImage, class_caption, write_grid

    def caption(file: Path, label: str | None) -> str:
        if label is None:
            return file.name
        if index.info["dataset"] is not None:  # class ids, named by their folder where the layout has one
            return class_caption(int(label), file.as_posix())
        return label

    rows = []
    for result in results:
        query = GridImage(result.query.file, caption(result.query.file, result.label), box=result.query.box)
        neighbours = [GridImage(n.file, caption(n.file, n.label), n.similarity, n.correct, n.box)
                      for n in result.neighbours]
        rows.append((query, neighbours))
    write_grid(path, rows, title=f"{index.folder.name}: top {k} by cosine similarity")
