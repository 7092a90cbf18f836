"""A run, or a loaded ensemble, that cannot fit in the device's memory is refused in one line before any data
is read; every configuration that was measured to fit (benchmarks/RESULTS.md) still passes."""
from pathlib import Path

import pytest
import torch

import antimetric
from antimetric.data.table import TABLE
from antimetric.errors import ConfigError
from antimetric.model.ensemble import build_model
from antimetric.training.config import RunConfig, resolve
from antimetric.training.loop import fit

GIB = 2**30
# benchmarks/RESULTS.md, "Memory: 48 branches, share layer1, meta 12, batch 32, 256², bf16, fused Adam" on an
# 80 GB H100 (79.6 GiB): peak GiB without and with activation checkpointing.
MEASURED_ON_A_GPU = {"resnet18": (15.3, 11.3), "resnet34": (29.8, 20.5), "resnet50": (61.5, 31.7),
                     "resnext50": (76.9, 33.9)}
H100_BYTES = int(79.6 * GIB)


def _seed_config(backbone: str, **values) -> RunConfig:
    return resolve(RunConfig.from_flat({"data_name": "cub", "backbone": backbone, "ensemble_size": 48,
                                        "meta_class_size": 12, "batch_size": 32, "image_size": 256, **values}))


@pytest.mark.parametrize("backbone", MEASURED_ON_A_GPU)
def test_the_estimate_stays_below_what_the_gpu_measured(backbone):
    """A lower bound: below the measured peak, with activation checkpointing (which a CUDA run turns on by itself
    after an out-of-memory error) and without it; so the seed's ResNet50 x 48 is allowed on an 80 GB card."""
    from antimetric.training.memory_estimate import check_memory, estimate_memory

    cuda = torch.device("cuda")
    without, with_checkpointing = MEASURED_ON_A_GPU[backbone]
    auto = estimate_memory(_seed_config(backbone), cuda)
    kept = estimate_memory(_seed_config(backbone, activation_checkpointing=False), cuda)
    assert auto.total < with_checkpointing * GIB and kept.total < without * GIB
    assert kept.activations > auto.activations > 0
    check_memory(_seed_config(backbone), cuda, available=H100_BYTES)  # raises if refused


def test_parameters_are_counted_exactly_from_one_branch():
    """trunk + ensemble_size x one branch, as the network built for real has them (Adam: 16 bytes each)."""
    from antimetric.training.memory_estimate import estimate_memory

    for values in ({"backbone": "tiny", "ensemble_size": 5, "with_fc": True, "meta_class_size": 7},
                   {"backbone": "resnet18", "ensemble_size": 3, "share_type": "layer4", "with_fc": True},
                   {"backbone": "resnext50", "ensemble_size": 2, "share_type": "maxpool", "with_fc": False}):
        config = resolve(RunConfig.from_flat({"data_name": "cub", "pretrained": False, **values}))
        with torch.device("meta"):
            params = sum(p.numel() for p in build_model(config.model).parameters())
        assert estimate_memory(config, torch.device("cpu")).parameters == 16 * params
        assert estimate_memory(config, torch.device("cpu"), training=False).parameters == 4 * params


def test_every_datasets_defaults_fit_and_the_demo_fits_a_small_machine(monkeypatch):
    from antimetric.training import memory_estimate
    from antimetric.training.memory_estimate import available_memory, check_memory

    for name in TABLE:
        check_memory(resolve(RunConfig.from_flat({"data_name": name})), torch.device("cuda"), available=H100_BYTES)
    check_memory(resolve(RunConfig()), torch.device("cpu"), available=4 * 2**30)  # a laptop's free 4 GiB
    monkeypatch.setattr(memory_estimate, "MEMINFO", Path("/proc/meminfo"))  # the machine's own figure, read
    assert 0 < available_memory(torch.device("cpu")) < 2**50


def test_a_run_that_cannot_fit_is_refused_before_data_is_read(tmp_path):
    """1024 branches of 4096 px at batch 256: tens of TiB of activations, more than any machine has."""
    config = RunConfig.from_flat({"data_name": "demo", "data_path": str(tmp_path / "data"),
                                  "output_dir": str(tmp_path / "runs"), "backbone": "tiny", "ensemble_size": 1024,
                                  "image_size": 4096, "batch_size": 256, "num_epochs": 1, "device": "cpu"})
    with pytest.raises(ConfigError) as error:
        fit(config)
    message = str(error.value)
    assert message.startswith("this run needs about ") and " TiB (parameters " in message
    assert "but the cpu has" in message and "lower --batch-size, --image-size or --ensemble-size" in message
    assert "\n" not in message
    assert not (tmp_path / "data").exists()  # the demo was not generated
    assert not any((tmp_path / "runs").iterdir())  # nor a run folder left behind


def _checkpoint(path, **config_values):
    """A best.pt of a 2-branch tiny ensemble (random weights) whose config says `config_values`."""
    config = resolve(RunConfig.from_flat({"data_name": "demo", "ensemble_size": 2, "meta_class_size": 4}))
    flat = {**config.to_flat(), **config_values}
    torch.save({"model": build_model(config.model).state_dict(), "meta_ids": torch.zeros(2, 8, dtype=torch.long),
                "config": flat, "epoch": 1, "metrics": {}}, path)
    return path


def test_a_checkpoint_whose_config_is_out_of_bounds_is_refused_on_load(tmp_path):
    assert antimetric.load(_checkpoint(tmp_path / "fine.pt"), device="cpu").ensemble_size == 2
    with pytest.raises(ConfigError) as error:
        antimetric.load(_checkpoint(tmp_path / "huge.pt", image_size=100_000), device="cpu")
    assert str(error.value) == (f"{tmp_path / 'huge.pt'}: the config it holds is refused (--image-size must be at "
                                "most 4096, got 100000)")
    with pytest.raises(ConfigError, match="--with-fc must be true or false"):
        antimetric.load(_checkpoint(tmp_path / "typed.pt", with_fc="true"), device="cpu")


def test_a_checkpoint_too_large_for_the_device_is_refused_on_load(tmp_path):
    from antimetric.training.memory_estimate import check_memory

    ensemble = antimetric.load(_checkpoint(tmp_path / "best.pt"), device="cpu")
    with pytest.raises(ConfigError) as error:
        check_memory(ensemble.config, torch.device("cpu"), training=False, available=2**20)
    assert str(error.value).startswith("this ensemble needs about ")
    assert "to embed a batch of 64 images, but the cpu has 1.0 MiB available" in str(error.value)
