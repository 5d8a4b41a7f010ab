"""Segmentation overlap of binary masks: Dice, and Dice / IoU / precision / recall from a confusion matrix."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_confusion_matrix_metric, compute_dice, get_confusion_matrix
from monai.utils import convert_to_tensor

from common.metrics.image import _check_same_shape

__all__ = ["OVERLAP_METRICS", "dice", "mask_dice", "overlap_counts", "overlap_metrics"]

OVERLAP_METRICS = {"dice": "f1 score", "iou": "threat score", "precision": "precision", "recall": "sensitivity"}
"""Reported name -> MONAI ``compute_confusion_matrix_metric`` name (Dice is the F1 score, IoU the threat score)."""


def _as_binary(name: str, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate a batch (B, C, *spatial) of boolean or 0/1 values and return it as float32."""
    tensor = convert_to_tensor(mask, track_meta=False)
    if tensor.ndim < 3 or tensor.numel() == 0:
        raise ValueError(f"{name} must be a non-empty batch (B, C, *spatial), got shape {tuple(tensor.shape)}.")
    tensor = tensor.float()
    if not bool(((tensor == 0) | (tensor == 1)).all()):
        raise ValueError(
            f"{name} must be boolean or hold only 0 and 1, got values {torch.unique(tensor)[:8].tolist()}."
        )
    return tensor


def dice(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Dice overlap 2|P & T| / (|P| + |T|) of boolean masks, per batch item (segmentation usefulness, papers 000/001).

    Args:
        pred, target: boolean or 0/1 masks (B, C, *spatial) of the same shape; channels are separate structures.

    Returns:
        (B,) tensor: the mean over channels of each channel's Dice; a channel empty in both masks counts as 1.
    """
    pred_tensor, target_tensor = _as_binary("pred", pred), _as_binary("target", target)
    _check_same_shape("pred", pred_tensor, "target", target_tensor)
    return compute_dice(pred_tensor, target_tensor, include_background=True, ignore_empty=False).mean(dim=1)


def mask_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dice overlap ``2 |a & b| / (|a| + |b|)`` of two boolean masks of the same shape; 1.0 when both are empty.

    The whole tensor counts as one mask (any shape); :func:`dice` gives per-item, per-channel values.
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float(dice(a.reshape(1, 1, -1).bool(), b.reshape(1, 1, -1).bool())[0])


def overlap_counts(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> torch.Tensor:
    """True positives, false positives, true negatives and false negatives of boolean masks, per item and channel.

    Args:
        pred, target: boolean or 0/1 masks (B, C, *spatial) of the same shape.

    Returns:
        (B, C, 4) float tensor ``[tp, fp, tn, fn]`` (MONAI ``get_confusion_matrix``); counts of several items (the
        slices of one case) add up to the counts of the whole.
    """
    pred_tensor, target_tensor = _as_binary("pred", pred), _as_binary("target", target)
    _check_same_shape("pred", pred_tensor, "target", target_tensor)
    return get_confusion_matrix(pred_tensor, target_tensor, include_background=True)


def overlap_metrics(counts: torch.Tensor) -> dict[str, float]:
    """Dice, IoU, precision and recall of one structure from its summed ``[tp, fp, tn, fn]`` (shape (4,)).

    Dice = 2 tp / (2 tp + fp + fn), IoU = tp / (tp + fp + fn), precision = tp / (tp + fp), recall = tp / (tp + fn);
    a ratio with a zero denominator is NaN (e.g. precision when nothing is predicted), as MONAI returns it.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.shape != (4,):
        raise ValueError(f"counts must be [tp, fp, tn, fn] of one structure (shape (4,)), got {tuple(counts.shape)}")
    return {
        name: float(compute_confusion_matrix_metric(monai_name, counts)) for name, monai_name in OVERLAP_METRICS.items()
    }
