"""Config fields that are also command-line options: each section of the run config (data, model, training,
evaluation) declares its fields with `option`, so a field's default, help, choices and spellings are declared
once, and `antimetric.options` builds the arguments of `antimetric train` and `studies.search` from them."""
from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from antimetric.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """How a config field appears on a command line (`antimetric.options` builds the arguments)."""

    help: str
    parse: Callable[[str], Any] | None = None  # text -> value; None: the text itself (bool fields are flags)
    choices: tuple[Any, ...] | None = None
    aliases: tuple[str, ...] = ()  # further spellings, e.g. the seed's --backbone-type
    metavar: str | None = None
    const: Any = None  # the value of the option given without an argument (then optional)


def option(default: Any, help: str, **form: Any) -> Any:
    """A config field with its default and its command-line form: the one declaration of an option."""
    return field(default=default, metadata={"option": Option(help, **form)})


def value_kind(f: dataclasses.Field) -> str:
    """What the command line makes of config field f: "bool" (a --flag/--no-flag), "int", "float", "text" (the
    text itself) or "parsed" (its own parse, e.g. --recalls)."""
    if f.type in ("bool", "bool | None"):
        return "bool"
    parse = f.metadata["option"].parse
    return {int: "int", float: "float", None: "text"}.get(parse, "parsed")


_KIND_TEXT = {"bool": "true or false", "int": "a whole number", "float": "a number", "text": "text"}


def is_whole(value: Any) -> bool:
    """A whole number, and not a bool (True is an int to Python, never a count to a user)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_count(value: Any) -> bool:
    """A whole number of 0 or more: an epoch, a number of workers, MiB of memory, as a record holds them."""
    return is_whole(value) and value >= 0


def check_value(f: dataclasses.Field, value: Any) -> None:
    """A typed value (a study's space, a config.json) of the type the command line gives field f: "false" for a
    flag, 32.5 or True for a whole number, are refused. None passes where the field's default is None."""
    kind = value_kind(f)
    if (value is None and f.default is None) or kind == "parsed":
        return
    accepted = {"bool": isinstance(value, bool),
                "int": is_whole(value),
                "float": isinstance(value, numbers.Real) and not isinstance(value, bool),
                "text": isinstance(value, (str, os.PathLike))}[kind]
    if not accepted:
        raise ConfigError(f"--{f.name.replace('_', '-')} must be {_KIND_TEXT[kind]}, got {value!r}")


def check_types(section: Any) -> None:
    """Every option field of a config section holds a value of its command-line type (check_value)."""
    for f in dataclasses.fields(section):
        if "option" in f.metadata:
            check_value(f, getattr(section, f.name))


def check_at_least(values: dict[str, int | None], low: int) -> None:
    """Each named option (config field name -> value; None skipped) is at least `low`."""
    for name, value in values.items():
        if value is not None and value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")


def check_at_most(values: dict[str, tuple[int, int]]) -> None:
    """Each named option (config field name -> (value, cap)) is at most its cap."""
    for name, (value, cap) in values.items():
        if value > cap:
            raise ConfigError(f"--{name.replace('_', '-')} must be at most {cap}, got {value}")
