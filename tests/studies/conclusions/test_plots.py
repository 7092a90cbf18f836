"""The study's plots (studies/conclusions/plots.py) on a record like the demo's: most trials stopped early by ASHA."""
import math
import re
import warnings

import matplotlib.pyplot as plt
import optuna
import pytest
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState

from studies.conclusions.param_plots import BEST_COLOR
from studies.conclusions.plots import interactive_figures, optuna_figures, optuna_plots
from studies.design.spaces import distributions
from studies.record.optuna_record import TrialRecord, write_study

SPACE = {"ensemble_size": {"type": "choice", "values": [4, 8, 12]},
         "meta_class_size": {"type": "int", "low": 2, "high": 12, "log": True},
         "share_type": {"type": "choice", "values": ["layer1", "layer2"]},
         "lr": {"type": "float", "low": 3e-4, "high": 5e-3, "log": True}}
DISTRIBUTIONS = distributions(SPACE, n_classes=30, fixed={})
PLOTS = {"intermediate_values", "optimization_history", "param_importances", "parallel_coordinate", "slice"}


def _records(n_complete: int = 3, n_pruned: int = 9) -> list[TrialRecord]:
    """Trials started in this order; COMPLETE ones ran 4 epochs, PRUNED ones 1 or 2 (ASHA's rungs).
    The best is the last COMPLETE one (best epoch 0.5 + 0.01 * n_complete); a PRUNED one's best epoch is its last."""
    states = [TrialState.COMPLETE] * n_complete + [TrialState.PRUNED] * n_pruned
    records = []
    for i, state in enumerate(states):
        top = 0.5 + 0.01 * i if state == TrialState.COMPLETE else 0.1 + 0.02 * i
        epochs = 4 if state == TrialState.COMPLETE else 1 + i % 2
        curve = {e: top * (0.7 + 0.3 * e / epochs) for e in range(1, epochs + 1)}
        params = {"ensemble_size": [4, 8, 12][i % 3], "meta_class_size": 3 + (7 * i) % 10,
                  "share_type": ["layer1", "layer2"][i % 2], "lr": 3e-4 * 1.25 ** i}
        records.append(TrialRecord(f"r{i}", state, 1000.0 + 10 * ((7 * i) % len(states)), curve, params))
    return records


def _study(tmp_path, records: list[TrialRecord]) -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    write_study(records, storage, "s", DISTRIBUTIONS)
    return optuna.load_study(study_name="s", storage=storage)


def _best_epochs(study: optuna.Study) -> dict[int, float]:
    """Each trial's value as the plots must count it: its best epoch (a COMPLETE trial's recorded value)."""
    return {t.number: max(t.intermediate_values.values()) for t in study.trials if t.intermediate_values}


def _titles(figure) -> list[str]:
    texts = [figure._suptitle.get_text()] if figure._suptitle else []
    for axes in figure.axes:
        texts += [axes.get_title(loc) for loc in ("left", "center", "right")]
    return [t for t in texts if t]


def test_every_trial_counts_pruned_ones_by_their_best_epoch(tmp_path):
    study = _study(tmp_path, _records())
    values = _best_epochs(study)
    assert len(values) == 12
    figures = dict(optuna_figures(study))
    assert set(figures) == PLOTS

    slice_axes = [a for a in figures["slice"].axes if a.get_xlabel() == "lr"][0]
    points = sorted(y for c in slice_axes.collections if c.get_label() != "best" for _, y in c.get_offsets())
    assert points == pytest.approx(sorted(values.values()))  # 12 points, not the 3 COMPLETE ones
    lines = [line for line in figures["parallel_coordinate"].axes[0].get_lines() if line.get_gid() == "trial"]
    assert len(lines) == 12

    # the importances drawn are PED-ANOVA's (optuna-dashboard's evaluator) over all 12 trials at those values
    every = optuna.create_study(direction="maximize")
    every.add_trials([optuna.trial.create_trial(value=values[t.number], params=t.params, distributions=t.distributions)
                      for t in study.trials])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = get_param_importances(every, target=lambda t: -t.value, evaluator=PedAnovaImportanceEvaluator())
    bars = figures["param_importances"].axes[0].containers[0]
    drawn = {bar.get_gid(): bar.get_width() for bar in bars}
    assert drawn == pytest.approx(expected)
    assert "12 trials" in _titles(figures["param_importances"])[0]
    # the record itself keeps what ASHA did
    assert [t.state for t in study.trials].count(TrialState.PRUNED) == 9


def test_with_five_complete_trials_the_dashboards_ranking_is_drawn_beside(tmp_path):
    """optuna-dashboard ranks the COMPLETE trials alone, with PED-ANOVA on the stored record."""
    study = _study(tmp_path, _records(n_complete=5, n_pruned=3))
    figure = dict(optuna_figures(study))["param_importances"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dashboard = get_param_importances(study, target=lambda t: -t.values[0], evaluator=PedAnovaImportanceEvaluator())
    complete = {bar.get_gid(): bar.get_width() for bar in figure.axes[0].containers[1]}
    assert complete == pytest.approx(dashboard)


def test_no_importances_from_fewer_than_five_trials(tmp_path, capsys):
    study = _study(tmp_path, _records(n_complete=2, n_pruned=2))
    figures = dict(optuna_figures(study))
    assert "param_importances" not in figures and {"parallel_coordinate", "slice"} <= set(figures)
    notes = [line for line in capsys.readouterr().out.splitlines() if "importances" in line]
    assert notes == ["note: no parameter importances: they need 5 trials with a value, the study has 4"]


def test_integer_parameters_are_on_a_linear_axis_and_the_best_trial_stands_out(tmp_path):
    study = _study(tmp_path, _records())
    figures = dict(optuna_figures(study))
    slices = {a.get_xlabel(): a for a in figures["slice"].axes if a.get_xlabel()}
    assert slices["meta_class_size"].get_xscale() == "linear" and slices["ensemble_size"].get_xscale() == "linear"
    assert slices["lr"].get_xscale() == "log"
    figures["slice"].canvas.draw()
    ticks = [t.get_text() for t in slices["meta_class_size"].get_xticklabels() if t.get_text()]
    assert ticks and all(re.fullmatch(r"\d+", t) for t in ticks)

    axes = figures["parallel_coordinate"].axes[0]
    ticks = [(float(t.get_text()), t.get_position()[1]) for t in axes.texts if t.get_gid() == "meta_class_size"]
    assert len(ticks) >= 3 and all(value == int(value) for value, _ in ticks)
    (v0, y0), (v1, y1) = ticks[0], ticks[-1]
    assert all(math.isclose(y, y0 + (y1 - y0) * (v - v0) / (v1 - v0), abs_tol=1e-9) for v, y in ticks)  # linear

    best = max(study.trials, key=lambda t: t.value or -1).number
    lines = axes.get_lines()
    highlighted = [line for line in lines if line.get_label() == f"best: trial {best}"]
    assert len(highlighted) == 1 and highlighted[0].get_zorder() > max(line.get_zorder() for line in lines
                                                                       if line is not highlighted[0])
    marked = [c for c in slices["lr"].collections if c.get_label() == "best"]
    assert len(marked) == 1 and marked[0].get_offsets()[0][1] == pytest.approx(study.trials[best].value)


def test_each_figure_has_one_title(tmp_path):
    for name, figure in optuna_figures(_study(tmp_path, _records())):
        assert len(_titles(figure)) == 1, (name, _titles(figure))


def test_png_and_interactive_html_files_are_written_from_the_storage(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    write_study(_records(), storage, "s", DISTRIBUTIONS)
    files = optuna_plots(storage, "s", tmp_path)
    assert set(files) == PLOTS | {f"{name}_html" for name in PLOTS}
    for name in PLOTS:
        assert files[name].suffix == ".png" and files[name].stat().st_size > 10_000
        html = files[f"{name}_html"]
        assert html.name == f"{name}.html" and html.parent == tmp_path
        assert "Plotly.newPlot" in html.read_text()
    assert not plt.get_fignums()
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials].count(TrialState.PRUNED) == 9

    interactive = dict(interactive_figures(study, PLOTS))
    assert all(len(trace.x) == 12 for trace in interactive["slice"].data)  # every trial, in each parameter's panel
    axes = {interactive["slice"].layout[k].title.text: interactive["slice"].layout[k].type
            for k in interactive["slice"].layout if k.startswith("xaxis")}
    assert axes["meta_class_size"] != "log" and axes["lr"] == "log"
    lines = [trace for trace in interactive["parallel_coordinate"].data if trace.mode == "lines"]
    assert len(lines) == 12 and lines[-1].line.color == BEST_COLOR and lines[-1].y[0] == 1  # the best, on top
    assert interactive["param_importances"].layout.title.text == _titles(dict(optuna_figures(study))["param_importances"])[0]


def test_the_optimization_history_is_drawn_in_start_order(tmp_path):
    study = _study(tmp_path, _records(n_complete=3, n_pruned=2))
    figures = dict(optuna_figures(study))
    axes = figures["optimization_history"].axes[0]
    points = [tuple(p) for p in axes.collections[0].get_offsets().tolist()]
    complete = [(t.number, t.value) for t in study.trials if t.state == TrialState.COMPLETE]
    assert points == complete and [n for n, _ in complete] != [0, 1, 2]  # numbered by start, not as listed
    best = next(line for line in axes.get_lines() if line.get_label() == "Best Value")
    values = dict(complete)
    running = [max([values[n] for n in values if n <= number], default=float("-inf")) for number in range(5)]
    assert list(best.get_xdata()) == list(range(5)) and list(best.get_ydata()) == running
    legend = [t.get_text() for t in figures["intermediate_values"].axes[0].get_legend().get_texts()]
    best = max(_best_epochs(study).items(), key=lambda item: item[1])[0]
    assert legend == [f"trial {t.number} ({t.state.name})" + (", the best" if t.number == best else "") for t in study.trials]


def test_no_parameter_plots_without_two_trials_with_a_value(tmp_path, capsys):
    study = _study(tmp_path, _records(n_complete=1, n_pruned=0))
    assert set(dict(optuna_figures(study))) == {"intermediate_values", "optimization_history"}
    assert "they need 2 trials with a value, the study has 1" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def _no_open_figures():
    yield
    plt.close("all")
