"""A config option is declared once, by its field: `train` offers every field, and `prepare`, `evaluate` and
`profile` take theirs from the same declaration (spellings, type, choices, metavar), with help of their own."""
import argparse

import pytest

from antimetric.cli import _parser
from antimetric.options import option_names


def _actions(command: str) -> dict[str, list[argparse.Action]]:
    """The command's options by config field (dest), hidden spellings included."""
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    actions: dict[str, list[argparse.Action]] = {}
    for action in sub._actions:
        if action.dest in option_names():
            actions.setdefault(action.dest, []).append(action)
    return actions


@pytest.mark.parametrize("command, fields", [
    ("prepare", {"data_path", "data_name", "data", "crop_type"}),
    ("evaluate", {"data_path", "data_name", "data", "crop_type", "device"}),
    ("profile", {"backbone", "ensemble_size", "meta_class_size", "share_type", "with_fc", "image_size"}),
])
def test_a_commands_config_options_are_declared_by_their_fields(command, fields):
    train, taken = _actions("train"), _actions(command)
    assert set(taken) == fields
    for name, (action,) in taken.items():
        spellings = {s for a in train[name] for s in a.option_strings}
        shown = next(a for a in train[name] if a.help != argparse.SUPPRESS)
        if isinstance(shown, argparse.BooleanOptionalAction):  # a switch here: no --no-flag
            assert set(action.option_strings) == spellings - {s for s in spellings if s.startswith("--no-")}
            continue
        assert set(action.option_strings) == spellings
        assert action.choices is shown.choices and action.metavar == shown.metavar
        assert action.type.__name__ == shown.type.__name__


def test_profile_measures_the_seeds_ensemble_by_default():
    args = _parser().parse_args(["profile"])
    assert (args.backbone, args.ensemble_size, args.meta_class_size, args.share_type, args.with_fc,
            args.image_size) == ("resnet18", 48, 12, "layer1", False, 256)
