"""Tests of common.metrics.statistics: confidence intervals, paired t-tests, ANOVA and Bonferroni by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.metrics.statistics import bonferroni, mean_ci, one_way_anova, paired_t_test, ratio_of_means_ci


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


def test_ratio_of_means_ci_by_hand() -> None:
    """Two cases: a resample holds x twice (ratio 0.6/0.8), y twice (0.8/0.8) or both (1.4/1.6), so the 95 %
    percentile interval spans the two pure resamples, [0.75, 1.0]; the point value is 1.4/1.6."""
    result = ratio_of_means_ci({"x": 0.6, "y": 0.8, "only_a": 0.1}, {"x": 0.8, "y": 0.8}, min_cases=2)
    assert result["n"] == 2 and result["note"] == ""
    assert result["ratio"] == pytest.approx(0.875)
    assert result["ci_low"] == pytest.approx(0.75) and result["ci_high"] == pytest.approx(1.0)
    again = ratio_of_means_ci({"x": 0.6, "y": 0.8}, {"x": 0.8, "y": 0.8}, min_cases=2)
    assert again == result


def test_ratio_of_means_ci_is_exact_for_a_constant_ratio_and_covers_a_noisy_one() -> None:
    rng = np.random.default_rng(3)
    b = {f"c{i}": float(v) for i, v in enumerate(rng.uniform(0.5, 0.9, 16))}
    exact = ratio_of_means_ci({k: 0.8 * v for k, v in b.items()}, b)
    assert exact["ratio"] == pytest.approx(0.8) and exact["ci_low"] == pytest.approx(0.8)
    assert exact["ci_high"] == pytest.approx(0.8)
    noisy = ratio_of_means_ci({k: 0.8 * v + float(rng.normal(0, 0.1)) for k, v in b.items()}, b)
    assert noisy["ci_low"] < noisy["ratio"] < noisy["ci_high"]
    assert 0.1 < noisy["ci_high"] - noisy["ci_low"] < 0.4


def test_ratio_of_means_ci_says_why_there_is_no_interval() -> None:
    few = ratio_of_means_ci({"x": 0.5, "y": 0.7}, {"x": 0.6, "y": 0.8})
    assert few["ratio"] == pytest.approx(1.2 / 1.4) and few["ci_low"] is None
    assert few["note"] == "2 paired test case(s), fewer than the 5 needed for an interval"
    zero = ratio_of_means_ci({"x": 0.5}, {"x": 0.0}, min_cases=1)
    assert zero["ratio"] is None and zero["note"] == "no shared case with a non-zero denominator"
