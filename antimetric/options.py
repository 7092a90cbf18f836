"""Command-line arguments built from the config's fields, so that an option is declared once
(antimetric.training.config) and `antimetric train` and `studies.search` offer the same ones, and `prepare`,
`evaluate` and `profile` spell, parse and check the ones they take as those do.

A run's arguments default to "not given" (argparse.SUPPRESS): `given_options` returns only what the user
typed, and every other value comes from the config's own defaults when it is resolved. The other commands give
theirs the default that means something to them (add_config_option).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from antimetric.base.fields import Option, value_kind
from antimetric.data.table import TABLE
from antimetric.errors import ConfigError
from antimetric.training.config import SECTION_CLASSES, RunConfig


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other error (`antimetric`, `studies.search`)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def option_fields() -> list[tuple[dataclasses.Field, Option]]:
    """Every config field with its Option, in declaration order (run keys last)."""
    fields = [f for kind in SECTION_CLASSES for f in dataclasses.fields(kind)]
    fields += [f for f in dataclasses.fields(RunConfig) if "option" in f.metadata]
    return [(f, f.metadata["option"]) for f in fields]


def option_names() -> list[str]:
    return [f.name for f, _ in option_fields()]


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                         exclude: tuple[str, ...] = ()) -> None:
    """One argument per config field: --dashed-name, the seed's --underscored_name, and aliases.
    Bool fields are --flag/--no-flag."""
    for f, form in option_fields():
        if f.name in exclude:
            continue
        dashed, seed_spellings = _spellings(f, form)
        help_text = form.help if "default:" in form.help else f"{form.help} ({_default_text(f)})"
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS)
        if value_kind(f) == "bool":
            parser.add_argument(*dashed, action=argparse.BooleanOptionalAction, help=_escaped(help_text), **kwargs)
            if seed_spellings:  # the seed's --with_fc: a plain switch, not shown in --help
                parser.add_argument(*seed_spellings, action="store_const", const=True, help=argparse.SUPPRESS,
                                    **kwargs)
            continue
        kwargs.update(type=_parser_of(f.name, form), choices=form.choices, metavar=form.metavar)
        if form.const is not None:
            kwargs.update(nargs="?", const=form.const)
        parser.add_argument(*dashed, help=_escaped(help_text), **kwargs)
        if seed_spellings:
            parser.add_argument(*seed_spellings, help=argparse.SUPPRESS, **kwargs)


def add_config_option(parser: argparse.ArgumentParser, name: str, help: str | None = None,
                      default: Any = None) -> None:
    """Config field `name` as an option of a command that is not a run (prepare, evaluate, profile): its spellings,
    type, choices and metavar as `train` has them, with what it means to that command (`help`, `default`). The
    seed's underscore spellings are shown beside the dashed ones; a bool field is a switch, off unless given."""
    f, form = next((f, form) for f, form in option_fields() if f.name == name)
    dashed, seed_spellings = _spellings(f, form)
    shown = None if help is None else _escaped(help)
    if value_kind(f) == "bool":
        parser.add_argument(*dashed, *seed_spellings, dest=f.name, action="store_true", help=shown)
        return
    parser.add_argument(*dashed, *seed_spellings, dest=f.name, type=_parser_of(f.name, form), choices=form.choices,
                        metavar=form.metavar, default=default, help=shown)


def _spellings(f: dataclasses.Field, form: Option) -> tuple[list[str], list[str]]:
    """The option's --dashed-name and aliases, and the seed's --underscored_name of each that has one."""
    dashed = [f"--{f.name.replace('_', '-')}", *form.aliases]
    return dashed, [n for n in ("--" + n[2:].replace("-", "_") for n in dashed) if n not in dashed]


def _escaped(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help strings with %


def given_options(args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config values the user gave on the command line (only those), but for `exclude`d keys
    (those the parser got from add_config_arguments(..., exclude) and declares itself)."""
    return {name: getattr(args, name) for name in option_names() if hasattr(args, name) and name not in exclude}


def _parser_of(name: str, form: Option):
    parse = form.parse or str

    def parse_text(text: str) -> Any:
        try:
            return parse(text)
        except (ValueError, ConfigError) as error:
            raise argparse.ArgumentTypeError(f"invalid value {text!r} ({error})") from None
    parse_text.__name__ = getattr(parse, "__name__", name)  # argparse names the type in its messages
    return parse_text


def _default_text(f: dataclasses.Field) -> str:
    """The default as a user reads it: the field's, or the per-dataset one where the field defers."""
    if f.default is not None:
        if isinstance(f.default, bool):
            return f"default: {'on' if f.default else 'off'}"
        return f"default: {f.default}"
    per_dataset = {name: _shown(row.defaults()[f.name]) for name, row in TABLE.items() if f.name in row.defaults()}
    if not per_dataset:
        return "default: none"
    groups: dict[str, list[str]] = {}
    for name, value in per_dataset.items():
        groups.setdefault(value, []).append(name)
    if len(groups) == 1:
        return f"default: {next(iter(groups))}"
    return "default: " + "; ".join(f"{value} for {', '.join(names)}" for value, names in groups.items())


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)
