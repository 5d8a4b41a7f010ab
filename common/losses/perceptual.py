"""Perceptual losses: an LPIPS-style feature distance on a frozen extractor, and its 3D use on slices."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import StrEnum
from torch import nn

__all__ = ["PerceptualReduction", "FeaturePerceptualLoss", "FakeVolumePerceptualLoss"]


class PerceptualReduction(StrEnum):
    """How :class:`FeaturePerceptualLoss` reduces the per-sample distances: batch mean, batch sum, or none."""

    MEAN = "mean"
    SUM = "sum"
    NONE = "none"


def _unit_channels(features: torch.Tensor, eps: float) -> torch.Tensor:
    """``features`` with each position's channel vector (dim 1) scaled to unit length; zero vectors stay zero."""
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + eps)


class FeaturePerceptualLoss(nn.Module):
    """LPIPS-style distance between two image batches, measured in the feature maps of a frozen extractor.

    For each feature map l of ``extractor`` (a module returning a list of (B, C_l, *spatial) tensors), with
    ``n = f / (||f||_channels + eps)``:  ``d_l = mean_space( sum_channels (n(a) - n(b))^2 )``, and the distance is
    ``sum_l w_l d_l`` per sample. It is LPIPS (Zhang et al. 2018) with fixed layer weights in place of learned
    per-channel heads: 0 for identical inputs, symmetric, positive otherwise, differentiable in both inputs.

    Args:
        extractor: e.g. :class:`VGG16Features` or :class:`SmallConvFeatures` (see :func:`build_perceptual_network`).
        layer_weights: non-negative weight per returned feature map; None: 1 for each.
        reduction: ``"mean"`` (scalar, batch mean), ``"sum"`` (scalar, batch sum) or ``"none"`` (one per sample).
        eps: added to the channel norm so that all-zero vectors (frequent after a ReLU) stay finite.

    Raises:
        ValueError: unknown ``reduction``; ``layer_weights`` empty or negative, or (when ``extractor`` has a
            ``layers`` attribute) of a different length than ``extractor.layers``.
    """

    def __init__(
        self,
        extractor: nn.Module,
        layer_weights: Sequence[float] | None = None,
        reduction: PerceptualReduction | str = PerceptualReduction.MEAN,
        eps: float = 1e-10,
    ) -> None:
        super().__init__()
        choices = tuple(str(m) for m in PerceptualReduction)
        if reduction not in choices:
            raise ValueError(f"`reduction` must be one of {choices}, got {reduction!r}")
        self.extractor = extractor
        self.reduction = PerceptualReduction(reduction)
        self.eps = eps
        weights = None if layer_weights is None else torch.as_tensor(layer_weights, dtype=torch.float32).flatten()
        if weights is not None and (weights.numel() == 0 or not bool((weights >= 0).all())):
            raise ValueError(f"`layer_weights` must be non-negative numbers, one per feature map, got {layer_weights}")
        self.layer_weights: torch.Tensor | None
        self.register_buffer("layer_weights", weights, persistent=False)
        if hasattr(extractor, "layers"):
            self._check_layer_count(len(extractor.layers))

    def _check_layer_count(self, count: int) -> None:
        if self.layer_weights is not None and len(self.layer_weights) != count:
            raise ValueError(
                f"`layer_weights` has {len(self.layer_weights)} values but the extractor returns {count} feature maps"
            )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Perceptual distance between ``a[i]`` and ``b[i]``.

        Args:
            a: images, e.g. (B, C, H, W) in the extractor's input range.
            b: images of the same shape.

        Returns:
            A scalar (``reduction`` "mean" or "sum") or a (B,) tensor (``"none"``), in the dtype of the features.

        Raises:
            ValueError: ``a`` and ``b`` differ in shape, or the extractor returns a different number of feature maps
                than ``layer_weights`` has values.
        """
        if a.shape != b.shape:
            raise ValueError(f"inputs must have the same shape, got a {tuple(a.shape)} and b {tuple(b.shape)}")
        features = self.extractor(torch.cat([a, b]))  # one pass for both batches
        self._check_layer_count(len(features))
        distance = a.new_zeros(a.shape[0])
        for index, both in enumerate(features):
            fa, fb = both.chunk(2)
            squared = (_unit_channels(fa, self.eps) - _unit_channels(fb, self.eps)).pow(2).sum(dim=1)
            layer_distance = squared.reshape(a.shape[0], -1).mean(dim=1)
            weight = 1.0 if self.layer_weights is None else self.layer_weights[index]
            distance = distance + weight * layer_distance
        if self.reduction == PerceptualReduction.MEAN:
            return distance.mean()
        if self.reduction == PerceptualReduction.SUM:
            return distance.sum()
        return distance


class FakeVolumePerceptualLoss(nn.Module):
    """A 2D perceptual loss applied to 3D volumes through slices along all three axes ("fake 3D").

    The paper computes its perceptual term with MONAI's ``PerceptualLoss(is_fake_3d=True)``: the 2D distance on
    slices taken along each axis. This does the same around any 2D loss ``(a, b) -> scalar`` (here the project's
    offline :class:`common.losses.perceptual.FeaturePerceptualLoss`): for each axis it draws ``ratio`` of the slices at
    random, reshapes them into a 2D batch, and the three axis losses are averaged.

    Args:
        loss_2d: 2D loss taking two (N, C, H, W) batches.
        ratio: fraction of slices per axis used each call, in (0, 1]; 1 uses all of them.

    Raises:
        ValueError: ``ratio`` outside (0, 1]; inputs not 5D or of different shapes (at call time).
    """

    def __init__(self, loss_2d: nn.Module, ratio: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.loss_2d = loss_2d
        self.ratio = float(ratio)

    def _slices(self, volume: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
        moved = volume.index_select(axis, index).movedim(axis, 1)  # (B, n, C, ...)
        return moved.reshape(-1, *moved.shape[2:])

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.ndim != 5 or a.shape != b.shape:
            raise ValueError(
                f"expected two (B, C, H, W, D) volumes of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        total = a.new_zeros(())
        for axis in (2, 3, 4):
            size = a.shape[axis]
            count = max(1, round(self.ratio * size))
            index = (
                torch.randperm(size, device=a.device)[:count] if count < size else torch.arange(size, device=a.device)
            )
            total = total + self.loss_2d(self._slices(a, axis, index), self._slices(b, axis, index))
        return total / 3.0
