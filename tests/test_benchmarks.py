"""The benchmark scripts on their command lines (CPU, tiny sizes); timings are not asserted.

Most run their main() in this process: a `python -m benchmarks.NAME` would spend seconds importing torch and the core
again. A script runs as a process of its own where that is what the test checks: what a fresh interpreter imports,
Triton's interpreter (chosen when the kernels are defined). The processes a script starts itself (gpu_study's rows,
branch_parallel's ranks, own_data_reading's forms) stay processes."""
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from antimetric.data import demo
from antimetric.model.device_plan import DevicePlan, plan_for, resolve_precision
from benchmarks.common import SEED
from benchmarks.demo_spread import demo_design
from benchmarks.throughput import fast_variant

ROOT = Path(__file__).resolve().parents[1]
# Not installed on the GPU benchmark host: no benchmark may import them, not even through the core.
FORBIDDEN = {"ray", "mlflow", "optuna", "pandas", "thop", "studies"}
# The peak matmul's side on a CPU here (2048 by default, ~4 s a run): the tests read no peak figure
PEAK_SIZE = "256"


def run_module(name, *args, env=None, timeout=300):
    """`python -m benchmarks.NAME ARGS` in a process of its own; its stdout."""
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@contextlib.contextmanager
def torch_state_kept():
    """Torch's random state, thread count and cuDNN search switch as they were before, whatever a benchmark set."""
    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn_benchmark


def run_main(capsys, name, *args):
    """benchmarks.NAME's main(ARGS) in this process, as `python -m benchmarks.NAME ARGS` runs it; its stdout."""
    capsys.readouterr()  # only what main prints
    with torch_state_kept():
        status = importlib.import_module(f"benchmarks.{name}").main(list(args))
    assert status in (0, None) or isinstance(status, dict), status  # demo_spread's main returns its result
    return capsys.readouterr().out


def run_json(capsys, name, *args):
    return json.loads(run_main(capsys, name, *args))


@pytest.fixture(scope="module")
def small_demo_path(tmp_path_factory) -> Path:
    """A data folder holding the demo dataset at 32 classes of 4 images (its 64 px): the benchmarks that train the
    demo's trial on it train and evaluate the same code in a fraction of the time (the full demo: 60 x 30)."""
    data_path = tmp_path_factory.mktemp("small-demo")
    with demo_design(32, 4, demo.SIZE):
        demo.ensure_demo(data_path / "demo")
    return data_path


@pytest.mark.slow
def test_benchmarks_import_torch_and_the_core_only():
    """Every module of the package imports without Ray, MLflow, pandas or thop, and leaves sys.path alone."""
    probe = (
        "import importlib, json, pkgutil, sys\n"
        "import benchmarks\n"
        "path = list(sys.path)\n"
        "names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__))\n"
        "for name in names:\n"
        "    importlib.import_module('benchmarks.' + name)\n"
        "print(json.dumps({'modules': names, 'loaded': sorted({m.split('.')[0] for m in sys.modules}),\n"
        "                  'path_unchanged': sys.path == path}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert {"common", "throughput", "conv_kernels", "evaluation", "gpu_study", "loader", "profile_step"} <= set(
        report["modules"])
    assert not FORBIDDEN & set(report["loaded"]), FORBIDDEN & set(report["loaded"])
    assert report["path_unchanged"]


def test_the_seed_configuration_is_the_one_results_md_measured():
    """SEED comes from the core's dataset table and option defaults; RESULTS.md says what its figures measured."""
    text = " ".join((ROOT / "benchmarks" / "RESULTS.md").read_text().split())
    stated = re.search(r"The seed configuration: (\w+), share `(\w+)`, (\d+) branches, (\d+) meta-classes, fc head, "
                       r"batch (\d+), (\d+) × \6,", text)
    assert stated, "RESULTS.md no longer states the seed configuration in its usual sentence"
    backbone, share_type, ensemble_size, meta_class_size, batch_size, image_size = stated.groups()
    assert (SEED.backbone, SEED.share_type, SEED.ensemble_size, SEED.meta_class_size, SEED.batch_size,
            SEED.image_size) == (backbone.lower(), share_type, int(ensemble_size), int(meta_class_size),
                                 int(batch_size), int(image_size))


@pytest.mark.parametrize("fast", ["batched", "reference"])
@pytest.mark.slow
def test_throughput_compares_both_paths_from_the_same_start(fast, capsys):
    result = run_json(capsys, "throughput", "--device", "cpu", "--backbone", "tiny", "--ensemble-size", "3",
                      "--meta-class-size", "4", "--image-size", "32", "--batch-size", "4", "--steps", "1",
                      "--warmup", "0", "--fast-implementation", fast, "--fast-precision", "fp32",
                      "--peak-size", PEAK_SIZE, "--json")
    ref, fst = result["reference"], result["fast"]
    extra = {"batch_size": None, "cpu_autocast": False, "cudnn_benchmark_limit": None}
    assert ref["variant"] == {**asdict(DevicePlan()), "implementation": "reference", **extra}  # the seed's
    plan = {**asdict(plan_for(torch.device("cpu"), backbone="tiny")), "bf16": False}  # training's, in fp32 as asked
    assert fst["variant"] == {**plan, "implementation": fast, **extra}
    assert fst["loss_step0"] == pytest.approx(ref["loss_step0"], rel=1e-5)
    for path in (ref, fst):
        assert path["images_per_s"] > 0 and "peak_memory_bytes" in path
    assert result["speedup"] > 0 and result["step_tflop"] > 0
    assert result["device"] == "cpu" and result["config"]["ensemble_size"] == 3


@pytest.mark.slow
def test_throughput_runs_the_fast_path_in_bf16_on_a_cpu_when_asked(capsys):
    result = run_json(capsys, "throughput", "--device", "cpu", "--backbone", "tiny", "--ensemble-size", "3",
                      "--meta-class-size", "4", "--image-size", "32", "--batch-size", "4", "--steps", "1",
                      "--warmup", "0", "--fast-precision", "bf16", "--fast-layout", "nchw", "--peak-size", PEAK_SIZE,
                      "--json")
    ref, fst = result["reference"], result["fast"]
    assert fst["variant"]["bf16"] and fst["variant"]["cpu_autocast"] and not ref["variant"]["bf16"]
    assert not fst["variant"]["channels_last"]  # asked for, over the tiny backbone's channels-last
    # the same weights and batch: bf16 rounding moves the loss a little, and only a little
    assert fst["loss_step0"] != ref["loss_step0"] and fst["loss_step0"] == pytest.approx(ref["loss_step0"], rel=2e-2)


def test_the_fast_variant_is_what_training_runs_on_this_cpu():
    cpu = torch.device("cpu")
    fast = fast_variant(cpu, "tiny")
    assert fast.bf16 is plan_for(cpu).bf16 is (resolve_precision("auto", cpu) == "bf16")
    assert fast.channels_last and not fast_variant(cpu, "resnet18").channels_last
    assert fast.cpu_autocast is fast.bf16  # autocast where the CPU's plan asks for it


@pytest.mark.slow
def test_evaluation_and_loader_benchmarks(capsys):
    result = run_json(capsys, "evaluation", "--device", "cpu", "--n", "500", "--dim", "48", "--branches", "4")
    assert result["n"] == 500 and 0.0 <= result["recall_at_1"] <= 1.0
    loaded = run_json(capsys, "loader", "--workers", "0", "--images", "16", "--epochs", "1", "--json")
    assert loaded["images_per_s_by_workers"]["0"] > 0 and loaded["cached_images_per_s_by_workers"]["0"] > 0


@pytest.mark.slow
def test_profile_step_profiles_a_whole_training_step(capsys):
    """Forward, backward and the fused Adam step of antimetric.training.step.training_step all show in the table."""
    table = run_main(capsys, "profile_step", "--device", "cpu", "--backbone", "tiny", "--ensemble-size", "2",
                     "--meta-class-size", "4", "--image-size", "32", "--batch-size", "2", "--warmup", "1",
                     "--steps", "1", "--rows", "200")
    for kernel in ("aten::convolution ", "ConvolutionBackward0", "aten::cross_entropy_loss", "aten::_fused_adam_"):
        assert kernel in table, kernel


@pytest.mark.slow
def test_the_prepared_gpu_run_works_on_tiny_sizes(tmp_path, capsys):
    """The script a GPU lease will run (convs + the quick levers), at CPU smoke sizes: every section completes.
    Each row runs in a process of its own, as on the lease (benchmarks/study_rows.py)."""
    run_main(capsys, "gpu_study", "--device", "cpu", "--smoke", "--quick", "--out", str(tmp_path), "--sections",
             "convs", "levers", "--peak-size", PEAK_SIZE)
    study = json.loads((tmp_path / "study.json").read_text())
    assert study["device"] == "cpu" and study["convs"]["rows"]
    assert all("grouped-cl_train_ms" in row for row in study["convs"]["rows"])
    levers = study["levers"]["rows"]
    assert {"loop fp32 (seed)", "+ fused Adam", "  same, Triton grouped convs"} <= levers.keys()
    assert all(row["error"] is None and row["images_per_s"] > 0 for row in levers.values())
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))  # written whole, nothing left over


@pytest.mark.slow
def test_conv_benchmark_checks_the_triton_kernels_against_torch():
    """On a GPU it runs the kernels compiled; here through Triton's interpreter (slow: tiny sizes), in a process of
    its own, as TRITON_INTERPRET=1 must be set before the kernels are defined. With the GPU's tiles (up to
    128 x 128 x 64; the interpreter's own are 16 x 16 x 16): a few large programs, which the interpreter runs in a
    fraction of the time many small ones take, with partial tiles masked as on a GPU (2 to 8 output pixels in a
    tile of 64 rows)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "ANTIMETRIC_TRITON_GPU_TILES": "1"}
    rows = json.loads(run_module("conv_kernels", "--device", "cpu", "--backbone", "tiny", "--share-type", "layer2",
                                 "--ensemble-size", "2", "--image-size", "32", "--batches", "2", "--reps", "1",
                                 "--strategies", "grouped-cl", "tap-gemm", "--json", env=env, timeout=600))["rows"]
    checked = [row for row in rows if "triton_max_rel_error" in row]
    assert checked and all(row["triton_max_rel_error"] < 1e-4 for row in checked)
    assert all(row.get("tap-gemm_max_rel_error", 0.0) < 1e-4 for row in rows)


@pytest.mark.slow
def test_demo_epoch_times_a_trial_before_and_after(small_demo_path, capsys):
    result = run_json(capsys, "demo_epoch", "--data-path", str(small_demo_path), "--epochs", "2", "--variants",
                      "before", "after", "--json")
    before, after = result["variants"]["before"], result["variants"]["after"]
    for variant in (before, after):
        assert len(variant["train_s"]) == len(variant["eval_s"]) == 2 and variant["fit_s"] > sum(variant["train_s"])
        assert 0 <= variant["test_recall_at_1"] <= 1
    assert result["threads"] == 1 and result["trial"]["ensemble_size"] == 8
    assert (before["precision"], before["image_memory_mib"]) == ("fp32", 0)
    assert after["image_memory_mib"] > 0 and after["precision"] == "bf16"


def test_branch_parallel_on_paper_splits_the_memory_and_sums_only_the_trunk():
    from benchmarks.branch_parallel import paper

    rows = {(r["backbone"], r["processes"]): r for r in paper()}
    one, eight = rows["resnext50", 1], rows["resnext50", 8]
    assert one["params_per_gpu_m"] == pytest.approx(1094, abs=1)  # RESULTS.md's count of ResNeXt50 x 48
    assert eight["branches_per_gpu"] == 6 and eight["estimate_gib"] < one["estimate_gib"] / 6
    assert one["sent_per_step_mib_branch_parallel"] == one["sent_per_step_mib_ddp"] == 0  # nothing to sum
    assert eight["sent_per_step_mib_ddp"] > 1000 * eight["sent_per_step_mib_branch_parallel"]


@pytest.mark.slow
def test_branch_parallel_measures_two_processes_against_one(small_demo_path, capsys):
    """The ranks against the one process of their thread count (as-ranks: the one-process row of every core, the
    same code with another count, is not run)."""
    result = run_json(capsys, "branch_parallel", "measure", "--data-path", str(small_demo_path), "--epochs", "1",
                      "--alone-threads", "as-ranks", "--json")
    rows = result["rows"]
    assert [r["processes"] for r in rows] == [1] * (len(rows) - 1) + [2]
    assert len(rows[-1]["peak_rss_mib"]) == 2 and all(m > 0 for m in rows[-1]["peak_rss_mib"])
    alone = next(r for r in rows if r["processes"] == 1 and r["threads_each"] == rows[-1]["threads_each"])
    assert rows[-1]["losses"] == pytest.approx(alone["losses"], rel=1e-2)  # the same run, to bf16 rounding


@pytest.mark.slow
def test_own_data_reading_times_both_forms_to_the_first_batch(tmp_path, capsys):
    """Both forms of the same generated files, the five phases each, in processes of their own; --out is kept."""
    out = tmp_path / "data"
    result = json.loads(run_main(capsys, "own_data_reading", "--entries", "200", "--out", str(out), "--json"))
    assert result["entries"] == 200 and result["generate_s"] > 0 and result["kept"] == str(out)
    assert set(result["forms"]) == {"folder", "table"}
    for form in result["forms"].values():
        phases = form["phases"]
        assert [p["phase"][0] for p in phases] == ["1", "2", "3", "4", "5"]
        assert all(p["seconds"] > 0 and p["growth_mib"] is not None for p in phases)
        assert [p["records"] for p in phases[:3]] == [200, 200, 200]
        assert phases[3]["meta_class_size"] <= 4  # resolve's, within the 4 training classes of 8
        assert phases[4]["batch_shape"] == [32, 3, 32, 32]
    assert result["forms"]["folder"]["data"] != result["forms"]["table"]["data"]
    assert len(list((out / "images").rglob("*.png"))) == 200 and (out / "table.csv").is_file()


def test_demo_spread_seeds_its_repeats_as_the_confirmation_stage_does():
    from benchmarks.demo_spread import repeat_seeds
    from studies.design import seeds

    assert [repeat_seeds(s, r) for s in (0, 3) for r in range(4)] == [seeds.repeat_seeds(s, r) for s in (0, 3)
                                                                     for r in range(4)]


@pytest.mark.slow
def test_demo_spread_trains_the_repeats_of_a_demo_design_and_leaves_no_data(capsys):
    before = set(Path(tempfile.gettempdir()).glob("demo-spread-*"))
    design = demo.N_CLASSES, demo.IMAGES_PER_CLASS, demo.SIZE
    result = json.loads(run_main(capsys, "demo_spread", "--classes", "20", "--per-class", "4", "--size", "32",
                                 "--epochs", "1", "--repeats", "2", "--json"))
    assert len(result["test_recall_at_1"]) == 2 and all(0 <= v <= 100 for v in result["test_recall_at_1"])
    assert result["mean"] == pytest.approx(sum(result["test_recall_at_1"]) / 2, abs=0.06) and result["sd"] >= 0
    assert set(Path(tempfile.gettempdir()).glob("demo-spread-*")) == before  # its generated data is removed
    assert (demo.N_CLASSES, demo.IMAGES_PER_CLASS, demo.SIZE) == design  # the generator's own design again
