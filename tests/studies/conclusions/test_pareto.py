"""--objective pareto: Recall@1 against a cost. The dominance rule on a hand-made table, the options, the Optuna
record with both directions, and a smoke study whose tagged runs are exactly its non-dominated trials."""
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from antimetric.errors import ConfigError
from antimetric.model.backbones.family import get_backbone
from studies.conclusions.pareto import dominates, pareto_candidates
from studies.conclusions.plots import optuna_plots
from studies.design.settings import SETTINGS_FILE, save_settings
from studies.design.spaces import distributions
from studies.record.optuna_record import TrialRecord, write_study
from studies.search import main, parse_args
from tests.fixtures.studies import run_study, trial_runs

COST_KEYS = ("embedding_dims", "params", "gflops_per_image")
TINY_WIDTH = get_backbone("tiny").feature_width  # a branch's width without a head


def _table() -> pd.DataFrame:
    """Trials as trials.csv lists them: a dominates b (same cost, more recall) and f (more recall, less cost); c
    and d are equal in both (neither dominates the other); e is the most recall at the most cost; g failed and
    h never reported (neither is on any front)."""
    rows = [("a", "TERMINATED", 0.8, 16), ("b", "TERMINATED", 0.7, 16), ("c", "TERMINATED", 0.6, 8),
            ("d", "TERMINATED", 0.6, 8), ("e", "TERMINATED", 0.9, 32), ("f", "TERMINATED", 0.5, 32),
            ("g", "ERROR", 0.95, 4), ("h", "TERMINATED", None, 2)]
    return pd.DataFrame(rows, columns=["trial_dir", "status", "val_recall_at_1", "embedding_dims"])


def test_the_front_is_the_finished_trials_no_other_dominates():
    assert dominates((0.8, 16), (0.7, 16)) and dominates((0.8, 8), (0.7, 16)) and dominates((0.7, 8), (0.7, 16))
    assert not dominates((0.6, 8), (0.6, 8))  # equal in both: neither is better
    assert not dominates((0.9, 32), (0.8, 16)) and not dominates((0.8, 16), (0.9, 32))
    front = pareto_candidates(_table(), "embedding_dims")
    assert list(front["trial_dir"]) == ["e", "a", "c", "d"]  # best recall first
    assert list(front.columns) == list(_table().columns)  # the rows of trials.csv as they are


def test_the_cost_names_its_column():
    table = _table().assign(gflops_per_image=[1.0, 0.5, 2.0, 2.0, 3.0, 0.1, 0.1, 0.1])
    assert list(pareto_candidates(table, "gflops_per_image")["trial_dir"]) == ["e", "a", "b", "f"]


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["demo", "--smoke-test", "--data-path", str(tmp_path), "--storage-path", str(tmp_path / "ray"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--experiment", "t", *extra]


def test_objective_and_cost_options(tmp_path, capsys):
    settings = parse_args(_args(tmp_path))
    assert (settings.objective, settings.cost) == ("recall", "embedding_dims")
    assert main(_args(tmp_path, "--cost", "gflops_per_image")) == 2
    assert capsys.readouterr().err == ("error: --cost gflops_per_image ranks trials only in a Pareto study; add "
                                       "--objective pareto or drop --cost\n")
    with pytest.raises(SystemExit) as exit:
        main(_args(tmp_path, "--objective", "pareto", "--cost", "flops"))
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and "--cost: invalid choice: 'flops'" in err, err
    assert "'embedding_dims', 'gflops_per_image'" in err
    pareto = parse_args(_args(tmp_path, "--objective", "pareto", "--cost", "gflops_per_image"))
    assert (pareto.objective, pareto.cost) == ("pareto", "gflops_per_image")
    pareto.experiment_path.mkdir(parents=True)
    save_settings(pareto)  # --resume keeps both
    assert parse_args(_args(tmp_path, "--resume")).cost == "gflops_per_image"
    assert parse_args(_args(tmp_path, "--resume", "--cost", "gflops_per_image")).objective == "pareto"
    with pytest.raises(ConfigError, match="--objective was pareto for this study, not recall"):
        parse_args(_args(tmp_path, "--resume", "--objective", "recall"))
    with pytest.raises(ConfigError, match="--cost was gflops_per_image for this study, not embedding_dims"):
        parse_args(_args(tmp_path, "--resume", "--cost", "embedding_dims"))


SPACE = {"ensemble_size": {"type": "choice", "values": [3, 4]},
         "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}


def test_the_optuna_record_of_a_pareto_study_has_both_directions(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    records = [TrialRecord("a", TrialState.COMPLETE, 1.0, {1: 0.2, 2: 0.5}, {"ensemble_size": 3, "lr": 2e-3}, cost=12.0),
               TrialRecord("b", TrialState.COMPLETE, 2.0, {1: 0.6, 2: 0.4}, {"ensemble_size": 4, "lr": 3e-3}, cost=16.0),
               TrialRecord("c", TrialState.COMPLETE, 3.0, {1: 0.3, 2: 0.3}, {"ensemble_size": 4, "lr": 5e-3}, cost=16.0),
               TrialRecord("d", TrialState.FAIL, 4.0, {}, {"ensemble_size": 3, "lr": 9e-3}, error="OOM")]
    write_study(records, storage, "s", distributions(SPACE, n_classes=100, fixed={}), cost="embedding_dims")
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_recall_at_1", "embedding_dims"]
    assert [t.values for t in study.trials] == [[0.5, 12.0], [0.6, 16.0], [0.3, 16.0], None]  # best epoch, cost
    assert sorted(t.user_attrs["ray_trial_id"] for t in study.best_trials) == ["a", "b"]
    files = optuna_plots(storage, "s", tmp_path)
    assert {"pareto_front", "optimization_history", "parallel_coordinate", "pareto_front_html"} <= set(files)
    assert files["pareto_front"].stat().st_size > 10_000 and not plt.get_fignums()


@pytest.mark.slow
def test_a_pareto_study_tags_exactly_its_non_dominated_trials(demo_data_path, study_dirs):
    proc = run_study(demo_data_path, study_dirs, "--objective", "pareto", "--cost", "embedding_dims",
                     "--num-samples", "4", "--backbone", "tiny")
    client, runs, parents = trial_runs(study_dirs["tracking_uri"])
    parent = parents[0]
    with tempfile.TemporaryDirectory() as folder:
        table = pd.read_csv(client.download_artifacts(parent.info.run_id, "trials.csv", folder))
        front = pd.read_csv(client.download_artifacts(parent.info.run_id, "pareto_front.csv", folder))
    assert len(runs) == len(table) == 4 and not table["stopped_early"].any()  # FIFO: every trial runs its epochs
    points = [(row.trial_dir, row.val_recall_at_1, row.embedding_dims) for row in table.itertuples()
              if row.status == "TERMINATED"]
    non_dominated = {name for name, recall, cost in points
                     if not any(r >= recall and c <= cost and (r > recall or c < cost) for _, r, c in points)}
    tagged = {run.data.tags["trial_dir"] for run in runs if run.data.tags["pareto"] == "true"}
    assert tagged == non_dominated == set(front["trial_dir"]) and non_dominated
    assert {run.data.tags["pareto"] for run in runs} <= {"true", "false"}
    assert parent.data.params["objective"] == "pareto" and parent.data.params["cost"] == "embedding_dims"
    assert parent.data.metrics["pareto_front_size"] == len(non_dominated)
    assert {"pareto_front.csv", "pareto_front.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    by_dir = table.set_index("trial_dir")
    for run in runs:  # the cost as params and as metrics at every epoch, the same as trials.csv's
        row = by_dir.loc[run.data.tags["trial_dir"]]
        for key in COST_KEYS:
            assert float(run.data.params[key]) == pytest.approx(row[key]) == run.data.metrics[key], key
            assert len(client.get_metric_history(run.info.run_id, key)) == 2
        assert row["embedding_dims"] == int(run.data.params["ensemble_size"]) * (
            int(run.data.params["meta_class_size"]) if run.data.params["with_fc"] == "True" else TINY_WIDTH)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{study_dirs['storage'].parent / 'optuna.db'}")
    assert len(study.directions) == 2 and all(t.state == TrialState.COMPLETE for t in study.trials)
    recorded = {t.user_attrs["ray_trial_id"] for t in study.best_trials}
    assert recorded == set(table[table["trial_dir"].isin(non_dominated)]["ray_trial_id"])
    assert "Pareto front" in proc.stdout


def test_a_study_saved_before_these_options_resumes_as_a_recall_study(tmp_path):
    settings = parse_args(_args(tmp_path))
    settings.experiment_path.mkdir(parents=True)
    save_settings(settings)
    path = settings.experiment_path / SETTINGS_FILE
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in saved.items() if k not in ("objective", "cost")}))
    resumed = parse_args(_args(tmp_path, "--resume"))
    assert (resumed.objective, resumed.cost) == ("recall", "embedding_dims")
