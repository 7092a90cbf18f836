"""The evaluation's section of the run config: which Recall@K values, and how large its batches and blocks."""
from __future__ import annotations

from dataclasses import dataclass

from antimetric.base.fields import check_at_least, option
from antimetric.errors import ConfigError


def parse_recalls(value: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in (value.split(",") if isinstance(value, str) else value))
    except ValueError:
        raise ConfigError(f"--recalls must be comma-separated integers such as 1,2,4,8, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--recalls must be positive integers such as 1,2,4,8, got {value!r}")
    return tuple(sorted(set(ks)))


@dataclass
class EvalConfig:
    recalls: tuple[int, ...] | None = option(None, "Recall@K values, e.g. 1,2,4,8", parse=parse_recalls)
    eval_batch_size: int | None = option(None, "evaluation batch size (default: 2 x --batch-size)", parse=int)
    chunk_size: int = option(4096, "query rows per block of the exact kNN search", parse=int)

    def check(self) -> None:
        """The rules of a resolved evaluation section (every None default filled in)."""
        check_at_least({"eval_batch_size": self.eval_batch_size, "chunk_size": self.chunk_size}, 1)
