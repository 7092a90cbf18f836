"""The benchmark scripts run (CPU, tiny sizes); timings are not asserted."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_json(script, *args):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("fast,order", [("batched", "layer-major"), ("batched", "branch-major"), ("reference", None)])
def test_throughput_compares_both_paths_from_the_same_start(fast, order):
    result = run_json("throughput.py", "--device", "cpu", "--backbone", "tiny", "--ensemble-size", "3",
                      "--meta-class-size", "4", "--image-size", "32", "--batch-size", "4", "--steps", "1",
                      "--warmup", "0", "--fast-implementation", fast, *(["--fast-order", order] if order else []),
                      "--json")
    ref, fst = result["reference"], result["fast"]
    assert ref["variant"]["implementation"] == "reference" and fst["variant"]["implementation"] == fast
    assert fst["variant"]["branch_major"] is (order == "branch-major")
    assert fst["loss_step0"] == pytest.approx(ref["loss_step0"], rel=1e-5)
    for path in (ref, fst):
        assert path["images_per_s"] > 0 and "peak_memory_bytes" in path
    assert result["speedup"] > 0 and result["step_tflop"] > 0


def test_evaluation_and_loader_benchmarks():
    result = run_json("evaluation.py", "--device", "cpu", "--n", "500", "--dim", "48", "--branches", "4")
    assert result["n"] == 500 and 0.0 <= result["recall_at_1"] <= 1.0
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "loader.py"), "--workers", "0", "--images", "16",
                           "--epochs", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert loaded["images_per_s_by_workers"]["0"] > 0 and loaded["cached_images_per_s_by_workers"]["0"] > 0


def test_the_prepared_gpu_run_works_on_tiny_sizes(tmp_path):
    """The script a GPU lease will run (convs + the quick levers), at CPU smoke sizes: every section completes."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_study.py"), "--device", "cpu", "--smoke", "--quick",
                           "--out", str(tmp_path), "--sections", "convs", "levers"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = json.loads((tmp_path / "study.json").read_text())
    assert study["convs"]["rows"] and all("grouped-cl_train_ms" in row for row in study["convs"]["rows"])
    levers = study["levers"]["rows"]
    assert {"loop fp32 (seed)", "+ fused Adam", "  same, Triton grouped convs"} <= levers.keys()
    assert all(row["error"] is None and row["images_per_s"] > 0 for row in levers.values())


def test_conv_benchmark_checks_the_triton_kernels_against_torch():
    """On a GPU it runs the kernels compiled; here through Triton's interpreter (slow: tiny sizes)."""
    import os

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "conv_kernels.py"), "--device", "cpu", "--backbone", "tiny",
                           "--share-type", "layer2", "--ensemble-size", "2", "--image-size", "32", "--batches", "2",
                           "--reps", "1", "--strategies", "grouped-cl", "tap-gemm", "--json"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)["rows"]
    checked = [row for row in rows if "triton_max_rel_error" in row]
    assert checked and all(row["triton_max_rel_error"] < 1e-4 for row in checked)
    assert all(row.get("tap-gemm_max_rel_error", 0.0) < 1e-4 for row in rows)
