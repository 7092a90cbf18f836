"""Two processes making first use of the same dataset folder at once (two `train` runs, two Ray trials)."""
import json
import multiprocessing
import threading
import time
import traceback
from pathlib import Path

import pytest

from antimetric.data import demo
from antimetric.data.manifest import prepare as manifest_module
from antimetric.data.manifest.locking import dataset_lock
from antimetric.data.manifest.prepare import load_or_prepare
from antimetric.data.readers.source import MANIFEST_NAME, benchmark
from tests.fixtures.datasets import make_cub

_WORKERS = 2
_TIMEOUT_S = 300


def _first_use(data_path: str, barrier, results) -> None:
    """What data.loading.load_index does on first use of the demo, started at the same moment as its twin."""
    try:
        barrier.wait(timeout=_TIMEOUT_S)
        demo.ensure_demo(Path(data_path) / "demo")
        index = load_or_prepare(benchmark("demo", Path(data_path)), progress=False)
        unreadable = [path for path in (index.root / r.path for r in index.records) if not path.is_file()]
        results.put(("ok", len(index.records), len(unreadable)))
    except BaseException:  # report everything: the parent asserts on it
        results.put(("crash", traceback.format_exc(), 0))


@pytest.mark.slow  # two spawned processes, each importing torch and generating the full demo
def test_two_processes_generate_and_prepare_the_demo_once(tmp_path):
    """Without the lock, one process deleted the folder the other had just made and was preparing: a crash,
    or an exit 0 on part of the test set. The full demo (~20 s here) makes that window wide enough to be hit."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(_WORKERS), context.Queue()
    workers = [context.Process(target=_first_use, args=(str(tmp_path), barrier, results)) for _ in range(_WORKERS)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=_TIMEOUT_S) for _ in workers]
    for worker in workers:
        worker.join(timeout=_TIMEOUT_S)

    full = demo.N_CLASSES * demo.IMAGES_PER_CLASS
    assert outcomes == [("ok", full, 0)] * _WORKERS
    manifest = json.loads((tmp_path / "demo" / MANIFEST_NAME).read_text())
    assert len(manifest["records"]) == full and manifest["unreadable"] == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".demo.lock") == ["demo"]  # no temporary left


def test_load_or_prepare_waits_for_the_lock_and_prepares_once(tmp_path, monkeypatch, capsys):
    """flock locks belong to an open file, so threads of one process exclude each other like processes."""
    make_cub(tmp_path / "cub", n_classes=2, per_class=2)
    writes = []
    write_json = manifest_module.write_json
    monkeypatch.setattr(manifest_module, "write_json", lambda *args: writes.append(1) or write_json(*args))
    loaded = []
    threads = [threading.Thread(target=lambda: loaded.append(load_or_prepare(benchmark("cub", tmp_path), progress=False)))
               for _ in range(2)]
    waiting, err = "cub: waiting for another process that is preparing it", ""
    with dataset_lock(tmp_path, "cub"):  # as another process preparing the dataset holds it
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while err.count(waiting) < 2 and time.monotonic() < deadline:  # both threads blocked on the lock
            time.sleep(0.05)
            err += capsys.readouterr().err
        assert err.count(waiting) == 2
        assert all(thread.is_alive() for thread in threads) and not (tmp_path / "cub" / MANIFEST_NAME).exists()
    for thread in threads:
        thread.join(timeout=60)

    assert len(loaded) == 2 and loaded[0] == loaded[1] and len(loaded[0].records) == 4
    assert writes == [1]  # the second found the manifest the first wrote
