"""Gallery index: build rate and query latency, at Stanford Online Products scale.

    python -m benchmarks.retrieval --out benchmarks/results/cpu-2core-2026-11-29-retrieval.json
    python -m benchmarks.retrieval --dims 576 --queries 1 16 --repeats 5 --skip-build
    python -m benchmarks.retrieval --model runs/demo-a --images data/demo --skip-search

search: a synthetic gallery of 60,502 rows (SOP's test set) of 48 unit-norm branch vectors, stored
as an index stores it (float16 .npy, memory-mapped), searched for the top 10 of 1 and of 16 queries
by antimetric.evaluation.neighbours.nearest: warm (file in the page cache; median of --repeats) and cold (the
file's pages dropped with posix_fadvise first; one run each). For comparison, the same search with
one torch thread, with the previous implementation (8,192-row chunks converted whole), with chunks
multiplied in bfloat16 (and its error), and, with --float32, on a float32 copy of the gallery.
The default widths: CUB's seed ensemble (48 x 12 = 576) and SOP's (48 x 512 = 24,576).

build: antimetric.retrieval.gallery_index.build_index end to end (decode, transform, embed, write) over real
images: --images (default: the generated demo dataset) with --model (default: an untrained ensemble
of the demo's shape; --untrained KEY=VALUE changes that shape, e.g. backbone=resnet18).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from antimetric.data.demo import ensure_demo
from antimetric.data.loading import num_workers
from antimetric.data.table import TABLE
from antimetric.evaluation.neighbours import nearest
from antimetric.model.device_plan import plan_for
from antimetric.model.ensemble import build_model
from antimetric.retrieval.gallery_build import build_index
from antimetric.retrieval.gallery_images import ImageSet, find_images
from antimetric.retrieval.trained import TrainedEnsemble, load
from antimetric.training.config import RunConfig, resolve
from antimetric.training.decisions import StartDecisions
from antimetric.training.session import pick_device
from benchmarks.common import write_result
from benchmarks.evaluation import SOP_BRANCHES, SOP_FEATURE_DIM, SOP_TEST_IMAGES

CUB_FEATURE_DIM = TABLE["cub"].training.ensemble_size * TABLE["cub"].training.meta_class_size
TOP_K = 10


def write_gallery(path: Path, n: int, dim: int, branches: int, dtype=np.float16) -> Path:
    """n rows of `branches` unit vectors, written slice by slice into a memory-mapped .npy."""
    stored = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, dim))
    generator = torch.Generator().manual_seed(0)
    for start in range(0, n, 4096):
        rows = torch.randn(min(4096, n - start), branches, dim // branches, generator=generator)
        stored[start:start + len(rows)] = F.normalize(rows, dim=-1).flatten(1).numpy().astype(dtype)
    stored.flush()
    del stored
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return path


def drop_from_page_cache(path: Path) -> None:
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def previous_nearest(query: torch.Tensor, gallery, k: int, chunk_size: int = 8192):
    """The implementation before 2026-11-29: each 8,192-row chunk converted to a new float32 tensor."""
    n = query.shape[0]
    best_sims, best_index = torch.full((n, k), -torch.inf), torch.full((n, k), -1, dtype=torch.int64)
    for start in range(0, len(gallery), chunk_size):
        block = torch.from_numpy(np.ascontiguousarray(gallery[start:start + chunk_size])).float()
        sims = torch.nan_to_num(query @ block.T, nan=-torch.inf, posinf=-torch.inf)
        index = torch.arange(start, start + block.shape[0]).expand(n, -1)
        best_sims, order = torch.cat([best_sims, sims], dim=1).topk(k, dim=1)
        best_index = torch.cat([best_index, index], dim=1).gather(1, order)
    return best_sims, best_index


def bf16_nearest(query: torch.Tensor, gallery, k: int, chunk_size: int = 2048):
    """Chunks converted to bfloat16 and multiplied in bfloat16 (AVX512-BF16); similarities come out in bf16."""
    query, n = query.bfloat16(), query.shape[0]
    best_sims, best_index = torch.full((n, k), -torch.inf), torch.full((n, k), -1, dtype=torch.int64)
    for start in range(0, len(gallery), chunk_size):
        block = torch.from_numpy(np.ascontiguousarray(gallery[start:start + chunk_size])).bfloat16()
        sims = (query @ block.T).float()
        index = torch.arange(start, start + block.shape[0]).expand(n, -1)
        best_sims, order = torch.cat([best_sims, sims], dim=1).topk(k, dim=1)
        best_index = torch.cat([best_index, index], dim=1).gather(1, order)
    return best_sims, best_index


def one_thread(search):
    def run(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return search(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return run


def timed(search, query, gallery, repeats: int) -> tuple[float, list[float], tuple]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = search(query, gallery, TOP_K)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def search_section(work: Path, n: int, dims: list[int], branches: int, query_counts: list[int], repeats: int,
                   float32: bool, chunk_rows: list[int]) -> list[dict]:
    rows = []
    for dim in dims:
        path = work / f"gallery-{n}x{dim}.npy"
        started = time.perf_counter()
        write_gallery(path, n, dim, branches)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        variants = {"default": nearest, "default, 1 torch thread": one_thread(nearest),
                    "previous (8192-row chunks)": previous_nearest, "bf16 matmul": bf16_nearest}
        variants.update({f"chunk_size={c}": (lambda q, g, k, c=c: nearest(q, g, k, chunk_size=c))
                         for c in chunk_rows})
        for queries in query_counts:
            query = F.normalize(torch.randn(queries, branches, dim // branches, generator=torch.Generator()
                                            .manual_seed(queries)), dim=-1).flatten(1)
            gallery = None  # unmapped, so that its pages can leave the page cache
            drop_from_page_cache(path)
            gallery = np.load(path, mmap_mode="r")
            start = time.perf_counter()
            exact = nearest(query, gallery, TOP_K)
            cold = time.perf_counter() - start
            rows.append(_row(dim, queries, "default, cold (file not in the page cache)", cold, [cold], exact, exact))
            for name, search in variants.items():
                median, times, found = timed(search, query, gallery, repeats)
                rows.append(_row(dim, queries, name, median, times, found, exact))
                print(json.dumps(rows[-1]), file=sys.stderr)
        if float32:
            path32 = write_gallery(work / f"gallery-{n}x{dim}-f32.npy", n, dim, branches, np.float32)
            gallery32 = np.load(path32, mmap_mode="r")
            for queries in query_counts:
                query = F.normalize(torch.randn(queries, dim), dim=-1)
                exact = nearest(query, gallery, TOP_K)
                median, times, found = timed(nearest, query, gallery32, repeats)
                rows.append(_row(dim, queries, "float32 storage", median, times, found, exact))
            del gallery32
            path32.unlink()
        del gallery
        path.unlink()
    return rows


def _row(dim: int, queries: int, variant: str, median: float, times: list[float], found, exact) -> dict:
    """same_top_k, max_similarity_error: against the default search of the float16 gallery (float32 storage
    holds the rows before their float16 rounding, so near-ties may order differently there)."""
    same = bool((found[1] == exact[1]).all())
    error = float((found[0] - exact[0]).abs().max())
    return {"dim": dim, "queries": queries, "variant": variant, "median_s": median,
            "times_s": [round(t, 4) for t in times], "same_top_k": same, "max_similarity_error": error}


def untrained_ensemble(overrides: dict) -> TrainedEnsemble:
    """A TrainedEnsemble of random weights (the rate does not depend on them), demo shape unless overridden."""
    values = {"data_name": "demo", "backbone": "tiny", "ensemble_size": 12, "meta_class_size": 6, "image_size": 64,
              **overrides, "pretrained": False}
    config = resolve(RunConfig.from_flat(values))
    device = pick_device("auto")
    with device:
        model = build_model(config.model, "batched")
    plan = plan_for(device, backbone=config.model.backbone)
    model.configure(plan)
    model.eval()
    meta_ids = np.zeros((config.model.ensemble_size, 1), dtype=np.int64)
    decisions = StartDecisions(device=str(device), precision="bf16" if plan.bf16 else "fp32", implementation="batched")
    return TrainedEnsemble(model, config, meta_ids, device, Path("untrained"), "untrained", decisions)


def _first(images: ImageSet, n: int | None) -> ImageSet:
    """The first n images of an ImageSet (all of them for None)."""
    if n is None:
        return images
    boxes = images.boxes[:n] if images.boxes is not None else None
    return dataclasses.replace(images, paths=images.paths[:n], labels=images.labels[:n], boxes=boxes)


def build_section(work: Path, model: str | None, images: str | None, overrides: dict, limit: int | None,
                  batch_size: int) -> dict:
    folder = Path(images) if images else ensure_demo(work / "demo")
    found = _first(find_images(folder), limit)
    ensemble = load(model) if model else untrained_ensemble(overrides)
    workers = num_workers(None)
    build_index(ensemble, _first(found, batch_size), work / "warm-up", model_source="untrained",
                batch_size=batch_size, workers=workers)  # first touch: allocator, oneDNN kernels
    for path in found.paths:  # the image files in the page cache, as for the warm-up's
        (found.root / path).read_bytes()
    summary = build_index(ensemble, found, work / "index", model_source=model or "untrained", batch_size=batch_size,
                          workers=workers, force=True)
    config = ensemble.config
    return {"model": model or "untrained", "backbone": config.model.backbone,
            "ensemble_size": config.model.ensemble_size, "embedding_dim": ensemble.embedding_dim,
            "image_size": config.data.image_size, "images": summary.images, "source": str(found.folder),
            "batch_size": batch_size, "workers": workers, "device": str(ensemble.device),
            "seconds": summary.seconds, "images_per_s": summary.images / summary.seconds}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _value(text: str):
    """A number or true/false as such, anything else as text (backbone=resnet18)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=SOP_TEST_IMAGES, help="gallery rows")
    parser.add_argument("--dims", type=int, nargs="+", default=[CUB_FEATURE_DIM, SOP_FEATURE_DIM])
    parser.add_argument("--branches", type=int, default=SOP_BRANCHES)
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-rows", type=int, nargs="*", default=[], help="also time these chunk sizes")
    parser.add_argument("--float32", action="store_true", help="also time a float32 copy (twice the disk)")
    parser.add_argument("--model", help="a run folder or checkpoint for the build section")
    parser.add_argument("--images", help="a dataset folder or image folder (default: the generated demo)")
    parser.add_argument("--untrained", nargs="*", default=[], metavar="KEY=VALUE",
                        help="without --model: config values of the untrained ensemble, e.g. backbone=resnet18")
    parser.add_argument("--build-limit", type=int, help="index only the first N images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--work-dir", help="where the galleries are written (default: a temporary folder)")
    parser.add_argument("--out", help="also write the result JSON here")
    args = parser.parse_args(argv)
    overrides = {key: _value(text) for key, text in (item.split("=", 1) for item in args.untrained)}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        result = {"machine": _cpu_name(), "cpus": os.cpu_count(),
                  "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "n": args.n, "top_k": TOP_K}
        if not args.skip_search:
            result["search"] = search_section(work, args.n, args.dims, args.branches, args.queries, args.repeats,
                                              args.float32, args.chunk_rows)
        if not args.skip_build:
            result["build"] = build_section(work, args.model, args.images, overrides, args.build_limit,
                                            args.batch_size)
    text = json.dumps(result, indent=1)
    if args.out:
        write_result(Path(args.out), result)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
