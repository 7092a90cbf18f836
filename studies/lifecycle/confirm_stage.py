"""The confirmation stage run with Ray Tune and recorded in MLflow (what it trains and reports: conclusions/confirm.py).

Its runs are trials of a second Tuner of the same trainable, a grid over (configuration, repeat) with Tune's
FIFO scheduler (never stopped early), kept in the folder `confirm` of the study's own folder so that
--resume continues them; in MLflow they are nested under the study's run, tagged stage=confirm, and left
out of the Optuna record (they are not samples of the searcher). The study's run gets confirmation.csv,
confirmation.png, the winner's and the default's intervals, the verdict, and a description and tags that lead
to the winner (conclusions/study_note.py); the registered model is the winner's repeat of the best validation Recall@1.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient
from ray import tune

from studies.conclusions.confirm import (
    DEFAULT,
    UNTRAINED,
    WINNER_KEYS,
    candidates,
    confirmation_grid,
    confirmation_table,
    repeat_row,
    spread,
    verdict,
    winner_row,
)
from studies.conclusions.pareto import pareto_candidates
from studies.conclusions.report import (
    close_open_runs,
    delete_ended_trials_checkpoints,
    log_ended_trials_weights,
    untrained_recall,
)
from studies.conclusions.study_note import (
    NOTE_TAG,
    SEARCH_BEST_RUN_TAG,
    SEARCH_BEST_TRIAL_TAG,
    Pick,
    best_params,
    confirmed_note,
    summary_tags,
    trial_pick,
)
from studies.design.settings import StudySettings, trial_constants
from studies.lifecycle.console import StudyReporter, parameter_columns, trial_dirname, trial_name
from studies.record.registry import register_best_trial, tag_version
from studies.record.study_run import log_summary, parent_run
from studies.record.tracking import CONFIRM_STAGE, NUMBER_TAG, MLflowTrialCallback, runs_by_trial
from studies.trials.metric_names import TEST, TEST_MAP_AT_R, TEST_RECALL, VAL
from studies.trials.trainable import CONFIRM, OBJECTIVE, trial_config

CONFIRM_FOLDER = "confirm"  # the stage's Ray experiment, inside the study's folder
VERDICT_TAG = "verdict"


def confirm_path(settings: StudySettings) -> Path:
    return settings.experiment_path / CONFIRM_FOLDER


def ranked_configurations(settings: StudySettings, table: pd.DataFrame, results,
                          experiment_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(label "trial N", searched values) of the search's finished trials, best validation Recall@1 first
    (the order of the trials table); in a Pareto study, of its Pareto-optimal trials only."""
    if settings.objective == "pareto":
        table = pareto_candidates(table, settings.cost)
    numbers = {trial_dir: run.data.tags.get(NUMBER_TAG, "?")
               for trial_dir, run in runs_by_trial(settings.tracking_uri, experiment_id).items()}
    by_dir = {Path(result.path).name: result for result in results}
    finished = table[(table["status"] == "TERMINATED") & table[OBJECTIVE].notna()] if OBJECTIVE in table else []
    return [(f"trial {numbers.get(trial_dir, '?')}", {k: by_dir[trial_dir].config[k] for k in settings.space})
            for trial_dir in list(finished["trial_dir"]) if trial_dir in by_dir] if len(finished) else []


def confirm_tuner(settings: StudySettings, experiment_id: str, ranked: list[tuple[str, dict[str, Any]]],
                  trainable, checkpoint_config: tune.CheckpointConfig,
                  callbacks: list[tune.Callback]) -> tune.Tuner:
    """The stage's Tuner: restored where an interrupted study had started it, else a new one."""
    if tune.Tuner.can_restore(str(confirm_path(settings))):
        return tune.Tuner.restore(str(confirm_path(settings)), trainable, resume_unfinished=True,
                                  resume_errored=False)
    top = len(ranked) if settings.objective == "pareto" else settings.confirm_top  # a Pareto study: its whole front
    grid = confirmation_grid(candidates(ranked, top), settings.seed, settings.repeats)
    return tune.Tuner(
        trainable,
        param_space={**trial_constants(settings), CONFIRM: tune.grid_search(grid)},
        tune_config=tune.TuneConfig(metric=OBJECTIVE, mode="max", max_concurrent_trials=settings.max_concurrent,
                                    reuse_actors=settings.workers_per_trial == 1, trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=CONFIRM_FOLDER, storage_path=str(settings.experiment_path),
            callbacks=[MLflowTrialCallback(settings.tracking_uri, experiment_id, settings.experiment,
                                           stage=CONFIRM_STAGE), *callbacks],
            checkpoint_config=checkpoint_config, failure_config=tune.FailureConfig(max_failures=0),
            progress_reporter=StudyReporter(parameter_columns(list(settings.space), confirm=True)), verbose=1),
    )


def report_confirmation(settings: StudySettings, results, experiment_id: str) -> pd.DataFrame:
    """The stage's table, plot, metrics and verdict on the study's run, the winner registered; printed too."""
    runs = runs_by_trial(settings.tracking_uri, experiment_id, CONFIRM_STAGE)
    log_ended_trials_weights(settings.tracking_uri, results, runs)
    delete_ended_trials_checkpoints(results, runs)
    close_open_runs(settings.tracking_uri, results, runs)
    rows = [repeat_row(r.config, r.metrics_dataframe, Path(r.path).name) for r in results if not r.error]
    repeats = pd.DataFrame([row for row in rows if row is not None])
    failed = len(results) - len(repeats)
    if not len(repeats) or DEFAULT not in set(repeats["label"]):
        text = f"no confirmation table: {failed} of {len(results)} confirmation runs failed"
        _add_to_note(settings, experiment_id, f"**The confirmation stage failed** ({text}): the search's best "
                     "trial above is not confirmed, and no model was registered.")
        print(f"note: {text}")
        return pd.DataFrame()
    winner = repeats[repeats["label"] == (winner_row(confirmation_table(repeats, None))["trial"] or DEFAULT)]
    best_repeat = winner.loc[winner[OBJECTIVE].idxmax()]
    best_result = next(r for r in results if Path(r.path).name == best_repeat["trial_dir"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = confirmation_table(repeats, untrained_recall(best_result.config, folder))
        text = verdict(table)
        best, default = spread(winner_row(table)), spread(table[table["config"] == DEFAULT].iloc[0])
        metrics = {f"{WINNER_KEYS['confirmed']}_mean": best.mean, f"{WINNER_KEYS['confirmed']}_ci95": best.ci95,
                   f"{WINNER_KEYS['default']}_mean": default.mean, f"{WINNER_KEYS['default']}_ci95": default.ci95,
                   "confirm_repeats": settings.repeats, "confirm_runs_failed": failed}
        files = {"confirmation": folder / "confirmation.csv", "plot": folder / "confirmation.png"}
        table.to_csv(files["confirmation"], index=False)
        plot_confirmation(repeats, table, files["plot"])
        config = trial_config(best_result.config).to_flat()
        label = winner_row(table)["trial"] or DEFAULT
        winner = trial_pick(runs.get(best_repeat["trial_dir"]), {k: config[k] for k in settings.space}, label=label)
        search_best = _search_best(settings, experiment_id)
        tags = {VERDICT_TAG: text, **summary_tags(winner, search_best)}
        if winner is not None:
            tags[NOTE_TAG] = confirmed_note(settings, experiment_id, winner, search_best, best, default, text)
        study_run_id = log_summary(settings.tracking_uri, experiment_id, settings.experiment, files, metrics, config,
                                   tags=tags, params=None if winner is None else best_params(winner))
    model_uri = register_best_trial(settings.tracking_uri, settings.experiment, study_run_id, best_repeat["trial_dir"],
                                    runs)
    if model_uri is not None:
        tag_version(settings.tracking_uri, model_uri, {f"{WINNER_KEYS['confirmed']}_{key}": f"{value:.6g}"
                                                       for key, value in (("mean", best.mean), ("ci95", best.ci95))}
                    | {f"{WINNER_KEYS['confirmed']}_n": str(best.n)})
    _print_confirmation(settings, table, text, model_uri)
    return table


def _search_best(settings: StudySettings, experiment_id: str) -> Pick | None:
    """The search's best trial, as the search's summary tagged it on the study's run."""
    client = MlflowClient(settings.tracking_uri)
    tags = client.get_run(parent_run(client, experiment_id, settings.experiment)[0]).data.tags
    if SEARCH_BEST_RUN_TAG not in tags:
        return None
    return Pick(tags.get(SEARCH_BEST_TRIAL_TAG, "?"), tags[SEARCH_BEST_RUN_TAG], {})


def _add_to_note(settings: StudySettings, experiment_id: str, text: str) -> None:
    client = MlflowClient(settings.tracking_uri)
    run_id, _ = parent_run(client, experiment_id, settings.experiment)
    note = client.get_run(run_id).data.tags.get(NOTE_TAG, "")
    if text not in note:  # once, when summarized again after --resume
        client.set_tag(run_id, NOTE_TAG, f"{note}\n\n{text}\n")


def plot_confirmation(repeats: pd.DataFrame, table: pd.DataFrame, path: Path) -> None:
    """Each configuration's repeats as points, their mean and 95 % interval beside them, validation and test
    Recall@1 side by side, the default last and the untrained ensemble as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = table[table["config"] != UNTRAINED]
    labels = [row["trial"] or DEFAULT for _, row in trained.iterrows()]
    figure, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(labels)), 4.5), sharey=True)
    for ax, key in zip(axes, (OBJECTIVE, TEST_RECALL)):
        for x, (label, (_, row)) in enumerate(zip(labels, trained.iterrows())):
            points = repeats[repeats["label"] == label][key]
            ax.scatter([x - 0.1] * len(points), points, color="tab:gray", s=18, zorder=2)
            ci = row[f"{key}_ci95"]
            ax.errorbar(x + 0.1, row[f"{key}_mean"], yerr=None if pd.isna(ci) else ci, fmt="o",
                        color="tab:red" if label == DEFAULT else "tab:blue", capsize=5, zorder=3)
        untrained = table[table["config"] == UNTRAINED]
        if key.startswith(TEST) and len(untrained):
            ax.axhline(untrained[f"{TEST_RECALL}_mean"].iloc[0], color="tab:gray", linestyle="--",
                       label="untrained")
            ax.legend(loc="lower right")
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_title("validation Recall@1" if key.startswith(VAL) else "test Recall@1")
    axes[0].set_ylabel("Recall@1")
    figure.suptitle(f"Confirmation: repeats (grey), mean and 95 % interval (n={int(trained['repeats'].max())})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _print_confirmation(settings: StudySettings, table: pd.DataFrame, text: str, model_uri: str | None) -> None:
    shown = ["config", "trial", "repeats", *(f"{key}_{what}" for key in (OBJECTIVE, TEST_RECALL, TEST_MAP_AT_R)
                                             for what in ("mean", "ci95"))]
    with pd.option_context("display.max_columns", 30, "display.width", 250, "display.precision", 3,
                           "display.max_colwidth", 60):
        print(f"\nConfirmation: each configuration trained {settings.repeats} times (its own seed and validation "
              "classes each time), mean and 95 % interval:")
        print(table[[c for c in shown if c in table]].fillna("").to_string(index=False))
    if model_uri is not None:
        print(f"\nThe winner's best repeat as an MLflow model: {model_uri}")
    print(f"\nverdict: {text}")
