"""The 95 % interval against values worked by hand from the t table."""
import math

import pytest

from studies.conclusions.intervals import Interval, interval


def test_three_repeats():
    result = interval([0.5, 0.6, 0.7])
    assert result.n == 3
    assert result.mean == pytest.approx(0.6)
    assert result.ci95 == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-4)  # t(0.975, 2) = 4.3027, sd 0.1
    assert str(result) == "60.0 ± 24.8 % (n=3)"


def test_two_repeats_use_the_wide_t_of_one_degree_of_freedom():
    result = interval([0.60, 0.64])
    # t(0.975, 1) = 12.706, sd = 0.04 / sqrt(2): half-width 12.706 * 0.02
    assert result.ci95 == pytest.approx(12.706 * 0.02, rel=1e-4)
    assert str(result) == "62.0 ± 25.4 % (n=2)"


def test_equal_values_have_no_spread():
    assert interval([0.7, 0.7, 0.7, 0.7]) == Interval(0.7, 0.0, 4)


def test_one_value_has_no_interval():
    result = interval([0.621])
    assert result.mean == 0.621 and math.isnan(result.ci95) and result.n == 1
    assert str(result) == "62.1 % (n=1)"


def test_format_rounds_to_one_decimal_of_a_percent():
    assert str(Interval(0.62149, 0.02251, 5)) == "62.1 ± 2.3 % (n=5)"


@pytest.mark.parametrize("values", [[], [0.5, float("nan")], [0.5, float("inf")], [[0.5, 0.6]]])
def test_bad_values_are_refused(values):
    with pytest.raises(ValueError):
        interval(values)
