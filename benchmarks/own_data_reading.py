"""A user's own data, from nothing to the first training batch: seconds and peak memory, phase by phase.

    python -m benchmarks.own_data_reading --entries 100000 [--out DIR] [--json]

Generates N entries (default 100,000; every file the same 1x1 PNG) in both forms `--data` reads, over the
same files: a folder of class subfolders (DIR/images/<class>/<image>.png, N / 100 classes by default) and a
table in open-metric-learning's columns (DIR/table.csv: label, path, split; the first half of the classes
train, the others test). Then, for each form in a fresh process of its own (so that peaks do not mix; the
folder first, then the table), one after the other:

  1 read          DataSource.read(): the folder walked, or the table parsed and each file's first bytes checked
  2 prepare       the first load_or_prepare: every image decoded, the manifest written
  3 up to date    a second load_or_prepare: the manifest read, one os.stat per file
  4 resolve       antimetric.training.config.resolve of data=PATH and the tiny backbone (the defaults measured on
                  the data: meta-class size, Recall@K, mean and std)
  5 first batch   build_session (which loads the manifest once more) and the first batch of its train_loader

Memory: the process's resident set (RSS). Before each phase its high-water mark is reset (Linux's
/proc/self/clear_refs, "5"), so `peak` is the highest RSS during that phase alone and `growth` is that peak
less the RSS when the phase began; where the mark cannot be reset, growth is that of getrusage's ru_maxrss
(0 when a phase stays under an earlier phase's peak). It counts everything the process holds, not only
Python's objects. Generating the files is timed apart, not in any phase. The generated data is deleted
afterwards unless --out names where to keep it. Needs torch and torchvision only.
"""
from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from antimetric.base.cpus import available_cpus
from antimetric.data.manifest.prepare import load_or_prepare
from antimetric.data.readers.source import own_data
from antimetric.training.config import RunConfig, resolve
from antimetric.training.session import build_session
from benchmarks.common import environment, run_child, write_result

FORMS = ("folder", "table")
IMAGES, TABLE = "images", "table.csv"
# What the run trains: the tiny backbone at CPU sizes, images loaded in the main process.
RUN = {"backbone": "tiny", "image_size": 32, "ensemble_size": 2, "num_workers": 0, "device": "cpu"}
_ROOT = Path(__file__).resolve().parents[1]


def one_pixel_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_data(out: Path, entries: int, classes: int) -> None:
    """DIR/images/cNNNN/NNNNNN.png, entry i in class i % classes, and DIR/table.csv naming the same files."""
    png = one_pixel_png()
    for c in range(classes):
        (out / IMAGES / f"c{c:04d}").mkdir(parents=True)
    with open(out / TABLE, "w", newline="") as handle:
        table = csv.writer(handle)
        table.writerow(("label", "path", "split"))
        for i in range(entries):
            c = i % classes
            path = f"{IMAGES}/c{c:04d}/{i:06d}.png"
            with open(out / path, "wb") as image:
                image.write(png)
            table.writerow((c, path, "train" if c < classes // 2 else "test"))


class PhaseMemory:
    """RSS at a phase's start and its peak during the phase (see the module's docstring)."""

    def __init__(self) -> None:
        self.resets = _reset_peak()

    def start(self) -> None:
        gc.collect()
        self.resets = _reset_peak()
        self.start_rss, self.start_max = _rss_bytes(), _max_rss_bytes()

    def stop(self) -> dict[str, float]:
        peak = _max_rss_bytes()
        growth = peak - self.start_rss if self.resets else peak - self.start_max
        return {"rss_start_mib": self.start_rss / 2**20, "peak_rss_mib": peak / 2**20 if self.resets else None,
                "growth_mib": growth / 2**20}


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(form: str, data: Path) -> dict[str, Any]:
    """The five phases on one form of the data, in this process."""
    memory, phases = PhaseMemory(), []

    def phase(name: str, work: Callable[[], Any], note: Callable[[Any], dict]) -> Any:
        memory.start()
        start = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - start
        phases.append({"phase": name, "seconds": seconds, **memory.stop(), **note(result)})
        return result

    source = own_data(data)
    phase("1 read the index (DataSource.read)", source.read, lambda index: {"records": len(index.records)})
    phase("2 load_or_prepare, first (decode all, write manifest)", lambda: load_or_prepare(source, progress=False),
          lambda index: {"records": len(index.records), "manifest_bytes": source.manifest.stat().st_size})
    phase("3 load_or_prepare, up to date (stat per file)", lambda: load_or_prepare(source, progress=False),
          lambda index: {"records": len(index.records)})
    config = RunConfig.from_flat({"data": str(data), **RUN})
    resolved = phase("4 resolve (defaults measured on the data)", lambda: resolve(config),
                     lambda r: {"meta_class_size": r.model.meta_class_size, "recalls": list(r.eval.recalls),
                                "mean": list(r.data.mean), "std": list(r.data.std)})

    def first_batch() -> tuple[int, list[int]]:
        session = build_session(resolved)
        images, _ = next(iter(session.train_loader))
        return len(session.train_loader.dataset), list(images.shape)

    phase("5 build_session + first train batch", first_batch,
          lambda r: {"train_images": r[0], "batch_shape": r[1]})
    return {"form": form, "data": str(data), "memory_method": "clear_refs" if memory.resets else "ru_maxrss",
            "phases": phases, "torch_threads": torch.get_num_threads()}


def run(entries: int, classes: int, out: Path | None, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="own-data-") as made:  # only ever what this run wrote is in it
        folder = out if out is not None else Path(made)
        start = time.perf_counter()
        write_data(folder, entries, classes)
        generated = time.perf_counter() - start
        forms = {}
        for form in FORMS:
            data = folder / (IMAGES if form == "folder" else TABLE)
            result = Path(made) / f"{form}-result.json"
            child = run_child([sys.executable, "-m", "benchmarks.own_data_reading", "--measure", form,
                               "--data", str(data), "--result", str(result)], result, timeout_s, cwd=_ROOT)
            if child.error is not None:
                raise RuntimeError(f"{form}: {child.error}\n{child.output[-3000:]}")
            forms[form] = {**child.result, "process_s": child.seconds}
    return {**environment(torch.device("cpu")), "cpus": os.cpu_count(), "available_cpus": available_cpus(),
            "date": time.strftime("%Y-%m-%d"), "entries": entries, "classes": classes, "image": "1x1 PNG",
            "generate_s": generated, "kept": None if out is None else str(out), "run": RUN, "forms": forms}


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['entries']:,} entries ({result['classes']:,} classes, {result['image']}), {result['cpu']}, "
          f"{result['available_cpus']} CPUs, torch {result['torch']}, {result['date']}; generating the files: "
          f"{result['generate_s']:.1f} s (not in the phases)")
    print(f"{'form':6s}  {'phase':54s} {'seconds':>8s} {'peak RSS MiB':>13s} {'growth MiB':>11s}")
    for form, measured in result["forms"].items():
        for p in measured["phases"]:
            peak = f"{p['peak_rss_mib']:.0f}" if p["peak_rss_mib"] is not None else "-"
            print(f"{form:6s}  {p['phase']:54s} {p['seconds']:8.2f} {peak:>13s} {round(p['growth_mib']):11d}")
        total = sum(p["seconds"] for p in measured["phases"])
        print(f"{form:6s}  {'phases 1-5':54s} {total:8.2f}   (whole process, Python's start and imports "
              f"included: {measured['process_s']:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=100_000, help="images (default: 100,000)")
    p.add_argument("--classes", type=int, default=None, help="class folders (default: entries / 100, at least 8)")
    p.add_argument("--out", type=Path, default=None,
                   help="a new or empty folder to generate the data in, kept afterwards (default: a temporary "
                        "folder, deleted afterwards)")
    p.add_argument("--timeout-s", type=float, default=1800, help="per form")
    p.add_argument("--json", action="store_true")
    p.add_argument("--measure", choices=FORMS, help=argparse.SUPPRESS)  # a child: one form, in this process
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        write_result(args.result, measure(args.measure, args.data))
        return 0
    classes = args.classes or max(8, args.entries // 100)
    if args.entries < 4 * classes:
        p.error(f"--entries {args.entries} gives fewer than 4 images to each of {classes} classes")
    if args.out is not None:
        if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
            p.error(f"--out {args.out} is not an empty folder; name a new or empty one")
        args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.entries, classes, args.out, args.timeout_s)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
