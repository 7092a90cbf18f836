"""The study's run as its summary: its description in MLflow's UI (which trial won, with a link to its run, the
space searched, the verdict, how to load and serve the registered model), tags naming the winner's run, and
the winner's searched values as params `best.<key>`.

The search's summary writes them for its best trial; a confirmation stage then writes them again for its
winner (tags and description replace the search's; the search's best stays in `search_best_*` tags and in
the description). Params cannot change in MLflow, so `best.*` is logged once, for the study's final winner:
by the search's summary when no confirmation stage follows, else by the stage's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from studies.conclusions.confirm import DEFAULT, describe
from studies.conclusions.intervals import Interval
from studies.design.settings import StudySettings
from studies.record.registry import ALIAS, model_name
from studies.record.tracking import NUMBER_TAG
from studies.trials.metric_names import OBJECTIVE, TEST_RECALL

# MLflow's UI shows this tag as the run's description, as markdown (showdown, GitHub flavour, cleaned by
# sanitize-html, which keeps a relative <a href>; read from MLflow 3.17's JS bundle, mlflow/server/js/build).
NOTE_TAG = "mlflow.note.content"
BEST_TRIAL_TAG, BEST_RUN_TAG = "best_trial", "best_run_id"  # the study's winner (the confirmed one, if confirmed)
SEARCH_BEST_TRIAL_TAG, SEARCH_BEST_RUN_TAG = "search_best_trial", "search_best_run_id"
BEST_PARAM = "best."


@dataclass(frozen=True)
class Pick:
    """A run the study's run points to: its label ("trial 7", or "default" for the default configuration),
    its MLflow run and the searched values it trained with."""

    label: str
    run_id: str
    values: dict[str, Any]


def trial_pick(run, values: dict[str, Any], label: str | None = None) -> Pick | None:
    """The Pick of a trial's MLflow `run` (a search trial's or a confirmation run's); None for no run. A search
    trial is labelled by its number; a confirmation run by `label`, its configuration's."""
    if run is None:
        return None
    number = run.data.tags.get(NUMBER_TAG)
    return Pick(label or (f"trial {number}" if number else run.info.run_name), run.info.run_id, values)


def link(experiment_id: str, pick: Pick, text: str | None = None) -> str:
    """A markdown link that MLflow's UI opens on the pick's run page (its routes follow `#`)."""
    return f"[{text or pick.label}](#/experiments/{experiment_id}/runs/{pick.run_id})"


def summary_tags(winner: Pick | None, search_best: Pick | None) -> dict[str, str]:
    tags = {}
    if winner is not None:
        tags.update({BEST_TRIAL_TAG: winner.label, BEST_RUN_TAG: winner.run_id})
    if search_best is not None:
        tags.update({SEARCH_BEST_TRIAL_TAG: search_best.label, SEARCH_BEST_RUN_TAG: search_best.run_id})
    return tags


def best_params(winner: Pick) -> dict[str, Any]:
    return {BEST_PARAM + key: value for key, value in winner.values.items()}


def search_note(settings: StudySettings, experiment_id: str, best: Pick | None, metrics: dict[str, float]) -> str:
    """The description after the search: its best trial, not confirmed (a confirmation stage may follow)."""
    if best is None:
        return f"# Study {settings.experiment}\n\nNo trial finished, so there is no winner.\n\n" + _space(settings)
    score = (f"validation Recall@1 {_number(metrics.get(OBJECTIVE))}, test Recall@1 "
             f"{_number(metrics.get(TEST_RECALL))} at its selected epoch")
    if settings.confirm_top:
        why = ("Not confirmed yet: the confirmation stage, which trains the best configurations and the default one "
               f"{settings.repeats} times each, follows the search and rewrites this description with its winner.")
        model = "The confirmation stage's winner is registered as the model."
    else:
        why = ("Not confirmed: this study ran no confirmation stage (`--confirm-top 0`), so this is one run's "
               "validation score, picked as the highest of all trials and so biased upwards. A study with "
               "`--confirm-top 3` trains the best configurations again and compares them with the default.")
        model = _model(settings)
    return (f"# Study {settings.experiment}: winner {link(experiment_id, best)} (not confirmed)\n\n"
            f"The search's best trial, {link(experiment_id, best)}: {score}. {why}\n\n"
            f"{_values(best)}\n\n{_space(settings)}\n\n{model}\n")


def confirmed_note(settings: StudySettings, experiment_id: str, winner: Pick, search_best: Pick | None,
                   confirmed: Interval, default: Interval, verdict: str) -> str:
    """The description after the confirmation stage: its winner (the run linked and registered is the winner
    configuration's best repeat), its interval and verdict, and the search's best trial."""
    name = "the default configuration" if winner.label == DEFAULT else f"{winner.label}'s configuration"
    confirmed_ones = "Pareto-optimal" if settings.objective == "pareto" else f"{settings.confirm_top} best"
    if search_best is None:
        searched = ""
    elif search_best.label == winner.label:
        searched = f"The search's best trial, {link(experiment_id, search_best)}, is the winner."
    else:
        searched = (f"The search's best trial was {link(experiment_id, search_best)} (one run, by validation "
                    "Recall@1); trained again, it did not win.")
    return (f"# Study {settings.experiment}: winner {link(experiment_id, winner)} (confirmed)\n\n"
            f"The confirmation stage trained the search's {confirmed_ones} configurations and the default one "
            f"{settings.repeats} times each (each run with its own seed and validation classes). The winner, by "
            f"mean validation Recall@1, is {name}: test Recall@1 {confirmed}; the default's {default}. The link "
            f"goes to the winner's best repeat, the run registered as the model.\n\n"
            f"**Verdict:** {verdict}\n\n{searched}\n\n{_values(winner)}\n\n{_space(settings)}\n\n{_model(settings)}\n")


def _values(pick: Pick) -> str:
    return f"Its searched values (params `{BEST_PARAM}*`; its whole config: `best_config.json`): {describe(pick.values)}"


def _space(settings: StudySettings) -> str:
    rows = "\n".join(f"- `{key}`: {spec.get('type')} " + ", ".join(f"{k} {json.dumps(v)}" for k, v in spec.items()
                                                                  if k != "type")
                     for key, spec in settings.space.items())
    return (f"## Search space\n\n{settings.num_samples} trials of up to {settings.max_epochs} epochs, objective "
            f"{settings.objective} (`search_space.json`):\n\n{rows}")


def model_uri(settings: StudySettings) -> str:
    return f"models:/{model_name(settings.experiment)}@{ALIAS}"


def _model(settings: StudySettings) -> str:
    uri, store = model_uri(settings), settings.tracking_uri
    return (f"## Model\n\nRegistered as `{uri}` (images in, embeddings out).\n\n"
            f"- load: `MLFLOW_TRACKING_URI={store} python -c 'import antimetric; "
            f"antimetric.load(\"{uri}\")'`\n"
            f"- serve: `MLFLOW_TRACKING_URI={store} mlflow models serve -m {uri} --env-manager local "
            "--host 127.0.0.1 --port 5001`")


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:.4f}"
