"""The trainable in a user's own Tuner, exactly as the README shows it."""
import pytest
import ray
from ray import tune

from studies.record.tracking import MLflowTrialCallback, ensure_experiment
from studies.trials.trainable import train_ensemble
from tests.fixtures.studies import check_trial_runs, trial_runs

pytestmark = pytest.mark.slow  # Ray


def test_own_tuner_with_a_failing_trial(demo_data_path, study_dirs):
    experiment_id = ensure_experiment(study_dirs["tracking_uri"], "t")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            train_ensemble,
            param_space={
                "data_name": "demo", "data_path": str(demo_data_path), "num_epochs": 2,
                "image_size": 32, "max_per_class": 8, "ensemble_size": 4,
                # 400 meta-classes exceed the 24 training classes, and lr 1e20 makes the loss NaN:
                # each of those trials must fail alone, with its reason, and never be the best.
                "meta_class_size": tune.grid_search([4, 400, 5]),
                "lr": tune.sample_from(lambda spec: 1e20 if spec.config["meta_class_size"] == 5 else 3e-3),
            },
            tune_config=tune.TuneConfig(metric="val_recall_at_1", mode="max"),
            run_config=tune.RunConfig(storage_path=str(study_dirs["storage"]), name="own",
                                      callbacks=[MLflowTrialCallback(study_dirs["tracking_uri"], experiment_id, "t")]),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(results) == 3 and results.num_errors == 2
    good = results.get_best_result()
    assert good.config["meta_class_size"] == 4 and good.metrics["epoch"] == 2
    assert 0 <= good.metrics["test_recall_at_1"] <= 1
    errors = {r.config["meta_class_size"]: str(r.error) for r in results if r.error}
    assert "--meta-class-size 400" in errors[400]
    assert "the training loss became nan" in errors[5]

    client, runs, parents = trial_runs(study_dirs["tracking_uri"])
    check_trial_runs(client, runs, parents, ["meta_class_size"])  # the callback made the parent run itself
    parent = parents[0].data.metrics
    assert parents[0].info.status == "FINISHED" and parents[0].info.run_name == "t"
    assert (parent["trials_done"], parent["trials_failed"], parent["trials_stopped_early"]) == (1, 2, 0)
    status = {r.data.params["meta_class_size"]: r for r in runs}
    assert parent["best_val_recall_at_1"] == status["4"].data.metrics["best_val_recall_at_1"]
    assert status["4"].info.status == "FINISHED"
    assert status["400"].info.status == "FAILED" and "--meta-class-size 400" in status["400"].data.tags["error"]
    assert status["5"].info.status == "FAILED" and "the training loss became nan" in status["5"].data.tags["error"]
