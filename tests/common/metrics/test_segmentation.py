"""Tests of common.metrics.segmentation's confusion-matrix metrics (Dice, IoU, precision, recall) by hand."""

from __future__ import annotations

import math

import pytest
import torch

from common.metrics.segmentation import overlap_counts, overlap_metrics


@pytest.mark.parametrize("spatial", [(4, 4), (4, 4, 2)])
def test_overlap_counts_and_metrics_by_hand(spatial: tuple[int, ...]) -> None:
    pred, target = torch.zeros(1, 1, *spatial), torch.zeros(1, 1, *spatial)
    pred[0, 0, :2, :2] = 1  # 4 x depth predicted voxels, all inside the target
    target[0, 0, :2, :3] = 1  # 6 x depth target voxels
    depth = spatial[2] if len(spatial) == 3 else 1
    counts = overlap_counts(pred, target)[0, 0]
    assert counts.tolist() == [4 * depth, 0, 10 * depth, 2 * depth]
    metrics = overlap_metrics(counts)
    assert metrics["dice"] == pytest.approx(2 * 4 / (2 * 4 + 2))
    assert metrics["iou"] == pytest.approx(4 / 6)
    assert metrics["precision"] == pytest.approx(1.0)
    assert metrics["recall"] == pytest.approx(4 / 6)


def test_counts_of_slices_add_up_to_the_volume() -> None:
    generator = torch.Generator().manual_seed(0)
    pred = (torch.rand(1, 1, 5, 5, 3, generator=generator) > 0.5).float()
    target = (torch.rand(1, 1, 5, 5, 3, generator=generator) > 0.5).float()
    whole = overlap_counts(pred, target)[0, 0]
    by_slice = sum(overlap_counts(pred[..., z], target[..., z])[0, 0] for z in range(3))
    assert torch.equal(whole, by_slice)


def test_empty_prediction_gives_nan_precision() -> None:
    metrics = overlap_metrics(torch.tensor([0.0, 0.0, 10.0, 3.0]))
    assert math.isnan(metrics["precision"]) and metrics["recall"] == 0.0 and metrics["dice"] == 0.0


def test_overlap_metrics_rejects_a_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"counts must be \[tp, fp, tn, fn\]"):
        overlap_metrics(torch.zeros(2, 4))


def test_overlap_counts_rejects_non_binary_masks() -> None:
    with pytest.raises(ValueError, match="pred must be boolean or hold only 0 and 1"):
        overlap_counts(torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, 1, 2, 2))
