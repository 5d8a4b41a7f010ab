"""Image-level classification scores of the downstream experiment: AUC and F1 with resampling confidence intervals
and a paired permutation test between two arms scored on the same test cases.

Paper 003 trains a cancer classifier on real mammograms with and without synthetic ones and reports AUC and F1 on
held-out real images. Here each arm is trained with several seeds; an arm's figure is the mean over seeds of the
per-seed AUC (``sklearn.metrics.roc_auc_score``) or F1 (``f1_score`` of ``probability >= threshold``). Its 95 %
interval resamples the test cases (``scipy.stats.bootstrap``, percentile); two arms are compared on the same
resampled cases (the CI of the difference) and by a paired permutation test (``scipy.stats.permutation_test``,
``permutation_type="samples"``: each case's predictions are swapped between the two arms at random). Inside the
resampling loops the figures come from ranks and counts (:func:`fast_score`, equal to sklearn's, much quicker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, roc_auc_score

__all__ = ["CLASSIFICATION_METRICS", "classification_score", "compare_arms", "fast_score", "metric_with_ci"]

CLASSIFICATION_METRICS = ("auc", "f1")
"""The scores of an arm, in report order."""


def _check(labels: np.ndarray, probabilities: np.ndarray) -> None:
    if probabilities.ndim != 2 or probabilities.shape[0] != labels.shape[0]:
        raise ValueError(
            f"probabilities: expected (cases, seeds) with {labels.shape[0]} case rows, got shape "
            f"{tuple(probabilities.shape)}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels: expected 0/1 per case, got values {sorted(set(labels.tolist()))}")
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities: NaN or inf among the predicted probabilities")


def classification_score(
    metric: str, labels: Sequence[int], probabilities: np.ndarray, threshold: float = 0.5
) -> float:
    """``metric`` ("auc" or "f1") averaged over the seed columns of ``probabilities`` (cases, seeds); NaN when the
    labels hold one class only (no AUC)."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    _check(labels, probabilities)
    if metric not in CLASSIFICATION_METRICS:
        raise ValueError(f"metric: expected one of {list(CLASSIFICATION_METRICS)}, got '{metric}'")
    if metric == "auc":
        if labels.min() == labels.max():
            return float("nan")
        return float(np.mean([roc_auc_score(labels, column) for column in probabilities.T]))
    return float(np.mean([f1_score(labels, column >= threshold, zero_division=0.0) for column in probabilities.T]))


def fast_score(metric: str, labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> float:
    """:func:`classification_score` without the checks, from ranks (AUC: the Mann-Whitney statistic, ties counted
    half, as ``roc_auc_score``) and counts (F1, 0 without any positive call or case): the resampling loops' score."""
    positive = labels == 1
    count = int(positive.sum())
    if metric == "auc":
        if count in (0, len(labels)):
            return float("nan")
        ranks = stats.rankdata(probabilities, axis=0)
        auc = (ranks[positive].sum(axis=0) - count * (count + 1) / 2.0) / (count * (len(labels) - count))
        return float(auc.mean())
    called = probabilities >= threshold
    true_positive = (called & positive[:, None]).sum(axis=0)
    denominator = called.sum(axis=0) + count
    return float(np.mean(np.where(denominator > 0, 2.0 * true_positive / np.maximum(denominator, 1), 0.0)))


def _interval(result: Any) -> tuple[float | None, float | None]:
    low, high = (float(v) for v in (result.confidence_interval.low, result.confidence_interval.high))
    return (low if np.isfinite(low) else None), (high if np.isfinite(high) else None)


def _plain(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def metric_with_ci(
    metric: str,
    labels: Sequence[int],
    probabilities: np.ndarray,
    threshold: float = 0.5,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """One arm's ``metric`` with its bootstrap interval over test cases.

    Returns:
        ``{"n", "mean", "ci_low", "ci_high", "per_seed"}`` (``mean``: the seed mean; ``per_seed``: each column's).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    value = classification_score(metric, labels, probabilities, threshold)
    per_seed = [_plain(classification_score(metric, labels, column[:, None], threshold)) for column in probabilities.T]

    def statistic(index: np.ndarray) -> float:
        return fast_score(metric, labels[index], probabilities[index], threshold)

    low = high = None
    if np.isfinite(value) and len(labels) >= 2:
        result = stats.bootstrap(
            (np.arange(len(labels)),),
            statistic,
            vectorized=False,
            n_resamples=int(resamples),
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = _interval(result)
    return {"n": int(len(labels)), "mean": _plain(value), "ci_low": low, "ci_high": high, "per_seed": per_seed}


def compare_arms(
    metric: str,
    labels: Sequence[int],
    arm: np.ndarray,
    baseline: np.ndarray,
    threshold: float = 0.5,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """``metric`` of ``arm`` minus that of ``baseline`` (both (cases, seeds) probabilities on the same test cases).

    Returns:
        ``{"n", "difference", "ci_low", "ci_high", "p"}``: the paired-bootstrap interval of the difference and the
        two-sided p-value of a paired permutation test (each case's predictions swapped between the arms).
    """
    labels = np.asarray(labels, dtype=np.int64)
    arm = np.asarray(arm, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if arm.shape != baseline.shape:
        raise ValueError(
            f"arm and baseline: expected the same (cases, seeds) shape, got {arm.shape} and {baseline.shape}"
        )
    table = np.concatenate([arm, baseline])
    n = len(labels)

    def difference(a: np.ndarray, b: np.ndarray) -> float:
        """Score of the rows ``a`` minus that of the rows ``b`` of ``table`` (rows >= n: the baseline's)."""
        return fast_score(metric, labels[a % n], table[a], threshold) - fast_score(
            metric, labels[b % n], table[b], threshold
        )

    value = classification_score(metric, labels, arm, threshold) - classification_score(
        metric, labels, baseline, threshold
    )
    result: dict[str, Any] = {"n": n, "difference": _plain(value), "ci_low": None, "ci_high": None, "p": None}
    if not np.isfinite(value) or n < 2:
        return result
    rng = np.random.default_rng(seed)
    cases = np.arange(n)
    interval = stats.bootstrap(
        (cases,),
        lambda index: difference(index, index + n),
        vectorized=False,
        n_resamples=int(resamples),
        confidence_level=confidence,
        method="percentile",
        rng=rng,
    )
    result["ci_low"], result["ci_high"] = _interval(interval)
    permutation = stats.permutation_test(
        (cases, cases + n),
        difference,
        permutation_type="samples",
        vectorized=False,
        n_resamples=int(resamples),
        alternative="two-sided",
        rng=rng,
    )
    result["p"] = float(permutation.pvalue)
    return result
