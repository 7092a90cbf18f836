"""A study selects and ranks by validation Recall@1: the names it reports are the core's, and a --recalls
without 1 (whose runs would never report that objective) is refused before Ray starts."""
import pytest

from antimetric.data.readers.own_defaults import LARGE_GALLERY_RECALLS, SMALL_GALLERY_RECALLS
from antimetric.data.table import TABLE
from antimetric.errors import ConfigError
from studies.search import parse_args
from studies.trials.metric_names import SELECTED_K


def _settings(tmp_path, *args):
    return parse_args(["demo", "--data-path", str(tmp_path), "--storage-path", str(tmp_path / "ray"),
                       "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *args])


def test_a_study_whose_recalls_leave_out_recall_at_1_is_refused(tmp_path):
    with pytest.raises(ConfigError) as refused:
        _settings(tmp_path, "--recalls", "2,4")
    assert str(refused.value) == ("--recalls 2,4: a study selects epochs and ranks trials by Recall@1, the first of "
                                  "--recalls; start the list with 1 (e.g. --recalls 1,2,4)")


@pytest.mark.parametrize("given", ["1,2,4", "4,2,1"])
def test_a_study_whose_recalls_hold_1_takes_them(tmp_path, given):
    assert _settings(tmp_path, "--recalls", given).fixed["recalls"] == (1, 2, 4)


def test_the_default_recalls_of_every_dataset_start_with_the_one_a_study_selects_by():
    """A study checks only a --recalls given: the defaults (a benchmark's row, a user's data) must pass unchecked."""
    defaults = {name: row.recalls for name, row in TABLE.items()}
    defaults.update(small_gallery=SMALL_GALLERY_RECALLS, large_gallery=LARGE_GALLERY_RECALLS)
    assert {name: ks[0] for name, ks in defaults.items()} == {name: SELECTED_K for name in defaults}
