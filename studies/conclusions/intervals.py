"""A metric over repeated runs as a researcher reports it: the mean and a 95 % Student-t confidence interval."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import t


@dataclass(frozen=True)
class Interval:
    """The mean of n values and the half-width of its 95 % interval, t_{0.975, n-1} * sd / sqrt(n) with the
    sample standard deviation (n - 1 in the denominator); nan for n < 2, where there is no spread to measure."""

    mean: float
    ci95: float
    n: int

    def __str__(self) -> str:
        """For fractions 0..1 (Recall@K, MAP@R, R-precision): percent with one decimal, the half-width to
        the same precision, then n: "62.1 ± 2.3 % (n=3)"; "62.1 % (n=1)" with no interval to give."""
        if math.isnan(self.ci95):
            return f"{100 * self.mean:.1f} % (n={self.n})"
        return f"{100 * self.mean:.1f} ± {100 * self.ci95:.1f} % (n={self.n})"


def interval(values: Sequence[float]) -> Interval:
    """The mean and 95 % Student-t half-width of `values` (one per repeat). ValueError for no values, or for a
    NaN or infinite one: a failed repeat must be left out, or the whole reported as failed, by the caller."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"interval takes a non-empty sequence of numbers, got {data.tolist()}")
    if not np.isfinite(data).all():
        raise ValueError(f"values must be finite numbers, got {data.tolist()}")
    n = int(data.size)
    if n < 2:
        return Interval(float(data[0]), float("nan"), n)
    half_width = t.ppf(0.975, n - 1) * data.std(ddof=1) / math.sqrt(n)
    return Interval(float(data.mean()), float(half_width), n)
