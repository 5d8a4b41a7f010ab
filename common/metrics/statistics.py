"""Statistics of per-case scores: mean with a t confidence interval, paired t-tests, one-way ANOVA, Bonferroni.

Paper 000 compares its segmentation arms with a one-way ANOVA followed by Bonferroni-corrected t-tests; Med-DDPM
(paper 001) reports means only. Every test here is paired over test cases (the same cases scored by two arms), and
a test with fewer cases than ``min_cases`` reports why there is no p-value instead of a number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["bonferroni", "mean_ci", "one_way_anova", "paired_t_test", "ratio_of_means_ci"]


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    return array[np.isfinite(array)]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean of the finite ``values`` with its two-sided t confidence interval.

    Returns:
        ``{"n", "mean", "std", "ci_low", "ci_high"}``; ``std`` and the interval are None with fewer than 2 values,
        everything but ``n`` is None without any.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    array = _finite(values)
    n = int(array.size)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = float(array.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def paired_t_test(
    a: Mapping[str, float], b: Mapping[str, float], min_cases: int = 5, confidence: float = 0.95
) -> dict[str, Any]:
    """Paired t-test of ``a`` against ``b`` over the cases both score (finite values only).

    Args:
        a, b: case id -> score of two arms.
        min_cases: fewest shared cases for a p-value; below it the result says so in ``note`` and ``p`` is None.
        confidence: of the interval of the mean difference.

    Returns:
        ``{"n", "mean_difference", "ci_low", "ci_high", "t", "p", "note"}`` (difference = a - b).
    """
    if min_cases < 2:
        raise ValueError(f"min_cases must be >= 2 (a paired t-test needs two differences), got {min_cases}")
    shared = sorted(k for k in set(a) & set(b) if np.isfinite(a[k]) and np.isfinite(b[k]))
    differences = np.array([a[k] - b[k] for k in shared], dtype=np.float64)
    summary = mean_ci(differences, confidence)
    result = {
        "n": len(shared),
        "mean_difference": summary["mean"],
        "ci_low": summary["ci_low"],
        "ci_high": summary["ci_high"],
        "t": None,
        "p": None,
        "note": "",
    }
    if len(shared) < min_cases:
        result["note"] = f"{len(shared)} paired test case(s), fewer than the {min_cases} needed for a p-value"
    elif np.ptp(differences) <= 1e-12 * max(1.0, float(np.abs(differences).max())):
        result["note"] = "every paired difference is the same: no t statistic"
    else:
        test = stats.ttest_rel([a[k] for k in shared], [b[k] for k in shared])
        result["t"], result["p"] = float(test.statistic), float(test.pvalue)
    return result


def bonferroni(p: float | None, comparisons: int) -> float | None:
    """Bonferroni-corrected p-value ``min(1, p * comparisons)`` (None stays None)."""
    if comparisons < 1:
        raise ValueError(f"comparisons must be >= 1, got {comparisons}")
    return None if p is None else min(1.0, float(p) * comparisons)


def one_way_anova(groups: Mapping[str, Sequence[float]], min_cases: int = 5) -> dict[str, Any]:
    """One-way ANOVA across arms (scipy ``f_oneway``) of their per-case scores (finite values only).

    Returns:
        ``{"groups", "f", "p", "note"}``; ``f`` and ``p`` are None (and ``note`` says why) with fewer than two
        groups, a group with fewer than ``min_cases`` values, or no variance at all.
    """
    arrays = {name: _finite(values) for name, values in groups.items()}
    result: dict[str, Any] = {"groups": sorted(arrays), "f": None, "p": None, "note": ""}
    small = sorted(name for name, values in arrays.items() if values.size < min_cases)
    if len(arrays) < 2:
        result["note"] = f"{len(arrays)} arm(s): an ANOVA needs two at least"
    elif small:
        result["note"] = f"arm(s) {small} have fewer than the {min_cases} test cases needed for a p-value"
    elif all(np.all(values == values[0]) for values in arrays.values()):
        result["note"] = "no variance within any arm: no F statistic"
    else:
        test = stats.f_oneway(*arrays.values())
        result["f"], result["p"] = float(test.statistic), float(test.pvalue)
    return result


def ratio_of_means_ci(
    a: Mapping[str, float],
    b: Mapping[str, float],
    min_cases: int = 5,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """``mean(a) / mean(b)`` over the cases both score, with a paired percentile bootstrap interval: the test cases
    are resampled with replacement, each keeping its two scores (``scipy.stats.bootstrap``, ``paired=True``).

    Args:
        a, b: case id -> score of two arms (e.g. the harness check's real_all and ceiling Dice).
        min_cases: fewest shared cases for an interval; below it ``note`` says so and the interval is None.
        seed: of the resampling (the same inputs give the same interval).

    Returns:
        ``{"n", "ratio", "ci_low", "ci_high", "note"}``; ``ratio`` is None when ``b``'s mean is 0.
    """
    shared = sorted(k for k in set(a) & set(b) if np.isfinite(a[k]) and np.isfinite(b[k]))
    x = np.array([a[k] for k in shared], dtype=np.float64)
    y = np.array([b[k] for k in shared], dtype=np.float64)
    result: dict[str, Any] = {"n": len(shared), "ratio": None, "ci_low": None, "ci_high": None, "note": ""}
    if not shared or y.mean() == 0:
        result["note"] = "no shared case with a non-zero denominator"
        return result
    result["ratio"] = float(x.mean() / y.mean())
    if len(shared) < min_cases:
        result["note"] = f"{len(shared)} paired test case(s), fewer than the {min_cases} needed for an interval"
        return result

    def statistic(first: np.ndarray, second: np.ndarray, axis: int = -1) -> np.ndarray:
        total = second.sum(axis=axis)
        return np.divide(first.sum(axis=axis), total, out=np.full(np.shape(total), np.nan), where=total != 0)

    interval = stats.bootstrap(
        (x, y),
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=int(resamples),
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    low, high = float(interval.low), float(interval.high)
    result["ci_low"], result["ci_high"] = (low if np.isfinite(low) else None), (high if np.isfinite(high) else None)
    return result
