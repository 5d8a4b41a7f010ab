"""Segmentation overlap of binary masks (Dice)."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import (
    compute_dice,
)
from monai.utils import convert_to_tensor

from common.metrics.image import _check_same_shape

__all__ = ["dice", "mask_dice"]


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
