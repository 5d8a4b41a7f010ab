"""Image-level classification scores of the downstream experiment: AUC and F1 with resampling confidence intervals
and a paired permutation test between two arms scored on the same test cases.

Paper 003 trains a cancer classifier on real mammograms with and without synthetic ones and reports AUC and F1 on
held-out real images. Here each arm is trained with several seeds; an arm's figure is the mean over seeds of the
per-seed AUC (``sklearn.metrics.roc_auc_score``) or F1 (``f1_score`` of ``probability >= threshold``). Its 95 %
interval resamples the test cases (``scipy.stats.bootstrap``, percentile); two arms are compared on the same
resampled cases (the CI of the difference) and by a paired permutation test (``scipy.stats.permutation_test``,
``permutation_type="samples"``: each case's predictions are swapped between the two arms at random). Inside the
resampling loops the figures come from ranks and counts (:func:`fast_score`, equal to sklearn's, much quicker).

The F1 threshold is one probability for every seed, or one per seed column (e.g. each seed's own threshold chosen
by :func:`tune_threshold` on a validation split of its training data); the intervals and the paired comparison use
each column's own threshold (a comparison swaps the two arms' calls, each made at its own arm's threshold).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

__all__ = [
    "CLASSIFICATION_METRICS",
    "ThresholdChoice",
    "classification_score",
    "compare_arms",
    "fast_score",
    "metric_with_ci",
    "tune_threshold",
]

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


Threshold = float | Sequence[float] | np.ndarray
"""An F1 threshold: one probability for every seed column, or one per column."""


def _thresholds(threshold: Threshold, seeds: int) -> np.ndarray:
    """(seeds,) thresholds: a scalar repeated, or one per seed column (checked)."""
    values = np.asarray(threshold, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(seeds, float(values))
    if values.shape != (seeds,) or not np.isfinite(values).all():
        raise ValueError(
            f"threshold: expected one finite probability or one per seed column ({seeds}), got {values.tolist()}"
        )
    return values


def classification_score(
    metric: str, labels: Sequence[int], probabilities: np.ndarray, threshold: Threshold = 0.5
) -> float:
    """``metric`` ("auc" or "f1") averaged over the seed columns of ``probabilities`` (cases, seeds); NaN when the
    labels hold one class only (no AUC). F1 calls a case positive at ``probability >= threshold`` (one threshold, or
    one per seed column)."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    _check(labels, probabilities)
    if metric not in CLASSIFICATION_METRICS:
        raise ValueError(f"metric: expected one of {list(CLASSIFICATION_METRICS)}, got '{metric}'")
    if metric == "auc":
        if labels.min() == labels.max():
            return float("nan")
        return float(np.mean([roc_auc_score(labels, column) for column in probabilities.T]))
    thresholds = _thresholds(threshold, probabilities.shape[1])
    return float(
        np.mean([f1_score(labels, column >= t, zero_division=0.0) for column, t in zip(probabilities.T, thresholds)])
    )


class ThresholdChoice(NamedTuple):
    """The decision threshold :func:`tune_threshold` chose and what it scores on the cases it was chosen on."""

    threshold: float
    """Positive at ``probability >= threshold``."""
    f1: float
    """F1 at ``threshold`` on the tuning cases (the largest any threshold reaches there)."""
    cases: int
    positives: int


def tune_threshold(labels: Sequence[int], probabilities: Sequence[float]) -> ThresholdChoice:
    """The probability threshold that maximises F1 on ``labels`` / ``probabilities`` (one classifier's validation
    cases, never the test set): ``sklearn.metrics.precision_recall_curve`` lists every distinct threshold (a case
    is positive at ``probability >= threshold``, as :func:`classification_score` calls it) with its precision and
    recall; the threshold with the highest F1 wins, ties to the lowest (more recall).

    Raises:
        ValueError: labels other than 0/1, a length mismatch, NaN / inf, or no positive case (F1 is undefined).
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if probabilities.shape != labels.shape:
        raise ValueError(
            f"validation probabilities: expected one per case ({labels.shape[0]}), got shape {probabilities.shape}"
        )
    _check(labels, probabilities[:, None])
    if not labels.any():
        raise ValueError(
            f"validation labels: expected at least one positive case to tune the F1 threshold on, got {len(labels)} "
            "negative case(s) only"
        )
    precision, recall, thresholds = precision_recall_curve(labels, probabilities)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    total = precision + recall
    f1 = np.where(total > 0, 2.0 * precision * recall / np.where(total > 0, total, 1.0), 0.0)
    best = int(np.argmax(f1))
    return ThresholdChoice(float(thresholds[best]), float(f1[best]), int(len(labels)), int(labels.sum()))


def fast_score(metric: str, labels: np.ndarray, probabilities: np.ndarray, threshold: Threshold = 0.5) -> float:
    """:func:`classification_score` without the checks, from ranks (AUC: the Mann-Whitney statistic, ties counted
    half, as ``roc_auc_score``) and counts (F1, 0 without any positive call or case): the resampling loops' score.
    ``threshold``: one, or a (seeds,) array (one per column)."""
    positive = labels == 1
    count = int(positive.sum())
    if metric == "auc":
        if count in (0, len(labels)):
            return float("nan")
        ranks = stats.rankdata(probabilities, axis=0)
        auc = (ranks[positive].sum(axis=0) - count * (count + 1) / 2.0) / (count * (len(labels) - count))
        return float(auc.mean())
    called = probabilities >= np.asarray(threshold, dtype=np.float64)
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
    threshold: Threshold = 0.5,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """One arm's ``metric`` with its bootstrap interval over test cases (F1: each seed column at its own
    ``threshold`` when one per column is given).

    Returns:
        ``{"n", "mean", "ci_low", "ci_high", "per_seed"}`` (``mean``: the seed mean; ``per_seed``: each column's).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    value = classification_score(metric, labels, probabilities, threshold)
    threshold = _thresholds(threshold, probabilities.shape[1])
    per_seed = [
        _plain(classification_score(metric, labels, column[:, None], [t]))
        for column, t in zip(probabilities.T, threshold)
    ]

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
    threshold: Threshold = 0.5,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    baseline_threshold: Threshold | None = None,
) -> dict[str, Any]:
    """``metric`` of ``arm`` minus that of ``baseline`` (both (cases, seeds) probabilities on the same test cases).

    F1 calls ``arm``'s cases at ``threshold`` and ``baseline``'s at ``baseline_threshold`` (default: the same; each
    one probability or one per seed column); the resampling then works on those calls, so the permutation test
    swaps each case's calls between the arms, each made at its own arm's threshold.

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
    if metric == "f1":  # calls (1.0 / 0.0) at each arm's own thresholds; 0.5 then splits them as they are
        _check(labels, arm)
        _check(labels, baseline)
        seeds = arm.shape[1]
        base = threshold if baseline_threshold is None else baseline_threshold
        arm = (arm >= _thresholds(threshold, seeds)).astype(np.float64)
        baseline = (baseline >= _thresholds(base, seeds)).astype(np.float64)
        threshold = 0.5
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
