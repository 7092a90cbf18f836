"""The study's command line offers every training option of `antimetric train` (one declaration), fixes
what it is given for every trial, and searches the researcher's own space, checked before Ray starts."""
import argparse
import json

import pytest

from antimetric.cli import _parser as train_parser
from antimetric.errors import ConfigError
from antimetric.model.backbones.table import BACKBONES
from antimetric.model.settings import BACKBONE_NAMES
from antimetric.training.config import RunConfig
from studies.design.settings import save_settings
from studies.design.spaces import SPACES
from studies.search import _parser as study_parser
from studies.search import parse_args

# `train` options a study does not take, and why: the dataset is the study's NAME, and a trial's
# run folder is its own (in the study's storage); --resume, --json and --quiet mean other things there.
NOT_IN_STUDIES = {"--data-name", "--data_name", "--data", "--output-dir", "--output_dir", "--run-name", "--run_name",
                  "--reuse-run-name", "--no-reuse-run-name", "--reuse_run_name", "--json", "--quiet", "-h", "--help",
                  "--resume", "--val-fold", "--val_fold", "--split-seed", "--split_seed"}  # the study sets these per run (--data: its NAME|PATH)


def _option_strings(parser, command=None):
    if command is not None:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {s for action in parser._actions for s in action.option_strings}


def test_the_study_takes_every_option_of_train():
    train, study = _option_strings(train_parser(), "train"), _option_strings(study_parser())
    assert train - study == NOT_IN_STUDIES - study


def test_the_model_builds_every_backbone_name_and_only_those():
    assert tuple(BACKBONES) == BACKBONE_NAMES


def _settings(tmp_path, *args):
    return parse_args(["demo", "--data-path", str(tmp_path), "--storage-path", str(tmp_path / "ray"),
                       "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *args])


def test_training_options_are_fixed_for_every_trial_and_leave_the_search(tmp_path):
    settings = _settings(tmp_path, "--backbone", "tiny", "--image-size", "32", "--val-fraction", "0.3",
                         "--no-pretrained", "--batch-size", "16", "--lr", "1e-3", "--with-fc", "--num-epochs", "3")
    assert settings.fixed == {"backbone": "tiny", "image_size": 32, "val_fraction": 0.3, "pretrained": False,
                              "batch_size": 16, "lr": 1e-3, "with_fc": True}
    assert settings.max_epochs == 3
    assert set(settings.space) == set(SPACES["demo"]()) - {"lr", "with_fc"}
    assert RunConfig.from_flat(settings.fixed).data.val_fraction == 0.3


def test_an_own_space_file(tmp_path):
    space = {"ensemble_size": {"type": "choice", "values": [3, 4]},
             "meta_class_size": {"type": "int", "low": 3, "high": 6},
             "batch_size": {"type": "choice", "values": [16, 32]},
             "crop_type": {"type": "choice", "values": ["uncropped", "cropped"]}}
    (tmp_path / "space.json").write_text(json.dumps(space))
    (tmp_path / "space.yaml").write_text("lr:\n  type: float\n  low: 1.0e-4\n  high: 1.0e-2\n  log: true\n")
    assert _settings(tmp_path, "--space", str(tmp_path / "space.json")).space == space
    assert _settings(tmp_path, "--space", str(tmp_path / "space.yaml")).space == {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


@pytest.mark.parametrize("space, needle", [
    ({"lrr": {"type": "float", "low": 1, "high": 2}}, "entry 'lrr' is not a config key"),
    ({"seed": {"type": "int", "low": 0, "high": 9}}, "entry 'seed' is set by the study itself"),
    ({"data": {"type": "choice", "values": ["flowers"]}}, "entry 'data' is set by the study itself"),
    ({"lr": {"type": "uniform", "low": 0.1, "high": 1}}, "entry 'lr' must be a mapping with \"type\""),
    ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "on a log scale, so low must be above 0"),
    ({"lr": {"type": "float", "low": 2, "high": 1}}, "has low 2 above high 1"),
    ({"lr": {"type": "float", "lo": 1, "high": 2}}, "unknown: lo"),
    ({"batch_size": {"type": "choice", "values": []}}, "needs a non-empty list of values"),
    ({"backbone": {"type": "choice", "values": ["resnet9"]}}, "the value 'resnet9' is not accepted"),
    ({"meta_class_size": {"type": "choice", "values": [4, 8]}}, "entry 'meta_class_size' must be searched as an int range"),
    ([], "must map config keys to entries"),
    ({"with_fc": {"type": "choice", "values": ["false"]}},
     "entry 'with_fc': the value 'false' is not accepted (--with-fc must be true or false"),
    ({"batch_size": {"type": "choice", "values": [32.5]}},
     "entry 'batch_size': the value 32.5 is not accepted (--batch-size must be a whole number"),
    ({"batch_size": {"type": "choice", "values": [[16, 32]]}}, "entry 'batch_size': the value [16, 32] is not"),
    ({"share_type": {"type": "choice", "values": [{"a": 1}]}}, "entry 'share_type': the value {'a': 1} is not"),
    ({"batch_size": {"type": "float", "low": 8, "high": 64}}, "entry 'batch_size' takes whole numbers: search it"),
    ({"with_fc": {"type": "int", "low": 0, "high": 1}}, "entry 'with_fc' is true or false: search it as"),
    ({"ensemble_size": {"type": "int", "low": 2, "high": 1_000_000_000}},
     "the value 1000000000 is not accepted (--ensemble-size must be at most 1024"),
    ({"image_size": {"type": "int", "low": 100, "high": 100_000}}, "--image-size must be at most 4096"),
])
def test_a_bad_space_file_is_one_error_naming_the_entry(tmp_path, space, needle):
    (tmp_path / "space.json").write_text(json.dumps(space))
    with pytest.raises(Exception, match="--space") as error:
        _settings(tmp_path, "--space", str(tmp_path / "space.json"))
    assert needle in str(error.value)


def test_print_space_shows_the_built_in_space(capsys):
    with pytest.raises(SystemExit) as exit:
        parse_args(["cub", "--print-space"])
    assert exit.value.code == 0 and json.loads(capsys.readouterr().out) == SPACES["cub"]()


def test_resume_keeps_the_training_options_and_refuses_others(tmp_path):
    settings = _settings(tmp_path, "--lr", "1e-3", "--space", _space_file(tmp_path))
    settings.experiment_path.mkdir(parents=True)
    save_settings(settings)
    with pytest.raises(ConfigError, match="--lr was 0.001 for this study, not 0.002"):
        _settings(tmp_path, "--resume", "--lr", "2e-3")
    resumed = _settings(tmp_path, "--resume")
    assert resumed.fixed == {"lr": 1e-3} and resumed.space == settings.space
    (tmp_path / "other.json").write_text(json.dumps({"batch_size": {"type": "choice", "values": [8]}}))
    with pytest.raises(ConfigError) as error:
        _settings(tmp_path, "--resume", "--space", str(tmp_path / "other.json"))
    assert str(error.value) == ("--resume: this study searches another space than the --space given; drop --space or "
                                "start a new --experiment")


def test_resume_takes_the_same_space_file_again(tmp_path):
    """The file's parsed space is compared with the saved one (not the file's path)."""
    settings = _settings(tmp_path, "--space", _space_file(tmp_path))
    settings.experiment_path.mkdir(parents=True)
    save_settings(settings)
    assert _settings(tmp_path, "--resume", "--space", _space_file(tmp_path)).space == settings.space


def _space_file(tmp_path):
    (tmp_path / "space.json").write_text(json.dumps({"ensemble_size": {"type": "choice", "values": [3, 4]}}))
    return str(tmp_path / "space.json")


def test_a_space_value_that_cannot_fit_in_memory_is_refused_before_the_study_starts(tmp_path):
    """1024 branches at 4096 px, batch 256: tens of TiB of activations, more than any machine has."""
    (tmp_path / "space.json").write_text(json.dumps({"image_size": {"type": "choice", "values": [32, 4096]}}))
    with pytest.raises(ConfigError) as error:
        _settings(tmp_path, "--space", str(tmp_path / "space.json"), "--ensemble-size", "1024", "--batch-size", "256",
                  "--backbone", "tiny")
    message = str(error.value)
    assert "entry 'image_size': the value 4096 is not accepted (this run needs about" in message
    assert "available; lower" in message and "\n" not in message
