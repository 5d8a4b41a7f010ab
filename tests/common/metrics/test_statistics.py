"""Tests of common.metrics.statistics: confidence intervals, paired t-tests, ANOVA and Bonferroni by hand."""

from __future__ import annotations

import math

import pytest

from common.metrics.statistics import bonferroni, mean_ci, one_way_anova, paired_t_test


def test_mean_ci_by_hand() -> None:
    # values 1, 2, 3: mean 2, sample std 1, t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3)
    result = mean_ci([1.0, 2.0, 3.0, float("nan")])
    half = 4.302652729911275 / math.sqrt(3)
    assert result["n"] == 3 and result["mean"] == pytest.approx(2.0) and result["std"] == pytest.approx(1.0)
    assert result["ci_low"] == pytest.approx(2.0 - half) and result["ci_high"] == pytest.approx(2.0 + half)


@pytest.mark.parametrize("values, n, mean", [([], 0, None), ([0.5], 1, 0.5)])
def test_mean_ci_without_an_interval(values: list[float], n: int, mean: float | None) -> None:
    result = mean_ci(values)
    assert result["n"] == n and result["mean"] == mean and result["ci_low"] is None and result["std"] is None


def test_mean_ci_rejects_a_bad_confidence() -> None:
    with pytest.raises(ValueError, match="confidence must be in"):
        mean_ci([1.0, 2.0], confidence=1.5)


def test_paired_t_test_by_hand() -> None:
    # differences 1, 2, 3, 4, 6 (a - b): mean 3.2, sample std sqrt(3.7), t = 3.2 / (sqrt(3.7) / sqrt(5))
    b = {f"c{i}": float(i) for i in range(5)}
    a = {key: value + d for (key, value), d in zip(b.items(), [1.0, 2.0, 3.0, 4.0, 6.0])}
    result = paired_t_test(a, b, min_cases=5)
    t = 3.2 / (math.sqrt(3.7) / math.sqrt(5))
    assert result["n"] == 5 and result["mean_difference"] == pytest.approx(3.2)
    assert result["t"] == pytest.approx(t)
    assert 0.0 < result["p"] < 0.05 and result["note"] == ""


def test_paired_t_test_uses_shared_finite_cases_and_refuses_too_few() -> None:
    a = {"x": 0.9, "y": 0.8, "z": float("nan"), "only_a": 0.1}
    b = {"x": 0.5, "y": 0.6, "z": 0.7}
    result = paired_t_test(a, b, min_cases=3)
    assert result["n"] == 2 and result["p"] is None and result["t"] is None
    assert "2 paired test case(s), fewer than the 3 needed" in result["note"]
    assert result["mean_difference"] == pytest.approx(0.3)


def test_paired_t_test_constant_differences_have_no_statistic() -> None:
    a = {str(i): i + 1.0 for i in range(5)}
    b = {str(i): float(i) for i in range(5)}
    result = paired_t_test(a, b, min_cases=2)
    assert result["p"] is None and "same" in result["note"]


def test_paired_t_test_rejects_min_cases_below_two() -> None:
    with pytest.raises(ValueError, match="min_cases must be >= 2"):
        paired_t_test({}, {}, min_cases=1)


def test_bonferroni() -> None:
    assert bonferroni(0.01, 4) == pytest.approx(0.04)
    assert bonferroni(0.4, 4) == 1.0
    assert bonferroni(None, 4) is None
    with pytest.raises(ValueError, match="comparisons must be >= 1"):
        bonferroni(0.1, 0)


def test_one_way_anova_by_hand() -> None:
    # groups (1, 2, 3) and (4, 5, 6): SS_between = 13.5 (df 1), SS_within = 4 (df 4) -> F = 13.5
    result = one_way_anova({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]}, min_cases=3)
    assert result["f"] == pytest.approx(13.5) and 0.0 < result["p"] < 0.05 and result["groups"] == ["a", "b"]


@pytest.mark.parametrize(
    "groups, note",
    [
        ({"a": [1.0, 2.0, 3.0]}, "an ANOVA needs two"),
        ({"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0]}, "['a'] have fewer than the 3"),
        ({"a": [1.0, 1.0, 1.0], "b": [1.0, 1.0, 1.0]}, "no variance"),
    ],
)
def test_one_way_anova_says_why_there_is_no_p_value(groups: dict, note: str) -> None:
    result = one_way_anova(groups, min_cases=3)
    assert result["p"] is None and note in result["note"]
