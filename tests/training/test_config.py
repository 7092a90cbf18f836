from pathlib import Path

import pytest

from antimetric.data.table import TABLE
from antimetric.errors import ConfigError
from antimetric.evaluation.settings import parse_recalls
from antimetric.training.config import RunConfig, resolve


def test_flat_round_trip_and_unknown_keys():
    config = RunConfig.from_flat({"data_name": "cub", "ensemble_size": 4, "lr": 0.01, "recalls": "8,1"})
    assert config.data.data_name == "cub" and config.model.ensemble_size == 4 and config.train.lr == 0.01
    assert config.eval.recalls == (1, 8)
    assert RunConfig.from_flat(config.to_flat()) == config
    with pytest.raises(ConfigError, match="unknown config key 'ensemble'"):
        RunConfig.from_flat({"ensemble": 4})


def test_dataset_defaults_fill_only_unset_fields():
    """An option given keeps its value; every field left unset takes the dataset row's default."""
    given = {"meta_class_size": 64, "lr": 0.5, "recalls": (1, 3)}  # as resolved; given as "3,1"
    for name, row in TABLE.items():
        flat = resolve(RunConfig.from_flat({"data_name": name, **given, "recalls": "3,1"})).to_flat()
        assert {key: flat[key] for key in row.defaults()} == {**row.defaults(), **given}
    unset = resolve(RunConfig()).to_flat()  # `antimetric train` with no option trains the demo
    assert unset["data_name"] == "demo" and {key: unset[key] for key in TABLE["demo"].defaults()} == \
        TABLE["demo"].defaults()


@pytest.mark.parametrize("values,needle", [
    ({"data_name": "mnist"}, "unknown dataset 'mnist'"),
    ({"data_name": "sop", "crop_type": "cropped"}, "which sop does not have"),
    ({"val_fraction": 1.5}, "--val-fraction must be in"),
    ({"ensemble_size": 0}, "--ensemble-size must be at least 1"),
    ({"meta_class_size": 1}, "--meta-class-size must be at least 2"),
    ({"lr": -1.0}, "--lr must be a finite positive number"),
    ({"lr": float("inf")}, "--lr must be a finite positive number"),
    ({"lr": float("nan")}, "--lr must be a finite positive number"),
    ({"seed": -1}, "--seed must be 0 or more"),
    ({"split_seed": -1}, "--split-seed must be 0 or more"),
    ({"val_fold": -1}, "--val-fold must be 0 or more"),
    ({"val_fold": 1}, "--val-fold holds out a fold of --val-fraction"),
    ({"device": "foo"}, "--device must be auto, cpu, cuda or cuda:N"),
    ({"num_workers": -1}, "--num-workers must be 0 or more"),
    ({"chunk_size": 0}, "--chunk-size must be at least 1"),
    ({"eval_batch_size": 0}, "--eval-batch-size must be at least 1"),
    ({"run_name": "a/b"}, "--run-name must be a folder name"),
    ({"run_name": ".."}, "--run-name must be a folder name"),
    ({"implementation": "fast"}, "unknown implementation"),
    ({"precision": "fp16"}, "unknown precision 'fp16'; choose one of auto, fp32, bf16"),
    ({"image_size": 100_000}, "--image-size must be at most 4096"),
    ({"ensemble_size": 1_000_000_000}, "--ensemble-size must be at most 1024"),
    ({"meta_class_size": 10_000_000}, "--meta-class-size must be at most 100000"),
])
def test_bad_values_are_rejected_with_the_option_name(values, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve(RunConfig.from_flat(values))


@pytest.mark.parametrize("text", ["", "a,b", "0,1", "-1"])
def test_bad_recalls(text):
    with pytest.raises(ConfigError, match="--recalls"):
        parse_recalls(text)


@pytest.mark.parametrize("values,needle", [
    ({"with_fc": "false"}, "--with-fc must be true or false, got 'false'"),
    ({"pretrained": 0}, "--pretrained must be true or false, got 0"),
    ({"batch_size": 32.5}, "--batch-size must be a whole number, got 32.5"),
    ({"batch_size": True}, "--batch-size must be a whole number, got True"),
    ({"image_size": "64"}, "--image-size must be a whole number, got '64'"),
    ({"ensemble_size": [4, 8]}, "--ensemble-size must be a whole number, got [4, 8]"),
    ({"lr": "1e-3"}, "--lr must be a number, got '1e-3'"),
    ({"val_fraction": {"a": 1}}, "--val-fraction must be a number, got {'a': 1}"),
    ({"device": 0}, "--device must be text, got 0"),
])
def test_values_of_the_wrong_type_are_rejected_as_the_command_line_would(values, needle):
    """A config dict (a study's space, a checkpoint's config.json) gives typed values: each must have the type
    the option's command-line parsing gives, or "false" would switch a flag on."""
    with pytest.raises(ConfigError) as error:
        resolve(RunConfig.from_flat(values))
    assert needle in str(error.value)


def test_typed_values_the_command_line_would_give_pass():
    import numpy as np

    config = resolve(RunConfig.from_flat({"with_fc": False, "batch_size": np.int64(16), "lr": 1, "image_size": None,
                                          "data_path": Path("data"), "num_workers": None}))
    assert config.train.batch_size == 16 and config.model.with_fc is False
