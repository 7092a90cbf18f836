"""What a run decides when it starts, where its config leaves the choice to the machine.

The config is what the user asked (`--device auto`, `--precision auto`, no --num-workers); the session settles
each of these once, in a frozen StartDecisions that training, tracking (a study's params) and loading read. A run
folder's config.json and every checkpoint record both: the asked config, and the decisions under DECISIONS_KEY.
A resumed run decides as the run it continues did (`pinned`), so that it repeats it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from antimetric.base.fields import is_count
from antimetric.errors import ConfigError
from antimetric.model.settings import IMPLEMENTATIONS, PRECISIONS

DECISIONS_KEY = "decisions"  # beside the config's keys in config.json, and in a checkpoint
DECIDED_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")  # what "auto" settles to


@dataclass(frozen=True)
class StartDecisions:
    device: str  # "cpu", "cuda", "cuda:1"
    precision: str  # of the forward pass: one of DECIDED_PRECISIONS
    implementation: str  # the network the weights are laid out for: "batched" or "reference"
    num_workers: int | None = None  # data-loader processes; None where nothing loads a dataset (a loaded ensemble)
    image_memory: int | None = None  # MiB of decoded images kept between epochs; None likewise
    # The digest of the records the run started on (DatasetIndex.digest): a run resumed on data whose images,
    # labels or splits changed since would train and be scored on other data, and is refused. None: not known.
    data_digest: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The decisions as a record holds them (a data digest only where one is known: records made before it
        existed, and loaded ensembles, have none)."""
        values = dataclasses.asdict(self)
        if values["data_digest"] is None:
            del values["data_digest"]
        return values

    @classmethod
    def from_dict(cls, values: Any, where: str) -> "StartDecisions":
        """Decisions a config.json or checkpoint recorded; a ConfigError naming `where` if they are damaged."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if not (isinstance(values, dict) and {"device", "precision", "implementation"} <= set(values) <= fields
                and isinstance(values["device"], str) and values["precision"] in DECIDED_PRECISIONS
                and values["implementation"] in IMPLEMENTATIONS
                and all(values.get(key) is None or is_count(values[key]) for key in ("num_workers", "image_memory"))
                and isinstance(values.get("data_digest"), (str, type(None)))):
            raise ConfigError(f"{where}: its {DECISIONS_KEY!r} are not the decisions of a run ({values!r:.200}); "
                              "train it again")
        return cls(**values)


DECISION_KEYS = tuple(f.name for f in dataclasses.fields(StartDecisions))  # also config fields (but for their values)


def split_recorded(values: dict[str, Any], where: str = "config") -> tuple[dict[str, Any], dict[str, Any]]:
    """(the asked config, the decisions) of a recorded config (config.json, a checkpoint's config); damaged
    decisions are a ConfigError naming `where`.

    A record made before 2026-12-03 holds no decisions: its config holds them in place of what was asked, and
    they are read from there."""
    values = dict(values)
    decided = values.pop(DECISIONS_KEY, None)
    if decided is None:
        return values, {key: values[key] for key in DECISION_KEYS if values.get(key) not in (None, "auto")}
    return values, StartDecisions.from_dict(decided, where).as_dict()
