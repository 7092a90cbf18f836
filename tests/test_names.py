"""Each name (a dataset, a crop type, a backbone, a share type, an implementation, a precision) is defined once,
by the part of the core that owns it; the command lines offer the owner's tuple itself, and no module keeps a
copy of it."""
import argparse
import ast
from pathlib import Path

import pytest

import antimetric
from antimetric.cli import _parser as train_parser
from antimetric.data.settings import CROP_TYPES, DATASETS
from antimetric.model.settings import BACKBONE_NAMES, IMPLEMENTATIONS, PRECISIONS, SHARE_TYPES
from studies.design.settings import OBJECTIVES, PARETO_COSTS
from studies.search import _parser as study_parser

OWNERS = {  # name tuple -> the module that defines it
    DATASETS: "antimetric/data/settings.py", CROP_TYPES: "antimetric/data/settings.py",
    BACKBONE_NAMES: "antimetric/model/settings.py", SHARE_TYPES: "antimetric/model/settings.py",
    IMPLEMENTATIONS: "antimetric/model/settings.py", PRECISIONS: "antimetric/model/settings.py",
    OBJECTIVES: "studies/design/settings.py", PARETO_COSTS: "studies/design/settings.py",
}
ROOT = Path(antimetric.__file__).parent.parent


def _choice_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from ((f"{command} {a}", c) for a, c in _choice_actions(sub))
        elif action.choices is not None:
            yield "/".join(action.option_strings) or action.dest, action.choices


@pytest.mark.parametrize("parser", [train_parser, study_parser], ids=["antimetric", "studies.search"])
def test_every_choice_of_the_command_lines_is_an_owners_tuple(parser):
    """`is`, not `==`: a copy that happens to be equal today is what drifts tomorrow."""
    offered = dict(_choice_actions(parser()))
    assert offered, "no option with choices found: the parser changed shape"
    strays = {option: choices for option, choices in offered.items() if not any(choices is t for t in OWNERS)}
    assert not strays, f"choices not taken from their owner: {strays}"


def _literal_tuples(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) > 1 and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node.lineno, frozenset(e.value for e in node.elts)


def test_no_module_keeps_its_own_copy_of_a_name_list():
    """A literal list of all the backbones (or share types, ...) outside its owner is a second definition."""
    sets = {frozenset(names): owner for names, owner in OWNERS.items()}
    files = [*ROOT.glob("antimetric/**/*.py"), *ROOT.glob("studies/*.py")]
    copies = [f"{path.relative_to(ROOT)}:{line}" for path in files for line, values in _literal_tuples(path)
              if values in sets and str(path.relative_to(ROOT)) != sets[values]]
    assert not copies, f"copies of a name list defined by its owner: {copies}"


def test_the_copy_check_sees_a_copy(tmp_path):
    """The check above would find a planted mirror of the backbone names."""
    planted = tmp_path / "mirror.py"
    planted.write_text(f"BACKBONES = {BACKBONE_NAMES!r}\n")
    assert [values for _, values in _literal_tuples(planted)] == [frozenset(BACKBONE_NAMES)]
