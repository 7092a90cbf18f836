"""The README's own-search example, executed as written."""
import re
from pathlib import Path

import pytest
import ray

from tests.fixtures.studies import check_trial_runs, trial_runs

pytestmark = pytest.mark.slow  # Ray

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_tuner_example_runs(demo_data_path, tmp_path, monkeypatch, capsys):
    block = re.search(r"\*\*Your own search\.\*\*.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "data").symlink_to(demo_data_path)
    monkeypatch.chdir(tmp_path)  # data/, mlruns/ and runs/ of the example resolve here
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        exec(compile(block, str(README), "exec"), {})
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert 0.0 <= float(printed.rsplit(" ", 1)[-1]) <= 1.0
    assert (tmp_path / "runs" / "studies" / "my-study").is_dir()
    client, runs, parents = trial_runs(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "my-study")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    check_trial_runs(client, runs, parents, ["ensemble_size", "meta_class_size", "lr"])
