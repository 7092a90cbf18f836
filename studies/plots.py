"""Optuna's plots of a study's record (optuna_record.write_study), as PNG files for the study's MLflow run."""
from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna

from studies.trainable import OBJECTIVE


def optuna_plots(storage: str, study_name: str, folder: Path) -> dict[str, Path]:
    """PNG files of Optuna's plots of the study recorded in `storage` (write_study), read back from there:
    what optuna-dashboard shows is what MLflow keeps."""
    import matplotlib.pyplot as plt

    files = {}
    for name, figure in optuna_figures(optuna.load_study(study_name=study_name, storage=storage)):
        path = folder / f"{name}.png"
        figure.set_size_inches(11, 5.5)
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        files[name] = path
    return files


def optuna_figures(study: optuna.Study) -> Iterator[tuple[str, Any]]:
    """(name, matplotlib figure) of each Optuna plot of the study: each trial's objective per epoch (PRUNED
    ones too), the optimisation history (x is the trial number: the order the trials started), and from
    the COMPLETE trials alone, as Optuna draws them, parameter importances, parallel coordinate and slice. Of a
    Pareto study (two objectives) these plots show the first, OBJECTIVE, and the Pareto front is drawn too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as optuna_plt

    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    counts = f"{complete} COMPLETE of {len(trials)} trials"
    target = (lambda trial: trial.values[0]) if len(study.directions) > 1 else None  # OBJECTIVE
    plots: list[tuple[str, Callable, str]] = []
    if any(t.intermediate_values for t in trials):
        plots.append(("intermediate_values", optuna_plt.plot_intermediate_values,
                      f"{OBJECTIVE} per epoch of the {sum(bool(t.intermediate_values) for t in trials)} trials that reported"))
    if complete:
        plots.append(("optimization_history", partial(optuna_plt.plot_optimization_history, target=target,
                                                      target_name=OBJECTIVE),
                      f"Optimization history: {counts}, numbered in the order they started"))
        if target is not None:
            plots.append(("pareto_front", partial(optuna_plt.plot_pareto_front, target_names=study.metric_names),
                          f"Pareto front of {counts}: {' against '.join(study.metric_names)}"))
    if complete >= 2:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        plots += [("param_importances", partial(optuna_plt.plot_param_importances, evaluator=evaluator, target=target,
                                                target_name=OBJECTIVE), f"Parameter importances from {counts}"),
                  ("parallel_coordinate", partial(optuna_plt.plot_parallel_coordinate, target=target,
                                                  target_name=OBJECTIVE), f"Parallel coordinate: {counts}"),
                  ("slice", partial(optuna_plt.plot_slice, target=target, target_name=OBJECTIVE), f"Slice: {counts}")]
    else:  # one point per parameter says nothing of it
        print(f"note: no parameter importances, parallel coordinate or slice plot: they need 2 COMPLETE trials "
              f"(ones ASHA did not stop), the study has {complete}")
    for name, plot, title in plots:
        before = set(plt.get_fignums())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. no parameter varies among the COMPLETE trials
                print(f"note: no {name} plot ({exc})")
                for number in set(plt.get_fignums()) - before:
                    plt.close(number)
                continue
        figure = plt.gcf()
        if figure.get_suptitle():  # Optuna titles a figure of several axes, else its one axes
            figure.suptitle(title)
        else:
            figure.axes[0].set_title(title)
        if name in ("intermediate_values", "optimization_history"):  # epochs and trial numbers
            figure.axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "intermediate_values":
            _label_states(figure.axes[0], trials)
        yield name, figure


def _label_states(axes, trials: list[optuna.trial.FrozenTrial]) -> None:
    """Optuna's legend of learning curves says "Trial3"; it says "trial 3 (PRUNED)" here."""
    states = {f"Trial{t.number}": f"trial {t.number} ({t.state.name})" for t in trials}
    legend = axes.get_legend()
    for text in legend.get_texts() if legend else []:
        text.set_text(states.get(text.get_text(), text.get_text()))
    axes.set_xlabel("epoch")
    axes.set_ylabel(OBJECTIVE)
