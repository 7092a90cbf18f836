"""One trial on N processes (branch-parallel) against one process: measured on a CPU, and on paper for large GPUs.

    python -m benchmarks.branch_parallel measure --data-path data --epochs 3 --json
    python -m benchmarks.branch_parallel paper --json

`measure` trains the demo's ensemble (tiny ResNet x 8, meta 12, 64 px, batch 32, the study's 20 % validation
split) with antimetric.training.loop.fit, whole runs from the same seed: on one process with every CPU thread, on one
process with one thread (or, --alone-threads as-ranks, on one process with cores / N threads only), and on N
processes (gloo, spawned here) with cores / N threads each. Reported per row:
seconds per epoch (the later epochs: the first decodes the images), evaluation seconds, the peak resident memory of
each process, the final losses and test Recall@1 (the same on every row, to the rounding the thread count brings).

`paper` counts, on the meta device, the parameters of the trunk and of one branch of large ensembles and gives, for
N = 1, 2, 4, 8 processes (GPUs): the training memory per GPU by the core's estimate (antimetric.training.
memory_estimate, a lower bound: 79-91 % of H100 peaks), scaled to the measured one-GPU peak where RESULTS.md has one,
and the bytes each GPU sends per step to sum gradients by a ring all-reduce: branch-parallel sums the trunk's only,
plain data parallelism (DDP) every parameter. Needs torch and torchvision only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from antimetric.data.demo import ensure_demo
from antimetric.model.convert import branch_blocks
from antimetric.training.config import RunConfig, resolve
from antimetric.training.memory_estimate import estimate_memory, footprint
from benchmarks.common import environment

TRIAL = {"data_name": "demo", "ensemble_size": 8, "meta_class_size": 12, "share_type": "layer1", "with_random": True,
         "with_fc": True, "lr": 4.137e-3, "val_fraction": 0.2, "num_workers": 0, "device": "cpu", "seed": 0}
# Large ensembles of the seed's table, with their one-GPU peak measured on an H100 (RESULTS.md, memory rows; GiB).
PAPER = {"resnext50": 76.9, "resnet50": 61.5, "resnet18": 15.3}
PROCESSES = (1, 2, 4, 8)
GRAD_BYTES = 4  # gradients are summed in fp32


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _fit(values: dict, threads: int) -> dict:
    from antimetric.training.loop import fit
    from antimetric.training.parallel.distributed import rank

    torch.set_num_threads(threads)
    epochs = []
    fit(RunConfig.from_flat(values), lambda result, save: epochs.append(
        {key: result.metrics[key] for key in ("loss", "epoch_seconds", "eval_seconds", "test_recall_at_1")}))
    return {"rank": rank(), "threads": torch.get_num_threads(), "epochs": epochs, "peak_rss_mib": _peak_rss_mib()}


def _rank(rank: int, world: int, init_file: str, values: dict, threads: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    found = _fit(values, threads)
    dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(found))


def _alone(values: dict, threads: int, out: str) -> None:
    Path(out, "alone.json").write_text(json.dumps(_fit(values, threads)))


def _row(name: str, processes: list[dict]) -> dict:
    later = [row for row in processes[0]["epochs"][1:]] or processes[0]["epochs"]
    return {"row": name, "processes": len(processes), "threads_each": processes[0]["threads"],
            "epoch_seconds": sum(r["epoch_seconds"] for r in later) / len(later),
            "eval_seconds": sum(r["eval_seconds"] for r in later) / len(later),
            "first_epoch_seconds": processes[0]["epochs"][0]["epoch_seconds"],
            "peak_rss_mib": [round(p["peak_rss_mib"]) for p in processes],
            "losses": [r["loss"] for r in processes[0]["epochs"]],
            "test_recall_at_1": processes[0]["epochs"][-1]["test_recall_at_1"]}


ALONE_THREADS = ("cores-and-one", "as-ranks")  # measure --alone-threads


def measure(data_path: Path, epochs: int, processes: int, alone_threads: str = "cores-and-one") -> list[dict]:
    """The rows of `measure`, each run in processes of its own (the peak memory is each process's). The one-process
    rows run with every core and with one thread, or (as-ranks) only with the ranks' cores / N threads each: the
    row whose losses theirs should equal, and one process start fewer (the tests')."""
    ensure_demo(data_path / "demo")
    cores = os.cpu_count() or 1
    threads = max(1, cores // processes)
    rows = []
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as work:
        values = {**TRIAL, "data_path": str(data_path), "output_dir": str(Path(work, "runs")), "num_epochs": epochs}
        for alone in sorted({cores, 1}, reverse=True) if alone_threads == "cores-and-one" else [threads]:
            process = context.Process(target=_alone, args=(values, alone, work))
            process.start()
            process.join()
            rows.append(_row(f"one process, {alone} thread{'s' if alone > 1 else ''}",
                             [json.loads(Path(work, "alone.json").read_text())]))
        mp.spawn(_rank, args=(processes, str(Path(work, "init")), values, threads, work), nprocs=processes, join=True)
        rows.append(_row(f"{processes} processes (branch-parallel, gloo), {threads} thread{'s' if threads > 1 else ''} "
                         "each", [json.loads(Path(work, f"rank{r}.json").read_text()) for r in range(processes)]))
    return rows


def paper(batch_size: int = 32, image_size: int = 256) -> list[dict]:
    """The rows of `paper`: the seed's share_type, 48 branches, 12 meta-classes, fc head, bf16 on a GPU, without
    activation checkpointing (as the measured peaks)."""
    rows = []
    gpu = torch.device("cuda")
    for backbone, measured_gib in PAPER.items():
        base = resolve(RunConfig.from_flat({"data_name": "cub", "backbone": backbone, "ensemble_size": 48,
                                            "meta_class_size": 12, "with_fc": True, "batch_size": batch_size,
                                            "image_size": image_size, "precision": "bf16", "pretrained": False,
                                            "activation_checkpointing": False}))
        counts = footprint(backbone, base.model.share_type, image_size)
        head = (counts_width(backbone) + 1) * base.model.meta_class_size
        branch_params = counts.branch_params + head
        total = counts.trunk_params + 48 * branch_params
        one = estimate_memory(base, gpu).total
        for n in PROCESSES:
            largest = max(len(block) for block in branch_blocks(48, n))
            config = dataclasses.replace(base, model=dataclasses.replace(base.model, ensemble_size=largest))
            need = estimate_memory(config, gpu)
            ring = 2 * (n - 1) / n  # each GPU sends this share of the summed bytes in a ring all-reduce
            rows.append({
                "backbone": backbone, "processes": n, "branches_per_gpu": largest,
                "params_per_gpu_m": (counts.trunk_params + largest * branch_params) / 1e6,
                "estimate_gib": need.total / 2**30,
                "scaled_to_measured_gib": measured_gib * need.total / one if measured_gib else None,
                "trunk_params_m": counts.trunk_params / 1e6, "all_params_m": total / 1e6,
                "sent_per_step_mib_branch_parallel": ring * counts.trunk_params * GRAD_BYTES / 2**20,
                "sent_per_step_mib_ddp": ring * total * GRAD_BYTES / 2**20,
            })
    return rows


def counts_width(backbone: str) -> int:
    from antimetric.model.backbones.family import get_backbone
    return get_backbone(backbone).feature_width


def _print_measure(rows: list[dict]) -> None:
    print("| row | s/epoch | eval s | first epoch s | peak MiB per process | losses | test R@1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        losses = ", ".join(f"{x:.4f}" for x in r["losses"])
        print(f"| {r['row']} | {r['epoch_seconds']:.2f} | {r['eval_seconds']:.2f} | {r['first_epoch_seconds']:.2f} | "
              f"{', '.join(str(m) for m in r['peak_rss_mib'])} | {losses} | {r['test_recall_at_1']:.4f} |")


def _print_paper(rows: list[dict]) -> None:
    print("| backbone x 48 | GPUs | branches per GPU | params per GPU (M) | estimate GiB | scaled to measured GiB | "
          "all-reduce MiB sent per GPU per step: branch-parallel | DDP |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        scaled = f"{r['scaled_to_measured_gib']:.1f}" if r["scaled_to_measured_gib"] else "—"
        print(f"| {r['backbone']} | {r['processes']} | {r['branches_per_gpu']} | {r['params_per_gpu_m']:.0f} | "
              f"{r['estimate_gib']:.1f} | {scaled} | {r['sent_per_step_mib_branch_parallel']:.1f} | "
              f"{r['sent_per_step_mib_ddp']:.0f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    one = sub.add_parser("measure")
    one.add_argument("--data-path", type=Path, default=Path("data"))
    one.add_argument("--epochs", type=int, default=3)
    one.add_argument("--processes", type=int, default=2)
    one.add_argument("--alone-threads", choices=ALONE_THREADS, default=ALONE_THREADS[0],
                     help="the one-process rows: with every core and with one thread (default), or only with the "
                          "ranks' threads (cores / N), the row the ranks' losses should equal")
    one.add_argument("--json", action="store_true")
    two = sub.add_parser("paper")
    two.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = (measure(args.data_path.resolve(), args.epochs, args.processes, args.alone_threads)
            if args.part == "measure" else paper())
    if args.json:
        json.dump({"part": args.part, "rows": rows, "seconds": time.perf_counter() - start,
                   "environment": environment(torch.device("cpu"))}, sys.stdout, indent=1)
        print()
    else:
        (_print_measure if args.part == "measure" else _print_paper)(rows)


if __name__ == "__main__":
    main()
