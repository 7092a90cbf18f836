"""Search spaces never hand a trial a combination the core rejects."""
import optuna
import pytest

from antimetric.data.table import TABLE
from antimetric.errors import ConfigError
from antimetric.training.meta_classes import check_meta_class_size
from studies.design.settings import STUDY_DEFAULTS
from studies.design.space_file import check_space
from studies.design.spaces import SPACES, SpaceSampler, restrict, smallest_meta_class_size
from studies.design.study_defaults import DATASET_STUDY_DEFAULTS


@pytest.mark.parametrize("name,n_classes", [("demo", 24), ("demo", 5), ("cub", 80), ("car", 78), ("sop", 9054),
                                            ("isc", 3198)])
def test_sampled_configs_are_valid(name, n_classes):
    sampler = SpaceSampler(SPACES[name](), n_classes, {"ensemble_size": 8})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(60):
        trial = study.ask()
        sampler(trial)
        params = trial.params
        check_meta_class_size(n_classes, params["meta_class_size"], params["ensemble_size"])  # raises if invalid
        study.tell(trial, 0.0)


def test_smallest_meta_class_size():
    for n, m in [(100, 48), (100, 4), (24, 4), (8, 3), (9, 3), (11318, 12), (2, 1)]:
        d = smallest_meta_class_size(n, m)
        assert d**m >= n and (d == 2 or (d - 1) ** m < n)


def test_restrict_drops_ensemble_sizes_without_a_valid_meta_class_size():
    space = {"ensemble_size": {"type": "choice", "values": [2, 4, 8]},
             "meta_class_size": {"type": "int", "low": 2, "high": 3}}
    assert restrict(space, 20, {})["ensemble_size"]["values"] == [4, 8]  # 3**2 = 9 < 20
    with pytest.raises(ConfigError, match="no ensemble size"):
        restrict(space, 10_000, {})  # 3**8 = 6561
    with pytest.raises(ConfigError, match="the training split has 1 class, and meta-classes need 2 or more"):
        restrict(space, 1, {})


def test_every_dataset_of_the_table_has_study_defaults_and_the_table_holds_no_study_concern():
    assert set(DATASET_STUDY_DEFAULTS) == set(TABLE), \
        f"datasets without study defaults (studies/design/study_defaults.py): {set(TABLE) ^ set(DATASET_STUDY_DEFAULTS)}"
    assert not hasattr(TABLE["demo"], "study"), "the dataset table holds what a dataset is, not a study's defaults"


@pytest.mark.parametrize("name", TABLE)
def test_every_dataset_of_the_table_has_a_space_and_defaults_a_study_accepts(name):
    assert set(SPACES) == set(STUDY_DEFAULTS) == set(TABLE)
    constants = {"data_name": name, "data_path": "data", "num_epochs": STUDY_DEFAULTS[name]["max_epochs"], "seed": 0}
    check_space(SPACES[name](), constants, f"the built-in {name} space")  # raises on a value the core rejects


def test_each_trial_trains_with_its_own_seed_from_the_study_seed():
    """The sampler adds each trial's seeds to its config: a training seed from the study seed and the trial's
    number (the same for the same study seed, another for another trial), and the study seed as split seed."""
    from studies.design.seeds import repeat_seed, trial_seed

    def seeds(study_seed: int) -> list[dict]:
        sampler = SpaceSampler(SPACES["demo"](), 24, {}, study_seed=study_seed)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        out = []
        for _ in range(4):
            trial = study.ask()
            out.append(sampler(trial))
            study.tell(trial, 0.0)
        return out

    first = seeds(7)
    assert first == seeds(7) and first != seeds(8)
    assert [s["seed"] for s in first] == [trial_seed(7, n) for n in range(4)]
    assert len({s["seed"] for s in first}) == 4 and {s["split_seed"] for s in first} == {7}
    assert repeat_seed(7, 0) not in {s["seed"] for s in first}
