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


@pytest.mark.parametrize("fast", ["batched", "reference"])
def test_throughput_compares_both_paths_from_the_same_start(fast):
    result = run_json("throughput.py", "--device", "cpu", "--backbone", "tiny", "--ensemble-size", "3",
                      "--meta-class-size", "4", "--image-size", "32", "--batch-size", "4", "--steps", "1",
                      "--warmup", "0", "--fast-implementation", fast, "--json")
    ref, fst = result["reference"], result["fast"]
    assert ref["variant"]["implementation"] == "reference" and fst["variant"]["implementation"] == fast
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
    assert json.loads(proc.stdout)["images_per_s_by_workers"]["0"] > 0
