"""Retrieval evaluation at Stanford Online Products scale: 60,502 test images.

    python -m benchmarks.evaluation --device cuda --dim 24576      # 48 branches x 512 meta-classes
    python -m benchmarks.evaluation --device cpu --dim 576         # 48 x 12, bounded memory

Times antimetric.evaluation.metrics.retrieval_metrics (exact kNN, leave-one-out, Recall@1/10/100/1000,
MAP@R) on random unit-norm branch features with SOP's class structure, and reports the peak
memory it used (GPU allocator, or the process's resident set on CPU).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F

from antimetric.data.table import TABLE
from antimetric.evaluation.metrics import retrieval_metrics
from antimetric.evaluation.settings import EvalConfig
from benchmarks.common import default_device, device_name, sync

SOP_TEST_IMAGES, SOP_TEST_CLASSES = 60_502, 11_316
# the seed's SOP ensemble: 48 branches x 512 meta-classes, a 24,576-wide embedding
SOP_BRANCHES = TABLE["sop"].training.ensemble_size
SOP_FEATURE_DIM = SOP_BRANCHES * TABLE["sop"].training.meta_class_size
CHUNK_SIZE = EvalConfig().chunk_size  # what training's evaluation uses


def sop_like(n: int, dim: int, branches: int, device: torch.device, dtype: torch.dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    labels = torch.randint(0, SOP_TEST_CLASSES * n // SOP_TEST_IMAGES, (n,), generator=g)
    features = torch.empty(n, dim, dtype=dtype)
    for start in range(0, n, 8192):  # build in slices: the float32 draw of all rows is large
        rows = torch.randn(min(8192, n - start), branches, dim // branches, generator=g)
        features[start:start + len(rows)] = F.normalize(rows, dim=-1).flatten(1).to(dtype)
    return features.to(device), labels.to(device)


def run(device_spec: str, n: int, dim: int, branches: int, chunk_size: int) -> dict:
    device = torch.device(device_spec)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
    features, labels = sop_like(n, dim, branches, device, dtype)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    metrics = retrieval_metrics(features, labels, (1, 10, 100, 1000), chunk_size=chunk_size)
    sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"device": device_name(device), "n": n, "dim": dim,
            "features_dtype": str(dtype), "chunk_size": chunk_size, "seconds": seconds, "peak_memory_bytes": peak,
            "feature_bytes": features.numel() * features.element_size(), "recall_at_1": metrics["recall_at_1"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=default_device(), help="cpu, cuda or cuda:N")
    parser.add_argument("--n", type=int, default=SOP_TEST_IMAGES)
    parser.add_argument("--dim", type=int, default=SOP_FEATURE_DIM)
    parser.add_argument("--branches", type=int, default=SOP_BRANCHES)
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.device, args.n, args.dim, args.branches, args.chunk_size), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
