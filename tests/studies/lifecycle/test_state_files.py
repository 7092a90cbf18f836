"""Tune's state files kept whole at each save and put back on --resume when a kill cut one short."""
import json
import pickle

from studies.lifecycle.state_files import KEPT_FOLDER, cut_short_state_files, keep_state, restore_kept_state

EXPERIMENT, SEARCHER = "experiment_state-2026-01-02_00-00-00.json", "searcher-state-2026-01-02_00-00-00.pkl"


def test_a_cut_short_state_file_is_found(tmp_path):
    (tmp_path / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps({"trials": [1, 2, 3]}))
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trials": [1, 2]}))
    assert cut_short_state_files(tmp_path) == []
    newer = tmp_path / SEARCHER
    newer.write_bytes(pickle.dumps({"trials": [1, 2, 3]})[:-2])
    assert cut_short_state_files(tmp_path) == [newer]
    newer.write_bytes(b"")
    assert cut_short_state_files(tmp_path) == [newer]
    state = tmp_path / EXPERIMENT
    state.write_text('{"trials": [1, ')
    assert cut_short_state_files(tmp_path) == [newer, state]
    newer.unlink()
    assert cut_short_state_files(tmp_path) == [state]


def _stage(folder, trials: list[int]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / EXPERIMENT).write_text(json.dumps({"trials": trials}))
    (folder / SEARCHER).write_bytes(pickle.dumps({"trials": trials}))
    (folder / f"tmp-{SEARCHER}").write_bytes(b"half")  # Tune's own temporary name: not kept
    (folder / "trial_1").mkdir(exist_ok=True)  # a trial's staged folder: not kept


def test_the_last_whole_set_is_put_back_in_place_of_a_cut_short_file(tmp_path):
    staging, study = tmp_path / "staging", tmp_path / "study"
    study.mkdir()
    _stage(staging, [1])
    keep_state(staging, study)
    _stage(staging, [1, 2])
    keep_state(staging, study)
    kept = study / KEPT_FOLDER
    assert sorted(path.name for path in kept.iterdir()) == ["2"]  # the older set removed once the new one is whole
    assert sorted(path.name for path in (kept / "2").iterdir()) == sorted([EXPERIMENT, SEARCHER])

    (study / SEARCHER).write_bytes(pickle.dumps({"trials": [1, 2]})[:5])  # as a kill during Ray's copy leaves it
    (study / EXPERIMENT).write_text(json.dumps({"trials": [1]}))
    cut_short = cut_short_state_files(study)
    assert cut_short == [study / SEARCHER]
    assert restore_kept_state(study, cut_short)
    assert cut_short_state_files(study) == []
    assert pickle.loads((study / SEARCHER).read_bytes()) == {"trials": [1, 2]}
    assert json.loads((study / EXPERIMENT).read_text()) == {"trials": [1, 2]}  # the set together, as saved
    assert not list(study.glob("tmp-*"))


def test_a_kill_while_keeping_leaves_the_previous_set(tmp_path):
    staging, study = tmp_path / "staging", tmp_path / "study"
    study.mkdir()
    _stage(staging, [1])
    keep_state(staging, study)
    (study / KEPT_FOLDER / "2.partial").mkdir()  # a copy the kill stopped half-way
    (study / KEPT_FOLDER / "2.partial" / EXPERIMENT).write_text("{")
    (study / EXPERIMENT).write_text('{"tri')
    assert restore_kept_state(study, [study / EXPERIMENT])
    assert json.loads((study / EXPERIMENT).read_text()) == {"trials": [1]}
    _stage(staging, [1, 2])
    keep_state(staging, study)  # the next save replaces the half copy
    assert sorted(path.name for path in (study / KEPT_FOLDER).iterdir()) == ["2"]


def test_without_a_whole_copy_of_that_file_nothing_is_put_back(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / EXPERIMENT).write_text('{"tri')
    assert not restore_kept_state(study, [study / EXPERIMENT])  # nothing kept
    staging = tmp_path / "staging"
    staging.mkdir()
    older = "experiment_state-2026-01-01_00-00-00.json"
    (staging / older).write_text("{}")
    keep_state(staging, study)
    assert not restore_kept_state(study, [study / EXPERIMENT])  # kept, but another session's file
    assert (study / EXPERIMENT).read_text() == '{"tri' and not (study / older).exists()


def test_a_set_that_lacks_one_of_the_cut_short_files_is_not_put_back(tmp_path):
    staging, study = tmp_path / "staging", tmp_path / "study"
    study.mkdir()
    staging.mkdir()
    (staging / EXPERIMENT).write_text("{}")  # kept without the searcher's state
    keep_state(staging, study)
    (study / EXPERIMENT).write_text("{")
    (study / SEARCHER).write_bytes(b"\x80")
    assert not restore_kept_state(study, cut_short_state_files(study))
    assert (study / EXPERIMENT).read_text() == "{"
