"""What the core can use from packages built on it, found through Python entry points.

The core never imports MLflow or Ray; `studies` (installed with the `studies` extras) registers
functions under the entry-point group `antimetric.extensions` (pyproject.toml), and the core calls
them by name when a user asks for something only they can do (an MLflow model as a source, a run
recorded in MLflow).
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Callable

from antimetric.errors import ConfigError

GROUP = "antimetric.extensions"  # the entry-point group (pyproject.toml); a name, not this module's path
MODEL_SOURCE = "model_source"  # (source: str, tracking_uri: str | None) -> Path of a local checkpoint file
RUN_TRACKER = "run_tracker"  # (tracking_uri: str, experiment: str | None, config) -> RunTracker (studies/extensions/run_tracker.py)

_INSTALL_HINT = "install the studies extras (pip install -e '.[studies]', as `make install` does)"


def extension(name: str, wanted_for: str) -> Callable[..., Any]:
    """The function registered under `name`, or a one-line ConfigError saying what `wanted_for` needs."""
    found = entry_points(group=GROUP, name=name)
    for entry in found:
        try:
            return entry.load()
        except ImportError as error:
            raise ConfigError(f"{wanted_for} needs MLflow ({error}); {_INSTALL_HINT}") from None
    raise ConfigError(f"{wanted_for} needs the `{name}` extension of antimetric's studies package; {_INSTALL_HINT}")
