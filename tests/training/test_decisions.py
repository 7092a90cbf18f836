"""What a run decides when it starts (device, precision, workers, image memory, network) is a frozen record beside
the config, never written into it: the config stays what was asked; training, resuming, tracking and loading read
the record; records made before it existed (decisions inside the config) still read the same."""
import dataclasses
import json

import pytest
import torch

import antimetric
from antimetric.errors import ConfigError
from antimetric.training.config import RunConfig, resolve
from antimetric.training.decisions import DECISIONS_KEY, StartDecisions, split_recorded
from antimetric.training.run_folder import BEST_FILE
from antimetric.training.session import build_session


def _config(data_path, tmp_path, **values):
    return resolve(RunConfig.from_flat(dict(data_name="demo", data_path=str(data_path), output_dir=str(tmp_path),
                                            ensemble_size=2, meta_class_size=6, num_epochs=1, train=False,
                                            **values)))


def test_a_session_decides_without_changing_the_config(demo_data_path, tmp_path):
    config = _config(demo_data_path, tmp_path)
    asked = config.to_flat()
    session = build_session(config)
    assert session.config.to_flat() == asked  # device, precision auto; workers, image memory None
    assert (asked["device"], asked["precision"], asked["num_workers"], asked["image_memory"]) == ("auto", "auto",
                                                                                                    None, None)
    decided = session.decisions
    assert decided.device == "cpu" and decided.precision == ("bf16" if session.plan.bf16 else "fp32")
    assert decided.num_workers >= 0 and decided.image_memory >= 0 and decided.implementation == "batched"
    with pytest.raises(dataclasses.FrozenInstanceError):
        decided.device = "cuda"


def test_pinned_decisions_are_taken_as_they_are(demo_data_path, tmp_path):
    """A resumed run decides as its run did: here fp32 and no image memory, where auto would decide otherwise."""
    session = build_session(_config(demo_data_path, tmp_path), pinned={"precision": "fp32", "image_memory": 0,
                                                                        "num_workers": 0})
    assert not session.plan.bf16 and session.decisions.precision == "fp32" and session.decisions.image_memory == 0


def test_a_record_made_before_the_decisions_existed_reads_its_decisions_from_its_config():
    old = {**RunConfig().to_flat(), "device": "cpu", "precision": "fp32", "num_workers": 0, "image_memory": 1024}
    asked, decided = split_recorded(old)
    assert asked == old
    assert decided == {"device": "cpu", "precision": "fp32", "implementation": "batched", "num_workers": 0,
                       "image_memory": 1024}
    new = {**RunConfig().to_flat(), DECISIONS_KEY: decided}
    assert split_recorded(new) == (RunConfig().to_flat(), decided)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_loaded_ensemble_computes_in_the_precision_its_run_decided(demo_run, tmp_path, precision):
    """The checkpoint's config says auto (what was asked); the loader follows what training decided."""
    state = torch.load(demo_run / BEST_FILE, weights_only=True)
    assert state["config"]["precision"] == "auto"
    state[DECISIONS_KEY] = {**state[DECISIONS_KEY], "precision": precision}
    torch.save(state, tmp_path / BEST_FILE)
    trained = antimetric.load(tmp_path / BEST_FILE, device="cpu")
    assert trained.model.plan.bf16 is (precision == "bf16") and trained.decisions.precision == precision
    assert trained.config.train.precision == "auto" and trained.describe()["decisions"]["device"] == "cpu"


def test_a_checkpoint_from_before_the_decisions_loads_with_the_precision_in_its_config(demo_run, tmp_path):
    state = torch.load(demo_run / BEST_FILE, weights_only=True)
    decided = state.pop(DECISIONS_KEY)
    decided.pop("data_digest")  # decided since: a record from before the decisions has none
    state["config"] = {**state["config"], **decided, "precision": "fp32"}
    torch.save(state, tmp_path / BEST_FILE)
    assert not antimetric.load(tmp_path / BEST_FILE, device="cpu").model.plan.bf16


@pytest.mark.parametrize("damage", [{"precision": "fp16"}, {"device": 3}, {"num_workers": -1}, {"colour": "red"}])
def test_damaged_decisions_are_one_line_naming_the_checkpoint(demo_run, tmp_path, damage):
    state = torch.load(demo_run / BEST_FILE, weights_only=True)
    state[DECISIONS_KEY] = {**state[DECISIONS_KEY], **damage}
    torch.save(state, tmp_path / BEST_FILE)
    with pytest.raises(ConfigError, match="damaged checkpoint: its 'decisions'") as refused:
        antimetric.load(tmp_path / BEST_FILE, device="cpu")
    assert "\n" not in str(refused.value)


def test_config_json_records_the_asked_config_and_the_decisions(demo_run):
    recorded = json.loads((demo_run / "config.json").read_text())
    asked, decided = split_recorded(recorded)
    assert asked["device"] == "auto" and StartDecisions.from_dict(decided, "config.json").device == "cpu"


def test_damaged_decisions_in_config_json_stop_a_resume_in_one_line(tmp_path):
    from antimetric.training.loop import resume_run
    from antimetric.training.run_folder import CONFIG_FILE, LAST_FILE
    run = tmp_path / "run"
    run.mkdir()
    (run / LAST_FILE).write_bytes(b"")
    (run / CONFIG_FILE).write_text(json.dumps({**RunConfig().to_flat(), DECISIONS_KEY: {"device": "cpu"}}))
    with pytest.raises(ConfigError, match=r"--resume: .*config.json: its 'decisions' are not") as refused:
        resume_run(run)
    assert "\n" not in str(refused.value)
