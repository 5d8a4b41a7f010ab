"""Tests of common.metrics.classification: AUC / F1 by hand, intervals, the paired comparison, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from common.metrics.classification import (
    classification_score,
    compare_arms,
    fast_score,
    metric_with_ci,
    tune_threshold,
)

LABELS = [0, 0, 1, 1]
PROBABILITIES = np.array([[0.1], [0.4], [0.35], [0.8]])


def test_scores_by_hand() -> None:
    # positive-negative pairs ranked right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); wrong: (0.35 < 0.4) -> 3 / 4
    assert classification_score("auc", LABELS, PROBABILITIES) == pytest.approx(0.75)
    # at 0.5 only 0.8 is called positive: precision 1, recall 1/2 -> F1 2/3
    assert classification_score("f1", LABELS, PROBABILITIES) == pytest.approx(2 / 3)
    assert classification_score("f1", LABELS, PROBABILITIES, threshold=0.3) == pytest.approx(0.8)
    two_seeds = np.concatenate([PROBABILITIES, np.array([[0.1], [0.2], [0.3], [0.4]])], axis=1)
    assert classification_score("auc", LABELS, two_seeds) == pytest.approx((0.75 + 1.0) / 2)
    assert np.isnan(classification_score("auc", [1, 1, 1, 1], PROBABILITIES))


@pytest.mark.parametrize(
    "labels, probabilities, metric, message",
    [
        ([0, 1, 2, 1], PROBABILITIES, "auc", "labels: expected 0/1"),
        (LABELS, PROBABILITIES[:3], "auc", "expected \\(cases, seeds\\) with 4 case rows"),
        (LABELS, PROBABILITIES[:, 0], "auc", "expected \\(cases, seeds\\)"),
        (LABELS, np.array([[0.1], [np.nan], [0.3], [0.4]]), "auc", "NaN or inf"),
        (LABELS, PROBABILITIES, "recall", "metric: expected one of \\['auc', 'f1'\\]"),
    ],
)
def test_bad_inputs(labels: list, probabilities: np.ndarray, metric: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_score(metric, labels, probabilities)


def test_interval_brackets_the_mean_and_is_exact_for_a_perfect_classifier() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 10)
    noisy = np.clip(labels[:, None] * 0.3 + rng.uniform(0, 0.7, (40, 3)), 0, 1)
    result = metric_with_ci("auc", labels, noisy, resamples=200)
    assert result["ci_low"] <= result["mean"] <= result["ci_high"] and len(result["per_seed"]) == 3
    assert result["mean"] == pytest.approx(np.mean(result["per_seed"]))
    perfect = metric_with_ci("auc", labels, labels[:, None] * 0.8 + 0.1, resamples=50)
    assert perfect["mean"] == perfect["ci_low"] == perfect["ci_high"] == 1.0


def test_paired_comparison() -> None:
    rng = np.random.default_rng(1)
    labels = np.array([0] * 40 + [1] * 10)
    weak = rng.uniform(0, 1, (50, 2))
    strong = np.clip(labels[:, None] * 0.6 + rng.uniform(0, 0.5, (50, 2)), 0, 1)
    same = compare_arms("auc", labels, weak, weak, resamples=100)
    assert same["difference"] == 0.0 and same["p"] == pytest.approx(1.0)
    better = compare_arms("auc", labels, strong, weak, resamples=200)
    expected = classification_score("auc", labels, strong) - classification_score("auc", labels, weak)
    assert better["difference"] == pytest.approx(expected) and better["difference"] > 0.3
    assert better["ci_low"] > 0 and better["p"] < 0.05
    with pytest.raises(ValueError, match="the same \\(cases, seeds\\) shape"):
        compare_arms("auc", labels, strong, weak[:, :1])


@pytest.mark.parametrize("metric", ["auc", "f1"])
def test_fast_score_equals_sklearn(metric: str) -> None:
    rng = np.random.default_rng(2)
    labels = (rng.uniform(size=60) < 0.2).astype(np.int64)
    probabilities = np.round(rng.uniform(size=(60, 3)), 1)  # rounded: ties on both sides of the threshold
    expected = classification_score(metric, labels, probabilities)
    assert fast_score(metric, labels, probabilities) == pytest.approx(expected)
    assert fast_score("f1", np.zeros(4, dtype=np.int64), np.zeros((4, 1))) == 0.0


def test_tuned_threshold_by_hand() -> None:
    # validation: calls at >= t; t = 0.35 calls 0.35, 0.6, 0.8 -> TP 2 of 3 calls, 2 positives -> F1 0.8, the best
    # (0.1: 4/7, 0.3: 2/3, 0.6: 1/2, 0.8: 2/3)
    choice = tune_threshold([0, 0, 1, 0, 1], [0.1, 0.3, 0.35, 0.6, 0.8])
    assert choice.threshold == pytest.approx(0.35) and choice.f1 == pytest.approx(0.8)
    assert (choice.cases, choice.positives) == (5, 2)
    # test set at the tuned threshold: calls 0.4 (positive) and 0.5 (negative) -> F1 2 / (2 + 2) = 0.5; at 0.5: 0
    test_labels, test = [0, 1, 1, 0], np.array([[0.2], [0.4], [0.3], [0.5]])
    assert classification_score("f1", test_labels, test, [choice.threshold]) == pytest.approx(0.5)
    assert classification_score("f1", test_labels, test, 0.5) == 0.0
    # one positive ranked first: the threshold is its probability, F1 1
    assert tune_threshold([0, 1, 0], [0.2, 0.9, 0.4]) == (pytest.approx(0.9), pytest.approx(1.0), 3, 1)
    with pytest.raises(ValueError, match="at least one positive case to tune the F1 threshold on, got 3 negative"):
        tune_threshold([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="validation probabilities: expected one per case \\(3\\)"):
        tune_threshold([0, 1, 0], [0.1, 0.2])


def test_per_seed_thresholds_in_scores_intervals_and_comparisons() -> None:
    rng = np.random.default_rng(3)
    labels = np.array([0] * 30 + [1] * 10)
    table = np.clip(labels[:, None] * 0.25 + rng.uniform(0, 0.6, (40, 2)), 0, 1)
    thresholds = [0.3, 0.55]
    separate = [classification_score("f1", labels, table[:, [j]], t) for j, t in enumerate(thresholds)]
    assert classification_score("f1", labels, table, thresholds) == pytest.approx(np.mean(separate))
    assert fast_score("f1", labels, table, np.array(thresholds)) == pytest.approx(np.mean(separate))
    result = metric_with_ci("f1", labels, table, thresholds, resamples=50)
    assert result["per_seed"] == pytest.approx(separate) and result["ci_low"] <= result["mean"] <= result["ci_high"]
    # the same probabilities at other thresholds: the difference is that of the two arms' own F1
    compared = compare_arms("f1", labels, table, table, thresholds, resamples=50, baseline_threshold=0.5)
    expected = np.mean(separate) - classification_score("f1", labels, table, 0.5)
    assert compared["difference"] == pytest.approx(expected) and compared["difference"] != 0.0
    assert compared["ci_low"] <= compared["difference"] <= compared["ci_high"] and 0.0 < compared["p"] <= 1.0
    assert compare_arms("f1", labels, table, table, thresholds, resamples=20)["difference"] == 0.0
    with pytest.raises(ValueError, match="threshold: expected one finite probability or one per seed column \\(2\\)"):
        classification_score("f1", labels, table, [0.5, 0.5, 0.5])
