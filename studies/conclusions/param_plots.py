"""The plots of the searched parameters (importances, parallel coordinate, slice), drawn from every trial that
reported an epoch, not only from the COMPLETE ones as Optuna draws them: ASHA stops most trials of a study.

A PRUNED trial counts by its best epoch, as a COMPLETE trial's recorded value is its best epoch (optuna_record):
the objective the study ranks trials by, so the best trial is the one on top. It ran fewer epochs, so its value is
a lower bound of what it would have reached; the plots say so and draw it with their own marker. They read an
in-memory copy of the record (every_trial_study); the record keeps its PRUNED and FAIL states.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from studies.record.optuna_record import quiet_optuna
from studies.trials.trainable import OBJECTIVE

MIN_IMPORTANCE_TRIALS = 5  # PED-ANOVA compares the top 10% with the rest: fewer trials rank by noise
RECORDED_STATE = "recorded_state"  # user attribute of a copied trial: its state in the record
BEST_COLOR = "#d62728"
COLORMAP = "viridis"


def every_trial_study(study: optuna.Study, linear_integers: bool = False) -> optuna.Study:
    """An in-memory copy of the study that maximises OBJECTIVE, in which each trial that reported an epoch is
    COMPLETE with a value: a COMPLETE one its recorded value (a Pareto study's first), a PRUNED one its best
    epoch. Trials keep their numbers (FAIL ones and those that never reported are copied as they were). With
    `linear_integers`, integer parameters lose a log scale, for Optuna's plots to draw them on linear axes
    (PED-ANOVA's importances keep it: they are computed on the scale the parameter was searched on)."""
    copies = []
    for trial in study.get_trials(deepcopy=False):
        finite = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
        value = trial.values[0] if trial.state == TrialState.COMPLETE else max(finite, default=None)
        state = trial.state if value is None or trial.state != TrialState.PRUNED else TrialState.COMPLETE
        copies.append(optuna.trial.create_trial(
            state=state, value=value if state == TrialState.COMPLETE else None, params=trial.params,
            distributions={k: _linear(d) if linear_integers else d for k, d in trial.distributions.items()},
            user_attrs={**trial.user_attrs, RECORDED_STATE: trial.state.name},
            intermediate_values=trial.intermediate_values))
    with quiet_optuna():
        copy = optuna.create_study(direction="maximize")
    copy.add_trials(copies)
    return copy


def _linear(distribution: BaseDistribution) -> BaseDistribution:
    if isinstance(distribution, IntDistribution) and distribution.log:
        return IntDistribution(distribution.low, distribution.high)
    return distribution


def valued(study: optuna.Study) -> list[FrozenTrial]:
    """The trials of an every_trial_study that have a value."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def pruned(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(RECORDED_STATE) == TrialState.PRUNED.name


def counts(trials: list[FrozenTrial]) -> str:
    """`12 trials, the 9 ASHA stopped at their best epoch (of 1-2)`."""
    stopped = [len(t.intermediate_values) for t in trials if pruned(t)]
    if not stopped:
        return f"{len(trials)} trials"
    runs = f"{min(stopped)}-{max(stopped)}" if min(stopped) < max(stopped) else f"{min(stopped)}"
    return f"{len(trials)} trials, the {len(stopped)} ASHA stopped at their best epoch (of {runs})"


def importances(study: optuna.Study) -> dict[str, float]:
    """PED-ANOVA's importances of reaching the top 10% of OBJECTIVE among the study's COMPLETE trials, computed as
    optuna-dashboard computes them (optuna_dashboard/_importance.py: PedAnovaImportanceEvaluator(), the objective
    negated for a maximised direction), so that its ranking of the same trials is this one."""
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances  # scikit-learn: 1 s to import

    with warnings.catch_warnings():  # "computes the importances of params to achieve low `target` values": meant
        warnings.simplefilter("ignore")
        return get_param_importances(study, target=lambda trial: -trial.values[0],
                                     evaluator=PedAnovaImportanceEvaluator())


def importance_figure(every: optuna.Study, recorded: optuna.Study, title: str):
    """Bars of the importances from every trial with a value; beside them, from 5 COMPLETE trials on, those of
    the COMPLETE trials alone, which is what optuna-dashboard shows of the record."""
    import matplotlib.pyplot as plt

    ranked = importances(every)
    names = list(ranked)[::-1]  # the most important on top
    complete = recorded.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    series = [(ranked, f"all {len(valued(every))} trials", "#1f77b4")]
    if len(complete) >= MIN_IMPORTANCE_TRIALS:
        series.append((importances(recorded), f"the {len(complete)} COMPLETE ones alone, as optuna-dashboard ranks",
                       "#ff7f0e"))
    figure, axes = plt.subplots(figsize=(11, 1.5 + 0.55 * len(names) * len(series)))
    height = 0.8 / len(series)
    for i, (values, label, color) in enumerate(series):
        offset = (len(series) - 1) / 2 * height - i * height
        bars = axes.barh(np.arange(len(names)) + offset, [values.get(n, 0.0) for n in names], height,
                         label=label, color=color)
        for bar, name in zip(bars, names):
            bar.set_gid(name)
        axes.bar_label(bars, fmt="%.2f", padding=3, fontsize=9)
    axes.set_yticks(np.arange(len(names)), names)
    axes.set_xlabel(f"importance to reach the top 10% of {OBJECTIVE} (PED-ANOVA, the importances sum to 1)")
    axes.set_xlim(0, max(max(v.values(), default=0) for v, _, _ in series) * 1.15 or 1)
    axes.legend(loc="lower right", fontsize=9)
    if len(series) == 1:
        axes.annotate(f"optuna-dashboard ranks the COMPLETE trials alone: {len(complete)} here, too few to rank "
                      f"(under {MIN_IMPORTANCE_TRIALS})", (0, 0), xycoords="axes fraction", xytext=(0, -42),
                      textcoords="offset points", fontsize=9, color="0.3")
    axes.set_title(title)
    return figure


@dataclass(frozen=True)
class _Scale:
    """Where a parameter's values lie on an axis from 0 to 1, and its tick labels there."""

    position: Callable[[Any], float]
    ticks: list[tuple[float, str]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scale(distribution: BaseDistribution | None, values: list[Any]) -> _Scale:
    """Categories evenly spaced; numbers on a linear axis, floats searched on a log scale on a log axis."""
    from matplotlib.ticker import LogLocator, MaxNLocator

    choices = list(distribution.choices) if isinstance(distribution, CategoricalDistribution) else None
    if choices is not None and not all(_is_number(c) for c in choices):
        def place(value: Any) -> float:
            return choices.index(value) / (len(choices) - 1) if len(choices) > 1 else 0.5
        return _Scale(place, [(place(c), str(c)) for c in choices])
    log = isinstance(distribution, FloatDistribution) and distribution.log
    integer = isinstance(distribution, IntDistribution) or all(isinstance(v, int) for v in choices or values)
    if choices is not None:
        low, high, marks = min(choices), max(choices), sorted(choices)
    else:
        low = distribution.low if distribution is not None else min(values)
        high = distribution.high if distribution is not None else max(values)
        locator = LogLocator(subs=(1, 2, 5)) if log else MaxNLocator(nbins=5, integer=integer)
        marks = [m for m in locator.tick_values(low, high) if low - 1e-12 <= m <= high + 1e-12]
    along = math.log10 if log else float

    def place(value: Any) -> float:
        return (along(value) - along(low)) / (along(high) - along(low)) if high > low else 0.5
    return _Scale(place, [(place(m), f"{int(round(m))}" if integer else f"{m:.3g}") for m in marks])


def parallel_figure(every: optuna.Study, title: str):
    """One line per trial through OBJECTIVE and each parameter, coloured by OBJECTIVE, PRUNED ones dashed, the
    best one red and on top."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    trials = sorted(valued(every), key=lambda t: t.value)  # better ones drawn over worse ones
    names = list(trials[-1].params)
    scales = [_scale(None, [t.value for t in trials])]
    scales += [_scale(trials[-1].distributions.get(n), [t.params[n] for t in trials if n in t.params]) for n in names]
    norm, cmap = Normalize(trials[0].value, trials[-1].value), plt.get_cmap(COLORMAP)
    figure, axes = plt.subplots(figsize=(max(11.0, 1.6 * len(scales)), 6))
    xs = list(range(len(scales)))
    for trial in trials:
        best = trial is trials[-1]
        ys = [scales[0].position(trial.value)] + [s.position(trial.params[n]) for s, n in zip(scales[1:], names)]
        axes.plot(xs, ys, color=BEST_COLOR if best else cmap(norm(trial.value)), linewidth=3.5 if best else 1.6,
                  linestyle="--" if pruned(trial) else "-", zorder=3 if best else 2, gid="trial",
                  label=f"best: trial {trial.number}" if best else "_nolegend_")
    for x, (name, scale) in enumerate(zip([OBJECTIVE, *names], scales)):
        axes.axvline(x, color="0.25", linewidth=1, zorder=1)
        for y, text in scale.ticks:
            axes.text(x + 0.04, y, text, gid=name, fontsize=8.5, va="center", ha="left", zorder=4,
                      bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    axes.set_xticks(xs, [OBJECTIVE, *names], fontsize=9.5)
    axes.set_xlim(-0.1, len(scales) - 0.55)
    axes.set_ylim(-0.04, 1.04)
    axes.set_yticks([])
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)
    figure.colorbar(ScalarMappable(norm, cmap), ax=axes, label=OBJECTIVE, pad=0.01)
    handles = [Line2D([], [], color=BEST_COLOR, linewidth=3.5, label=f"best: trial {trials[-1].number} "
                      f"({trials[-1].value:.3f})"), Line2D([], [], color="0.4", label="COMPLETE"),
               Line2D([], [], color="0.4", linestyle="--", label="PRUNED: its best epoch")]
    axes.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=9, frameon=False)
    axes.set_title(title)
    return figure


def slice_figure(every: optuna.Study, title: str):
    """OBJECTIVE against each parameter, a point per trial coloured by its number (the order the trials
    started), PRUNED ones as triangles, the best one ringed by a red star."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    trials = valued(every)
    best = max(trials, key=lambda t: t.value)
    names = list(best.params)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(11, 0.8 + 3.3 * rows), sharey=True, squeeze=False,
                                layout="constrained")
    norm = Normalize(0, max(t.number for t in trials) or 1)
    for axes, name in zip(grid.flat, names):
        distribution = best.distributions[name]
        choices = list(distribution.choices) if isinstance(distribution, CategoricalDistribution) else None
        categories = choices is not None and not all(_is_number(c) for c in choices)

        def x_of(trial: FrozenTrial) -> Any:
            value = trial.params[name]
            return choices.index(value) + 0.12 * math.sin(trial.number * 2.4) if categories else value

        for is_pruned, marker, label in ((False, "o", "COMPLETE"), (True, "v", "PRUNED: its best epoch")):
            group = [t for t in trials if name in t.params and pruned(t) == is_pruned]
            axes.scatter([x_of(t) for t in group], [t.value for t in group], c=[t.number for t in group],
                         cmap=COLORMAP, norm=norm, marker=marker, s=50, edgecolors="0.15", linewidths=0.6,
                         label=label, zorder=2)
        axes.scatter([x_of(best)], [best.value], marker="*", s=380, facecolors="none", edgecolors=BEST_COLOR,
                     linewidths=2, label="best", zorder=3)
        if categories:
            axes.set_xticks(range(len(choices)), [str(c) for c in choices])
            axes.set_xlim(-0.5, len(choices) - 0.5)
        elif isinstance(distribution, FloatDistribution) and distribution.log:
            axes.set_xscale("log")
            axes.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            axes.xaxis.set_minor_formatter(NullFormatter())
            axes.tick_params(axis="x", labelrotation=30)
        elif choices is not None:
            axes.set_xticks(sorted(choices))
        else:
            axes.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=isinstance(distribution, IntDistribution)))
        axes.set_xlabel(name)
        axes.margins(x=0.1, y=0.08)  # room for the star
        axes.grid(alpha=0.3)
    for axes in grid.flat[len(names):]:
        figure.delaxes(axes)
    for axes in grid[:, 0]:
        axes.set_ylabel(OBJECTIVE)
    figure.colorbar(ScalarMappable(norm, COLORMAP), ax=grid, label='trial number ("trial N")', pad=0.01)
    handles, labels = grid[0, 0].get_legend_handles_labels()
    labels = [f"best: trial {best.number} ({best.value:.3f})" if label == "best" else label for label in labels]
    figure.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    figure.suptitle(title)
    return figure
