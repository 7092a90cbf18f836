"""Each workaround of studies/compat.py against the installed Ray, MLflow and Optuna: a library release that
changes what one relies on fails here, naming the library's version and the compat name to update. No Ray
cluster: Ray's own code runs on stub trials and a minimal host."""
import importlib
import inspect
import json
import logging
import re
import signal
import time
from fnmatch import fnmatch
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.utils import log

from studies import compat

ROOT = Path(__file__).resolve().parents[2]


def changed(library: str, what: str, name: str) -> str:
    return f"{library} {version(library)} changed {what}: studies/compat.py's {name} needs updating"


def _trial(trial_id: str, status: str = Trial.TERMINATED, result: dict | None = None, storage=None) -> Trial:
    storage = storage or SimpleNamespace(experiment_driver_staging_path="/x", trial_driver_staging_path="/x/t")
    trial = Trial("train_ensemble", trial_id=trial_id, config={"lr": 1e-3, "nested": {"a": 2}}, stub=True,
                  storage=storage)
    trial.set_status(status)
    if result is not None:
        trial.update_last_result({**result, "config": trial.config})
    return trial


def test_the_versions_tested_are_the_installed_ones_and_pyprojects_pins():
    pinned = dict(re.findall(r'^\s*"([a-z]+)(?:\[\w+\])?==([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M))
    for library, tested in compat.TESTED_WITH.items():
        assert pinned.get(library) == tested, f"pyproject.toml pins {library} {pinned.get(library)}, compat tested {tested}"
        assert version(library) == tested, (f"{library} {version(library)} is installed, compat.TESTED_WITH has {tested}: "
                                            "run tests/studies/test_compat.py, update studies/compat.py, then the pins")


def test_only_compat_touches_library_internals():
    offending = [f"{path.relative_to(ROOT)}:{number}" for folder in ("antimetric", "studies")
                 for path in sorted((ROOT / folder).rglob("*.py")) if path.name != "compat.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"_private|_internal|ray_constants|unflattened_lookup", line)]
    assert not offending, f"library internals outside studies/compat.py: {offending}"


def test_ray_stays_on_localhost(monkeypatch):
    constants = importlib.import_module("ray._private.ray_constants")
    monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", constants.ENABLE_RAY_CLUSTER)  # put back afterwards
    monkeypatch.setenv(constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "1")
    assert constants.ENABLE_RAY_CLUSTERS_ENV_VAR == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", \
        changed("ray", "ENABLE_RAY_CLUSTERS_ENV_VAR", "keep_ray_on_localhost")
    services = inspect.getsource(importlib.import_module("ray._private.services"))
    assert "ray_constants.ENABLE_RAY_CLUSTER" in services, \
        changed("ray", "where node_ip_address reads ENABLE_RAY_CLUSTER", "keep_ray_on_localhost")
    compat.keep_ray_on_localhost()
    assert constants.ENABLE_RAY_CLUSTER is False


def test_ray_keeps_staging_copies_in_the_session_folder_named():
    source = inspect.getsource(importlib.import_module("ray.train.constants")._get_ray_train_session_dir)
    assert f'"{compat.RAY_STAGING_FOLDER}"' in source, changed("ray", "its staging folder", "RAY_STAGING_FOLDER")


def test_tunes_state_file_names():
    assert compat.is_experiment_state(TuneController.CKPT_FILE_TMPL.format("2026-01-01_00-00-00")), \
        changed("ray", "the experiment state's file name", "EXPERIMENT_STATE_PREFIX")
    assert fnmatch(TuneController.CKPT_FILE_TMPL.format("x"), compat.EXPERIMENT_STATE_GLOB)
    assert fnmatch(Searcher.CKPT_FILE_TMPL.format("x"), compat.SEARCHER_STATE_GLOB), \
        changed("ray", "the searcher state's file name", "SEARCHER_STATE_GLOB")


def test_the_ended_trials_of_a_state_file_that_tunes_own_writer_wrote(tmp_path):
    assert compat.ENDED_STATUSES == (Trial.TERMINATED, Trial.ERROR), changed("ray", "trial statuses", "ENDED_STATUSES")
    trials = [_trial("done", Trial.TERMINATED), _trial("failed", Trial.ERROR), _trial("running", Trial.RUNNING)]

    class Host:  # what TuneController.save_to_dir reads of its controller, on real trials' states
        _start_time = 0.0
        _storage = SimpleNamespace(experiment_driver_staging_path=str(tmp_path))
        experiment_state_file_name = TuneController.CKPT_FILE_TMPL.format("now")
        _session_str = "now"
        _search_alg = _callbacks = SimpleNamespace(save_to_dir=lambda *args, **kwargs: None)  # their own files

        def _get_trial_checkpoints(self):
            return {t.trial_id: t.get_json_state() for t in trials}

        def __getstate__(self):
            return {}

    TuneController.save_to_dir(Host())
    (written,) = tmp_path.glob(compat.EXPERIMENT_STATE_GLOB)
    try:
        ended = compat.ended_trial_ids(written.read_text())
    except (ValueError, KeyError, TypeError) as error:
        pytest.fail(changed("ray", f"the experiment state's format ({error!r})", "ended_trial_ids"))
    assert ended == {"done", "failed"}, changed("ray", "the experiment state's trial statuses", "ended_trial_ids")


def test_a_trials_storage(tmp_path):
    storage = importlib.import_module("ray.train._internal.storage").StorageContext(
        storage_path=str(tmp_path), experiment_dir_name="study", trial_dir_name="trial_1")
    try:
        filesystem, experiment, folder = compat.trial_storage(_trial("t1", storage=storage))
    except AttributeError as error:
        pytest.fail(changed("ray", f"a trial's StorageContext ({error})", "trial_storage"))
    assert experiment.endswith("/study") and folder.endswith("/study/trial_1")
    assert filesystem.get_file_info(str(tmp_path)).is_file is False


def test_nested_lookup():
    assert compat.lookup("nested/a", {"nested": {"a": 2}}) == 2
    assert compat.lookup("nested/b", {"nested": {"a": 2}}) is None


def test_tune_puts_back_the_sigint_handler_it_replaced_when_ctrl_c_stops_it():
    setup = getattr(importlib.import_module("ray.tune.tune"), "_setup_signal_catching", None)
    assert setup is not None, changed("ray", "how Tune catches Ctrl-C (_setup_signal_catching)", "tune_interrupt_watch")

    def second(signum, frame):
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    with compat.tune_interrupt_watch(second) as interrupted:
        event = setup()  # what Tuner.fit does first
        assert not interrupted()
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # Ctrl-C, as Tune's handler receives it
        assert event.is_set()
        assert interrupted(), changed("ray", "Tune's SIGINT handler (it no longer puts back the one it replaced)",
                                      "tune_interrupt_watch")
    assert signal.getsignal(signal.SIGINT) is before


def test_tunes_resume_advice_is_hidden():
    tune_module = importlib.import_module("ray.tune.tune")
    assert tune_module.logger.name == compat.TUNE_LOGGER, changed("ray", "Tune's logger", "TUNE_LOGGER")
    source = inspect.getsource(tune_module)
    for text, name in ((compat.TUNE_RESUME_ADVICE, "TUNE_RESUME_ADVICE"), (compat.TUNE_WROTE_STATE, "TUNE_WROTE_STATE")):
        assert text in source, changed("ray", "the lines Tune logs at its end", name)
    logger = logging.getLogger(compat.TUNE_LOGGER)
    record = logger.makeRecord(compat.TUNE_LOGGER, logging.INFO, "tune.py", 1,
                               'Restore with Tuner.restore(path="x", trainable=...)', (), None)
    with compat.hide_tune_resume_advice():
        assert not logger.filter(record)
    assert logger.filter(record)


def test_asha_rungs_are_its_brackets_lists():
    scheduler = ASHAScheduler(time_attr="epoch", metric="recall", mode="max", max_t=4, grace_period=1,
                              reduction_factor=2)
    trial = _trial("t1", Trial.RUNNING)
    scheduler.on_trial_add(None, trial)
    scheduler.on_trial_result(None, trial, {"epoch": 1, "recall": 0.5})
    try:
        rungs = compat.asha_rungs(scheduler)
    except (AttributeError, ValueError) as error:
        pytest.fail(changed("ray", f"ASHA's brackets ({error!r})", "asha_rungs"))
    assert [(float(m), r) for m, r in rungs if r] == [(1.0, {"t1": 0.5})], \
        changed("ray", "ASHA's rungs", "asha_rungs")


def test_the_table_reporters_private_parts(capsys, monkeypatch):
    monkeypatch.setattr(log, "verbosity", log.Verbosity.V1_EXPERIMENT)
    reporter = compat.TableReporter(metric_columns=["recall"], max_report_frequency=60, print_intermediate_tables=True)
    reporter.setup(start_time=time.time(), metric="recall", mode="max")
    trials = [_trial("low", result={"recall": 0.2}), _trial("high", result={"recall": 0.7})]
    try:
        best, metric = reporter.best_trial(trials)
        reporter.show_intermediate_tables(False)
        reporter.restart_report_clock()
        text = reporter.table_text(trials, False, "sys info")
        reporter.print_text("printed")
    except AttributeError as error:
        pytest.fail(changed("ray", f"CLIReporter's private parts ({error})", "TableReporter"))
    assert (best.trial_id, metric) == ("high", "recall"), changed("ray", "_current_best_trial", "TableReporter")
    assert "sys info" in text and "Current best trial" not in text, changed("ray", "_progress_str", "TableReporter")
    assert not reporter.should_report(trials), changed("ray", "_last_report_time", "restart_report_clock")
    assert capsys.readouterr().out.strip() == "printed"
    source = inspect.getsource(importlib.import_module("ray.tune.progress_reporter"))
    assert f'"{compat.RAY_LOGDIR_LINE}' in source, changed("ray", "its result folder's line", "RAY_LOGDIR_LINE")


def test_mlflows_ui_reads_the_saved_view_and_workflow_tags():
    import mlflow

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    text = "".join(path.read_text(errors="ignore") for path in bundle.glob("*.js"))
    tag, value = compat.runs_view_tag("trials", {"searchFilter": "", "orderByKey": "x", "orderByAsc": False,
                                                 "selectedColumns": [], "columnOrder": [], "columnWidths": {}}, 1)
    url = compat.runs_view_url("1", "trials", 5000)
    wanted = [compat.VIEW_TAG_PREFIX, compat.KIND_TAG, compat.KIND, "viewStateShareKey", "workflowType",
              "machine_learning", *json.loads(value), *json.loads(json.loads(value)["state"])]
    missing = [word for word in wanted if word not in text]
    assert not missing, changed("mlflow", f"its UI's saved views or workflow ({missing} not in its JS bundle)",
                                "runs_view_tag, runs_view_url, KIND")
    assert tag == "mlflow.sharedViewState.trials" and "viewStateShareKey=trials" in url


def test_mlflows_sql_store_logger():
    module = importlib.import_module(compat.MLFLOW_SQL_STORE_LOGGER)
    assert getattr(module, "_logger", None) is logging.getLogger(compat.MLFLOW_SQL_STORE_LOGGER), \
        changed("mlflow", "its SQL store's logger", "MLFLOW_SQL_STORE_LOGGER")


def test_tune_saves_its_state_files_whole_before_it_asks_its_callbacks_for_theirs(tmp_path):
    """StateSaveHook: inside TuneController.save_to_dir, the callbacks' get_state comes after the experiment and
    searcher state are written to the staging folder named by the trials' storage."""
    from pyarrow.fs import LocalFileSystem
    from ray.tune.callback import CallbackList
    storage_class = importlib.import_module("ray.train._internal.storage").StorageContext
    for name in ("experiment_driver_staging_path", "experiment_fs_path", "storage_filesystem"):
        assert hasattr(storage_class, name) or name in inspect.getsource(storage_class.__init__), \
            changed("ray", f"StorageContext.{name}", "StateSaveHook")
    staging, experiment = tmp_path / "staging", tmp_path / "study"
    storage = SimpleNamespace(experiment_driver_staging_path=str(staging), experiment_fs_path=str(experiment),
                              storage_filesystem=LocalFileSystem())
    seen = []

    class Hook(compat.StateSaveHook):
        def on_state_saved(self, staging_path, experiment_path):
            files = {path.name: path.read_bytes() for path in staging_path.iterdir()}
            seen.append((staging_path, experiment_path, files))

    hook = Hook()
    hook.get_state()  # before any trial: nothing known, nothing done
    hook.on_step_begin(0, [_trial("t1", storage=storage)])

    class Host:  # what TuneController.save_to_dir reads of its controller
        _start_time = 0.0
        _storage = storage
        experiment_state_file_name = TuneController.CKPT_FILE_TMPL.format("now")
        _session_str = "now"
        _search_alg = SimpleNamespace(save_to_dir=lambda folder, session_str: Path(
            folder, Searcher.CKPT_FILE_TMPL.format(session_str)).write_bytes(b"searcher"))
        _callbacks = CallbackList([hook])

        def _get_trial_checkpoints(self):
            return {}

        def __getstate__(self):
            return {}

    TuneController.save_to_dir(Host())
    assert len(seen) == 1, changed("ray", "when callbacks' get_state is called", "StateSaveHook")
    staging_path, experiment_path, files = seen[0]
    assert (staging_path, experiment_path) == (staging, experiment)
    assert json.loads(files[TuneController.CKPT_FILE_TMPL.format("now")])["trial_data"] == [], \
        changed("ray", "the order of TuneController.save_to_dir", "StateSaveHook")
    assert files[Searcher.CKPT_FILE_TMPL.format("now")] == b"searcher"
