"""The plots of a study's Optuna record (optuna_record.write_study), as PNG and interactive HTML files for the
study's MLflow run."""
from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna

from studies.conclusions.param_plots import (
    BEST_COLOR,
    COLORMAP,
    MIN_IMPORTANCE_TRIALS,
    counts,
    every_trial_study,
    importance_figure,
    parallel_figure,
    slice_figure,
    valued,
)
from studies.trials.trainable import OBJECTIVE


def optuna_plots(storage: str, study_name: str, folder: Path) -> dict[str, Path]:
    """PNG files of the plots of the study recorded in `storage` (write_study), read back from there, and beside
    each the interactive version Optuna draws with plotly, as HTML (`slice.png`, `slice.html`; keys `slice`,
    `slice_html`): what optuna-dashboard shows is what MLflow keeps."""
    import matplotlib.pyplot as plt

    study = optuna.load_study(study_name=study_name, storage=storage)
    files = {}
    for name, figure in optuna_figures(study):
        path = folder / f"{name}.png"
        if name not in OWN_SIZE:
            figure.set_size_inches(11, 5.5)
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        files[name] = path
    for name, figure in interactive_figures(study, set(files)):
        path = folder / f"{name}.html"
        figure.write_html(path, include_plotlyjs=True)  # the page works offline, in MLflow's artifact view
        files[f"{name}_html"] = path
    return files


OWN_SIZE = {"param_importances", "parallel_coordinate", "slice"}  # drawn here (param_plots), to their own size


def optuna_figures(study: optuna.Study) -> Iterator[tuple[str, Any]]:
    """(name, matplotlib figure) of each plot of the study: each trial's objective per epoch (PRUNED ones too) and
    the optimisation history (x is the trial number: the order the trials started), as Optuna draws them; and,
    drawn here from every trial that reported (param_plots: a PRUNED one by its best epoch), the parameter
    importances (from 5 such trials), parallel coordinate and slice. Of a Pareto study (two objectives) these
    plots show the first, OBJECTIVE, and the Pareto front of the COMPLETE trials is drawn too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as optuna_plt

    every = every_trial_study(study)
    best = max(valued(every), key=lambda t: t.value, default=None)
    for name, plot, title in _optuna_plots(study, optuna_plt):
        before = set(plt.get_fignums())
        with warnings.catch_warnings(), plt.rc_context():  # Optuna sets the ggplot style for good: not past here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                plot(study)
            except (ValueError, RuntimeError) as exc:
                print(f"note: no {name} plot ({exc})")
                for number in set(plt.get_fignums()) - before:
                    plt.close(number)
                continue
            figure = plt.gcf()
        _retitle(figure, title)
        if name in ("intermediate_values", "optimization_history"):  # epochs and trial numbers
            figure.axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "intermediate_values":
            _label_states(figure.axes[0], study.get_trials(deepcopy=False), best)
        yield name, figure
    for name, draw in _parameter_plots(every, study):
        yield name, draw()


def _optuna_plots(study: optuna.Study, module) -> list[tuple[str, Callable, str]]:
    """(name, plot function of `module`, title) of the plots Optuna draws of the record as it is: the learning
    curves, the history and the Pareto front (`module`: optuna.visualization or its .matplotlib)."""
    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    counts = f"{complete} COMPLETE of {len(trials)} trials"
    target = _target(study)
    plots: list[tuple[str, Callable, str]] = []
    if any(t.intermediate_values for t in trials):
        plots.append(("intermediate_values", module.plot_intermediate_values,
                      f"{OBJECTIVE} per epoch of the {sum(bool(t.intermediate_values) for t in trials)} trials that reported"))
    if complete:
        plots.append(("optimization_history", partial(module.plot_optimization_history, target=target,
                                                      target_name=OBJECTIVE),
                      f"Optimization history: {counts}, by trial number"))
        if target is not None:
            plots.append(("pareto_front", partial(module.plot_pareto_front, target_names=study.metric_names),
                          f"Pareto front of {counts}: {' against '.join(study.metric_names)}"))
    return plots


def _target(study: optuna.Study) -> Callable | None:
    return (lambda trial: trial.values[0]) if len(study.directions) > 1 else None  # OBJECTIVE


def _parameter_plots(every: optuna.Study, recorded: optuna.Study) -> list[tuple[str, Callable[[], Any]]]:
    """(name, draw) of the plots of the parameters, from the trials with a value in `every` (every_trial_study);
    a printed line says which are left out and why."""
    trials = valued(every)
    if len(trials) < 2 or not trials[0].params:  # one point per parameter says nothing of it
        print(f"note: no parameter importances, parallel coordinate or slice plot: they need 2 trials with a value, "
              f"the study has {len(trials)}")
        return []
    titles = _parameter_titles(trials)
    plots: list[tuple[str, Callable[[], Any]]] = []
    if len(trials) >= MIN_IMPORTANCE_TRIALS:
        plots.append(("param_importances", partial(importance_figure, every, recorded, titles["param_importances"])))
    else:
        print(f"note: no parameter importances: they need {MIN_IMPORTANCE_TRIALS} trials with a value, the study "
              f"has {len(trials)}")
    plots += [("parallel_coordinate", partial(parallel_figure, every, titles["parallel_coordinate"])),
              ("slice", partial(slice_figure, every, titles["slice"]))]
    return plots


def _parameter_titles(trials: list[optuna.trial.FrozenTrial]) -> dict[str, str]:
    return {"param_importances": f"Parameter importances (PED-ANOVA, optuna-dashboard's evaluator) from {counts(trials)}",
            "parallel_coordinate": f"Parallel coordinate: {counts(trials)}", "slice": f"Slice: {counts(trials)}"}


def _retitle(figure, title: str) -> None:
    """One title: ours in place of Optuna's (a suptitle of a figure of several axes, else its axes' title, which
    it sets on the left or in the centre)."""
    if figure.get_suptitle():
        figure.suptitle(title)
        return
    for loc in ("left", "right"):
        figure.axes[0].set_title("", loc=loc)
    figure.axes[0].set_title(title)


def interactive_figures(study: optuna.Study, names: set[str]) -> Iterator[tuple[str, Any]]:
    """(name, plotly figure) of the plots in `names` as Optuna draws them with plotly: the parameter plots from
    every_trial_study, so from the same trials as the PNG files, with the same titles."""
    from optuna import visualization
    from optuna.importance import PedAnovaImportanceEvaluator  # scikit-learn: 1 s of every study's start otherwise

    every, linear = every_trial_study(study), every_trial_study(study, linear_integers=True)
    titles = _parameter_titles(valued(every))
    plots = [(name, partial(plot, study), title) for name, plot, title in _optuna_plots(study, visualization)]
    plots += [(name, plot, titles[name]) for name, plot in (
        ("param_importances", partial(visualization.plot_param_importances, every,
                                      evaluator=PedAnovaImportanceEvaluator(), target_name=OBJECTIVE)),
        ("parallel_coordinate", partial(visualization.plot_parallel_coordinate, linear, target_name=OBJECTIVE)),
        ("slice", partial(visualization.plot_slice, linear, target_name=OBJECTIVE)))]
    for name, plot, title in plots:
        if name not in names:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            figure = plot()
        figure.update_layout(title_text=title)
        _recolour(figure)
        yield name, figure


def _recolour(figure) -> None:
    """Viridis for Optuna's "Blues", which draws the lowest values white; of a parallel coordinate (a line per
    trial, its colour sampled by Optuna), the best trial's line red and on top, as in the PNG."""
    from plotly.colors import sample_colorscale

    scale = COLORMAP.capitalize()
    for trace in figure.data:
        if getattr(getattr(trace, "marker", None), "colorscale", None) is not None:
            trace.marker.update(colorscale=scale, reversescale=False)
    lines = [trace for trace in figure.data if getattr(trace, "mode", None) == "lines" and trace.y and trace.y[0] is not None]
    if figure.layout.xaxis.ticktext and figure.layout.xaxis.ticktext[0] == OBJECTIVE and lines:
        best = max(lines, key=lambda trace: trace.y[0])  # the first axis: OBJECTIVE, from 0 (lowest) to 1
        for trace in lines:
            trace.line.color = BEST_COLOR if trace is best else sample_colorscale(scale, [trace.y[0]])[0]
            trace.line.width, trace.opacity = (3.5, 1) if trace is best else (1.6, 0.85)
        figure.data = [trace for trace in figure.data if trace is not best] + [best]


def _label_states(axes, trials: list[optuna.trial.FrozenTrial], best: optuna.trial.FrozenTrial | None) -> None:
    """Optuna's legend of learning curves says "Trial3"; it says "trial 3 (PRUNED)" here, and the best trial's
    curve is drawn red and on top (Optuna's colours draw every other trial pale)."""
    states = {f"Trial{t.number}": f"trial {t.number} ({t.state.name})" for t in trials}
    for line in axes.get_lines():
        line.set_label(states.get(line.get_label(), line.get_label()))
        if best is not None and line.get_label().startswith(f"trial {best.number} "):
            line.set(color=BEST_COLOR, linewidth=3, alpha=1, zorder=3, label=f"{line.get_label()}, the best")
    if axes.get_legend():
        axes.legend(bbox_to_anchor=(1.05, 1), loc="upper left", borderaxespad=0.0)  # where Optuna puts it
    axes.set_xlabel("epoch")
    axes.set_ylabel(OBJECTIVE)
