"""A crop that keeps the structure of interest inside: MONAI's foreground crop with a fixed size."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import (
    BorderPad,
    MapTransform,
    SpatialCrop,
    Transform,
)

__all__ = ["SmartCrop", "SmartCropd", "SmartCropD", "SmartCropDict"]


# ------------------------------------------------------------------------------------------------------ smart crop


class SmartCrop(Transform):
    """Crop ``roi_size`` around the centre of mass of a foreground rather than the geometric centre (paper, 2.2).

    The window is centred on the centre of mass of the foreground pixels, shifted so that the pixels of ``keep``
    (the tumour) lie inside it when they fit, then shifted to stay inside the image. Along an axis shorter than the
    window the whole axis is kept and padded symmetrically with ``pad_value``. Without foreground the window is
    centred on the geometric centre. Works for any number of spatial axes (MONAI ``SpatialCrop`` + ``BorderPad``).

    Args:
        roi_size: output spatial size.
        pad_value: value of padded pixels (-1: background in the scaled units).
    """

    def __init__(self, roi_size: Sequence[int], pad_value: float = -1.0) -> None:
        self.roi_size = tuple(int(s) for s in roi_size)
        if not self.roi_size or min(self.roi_size) < 1:
            raise ValueError(f"roi_size must be positive sizes, got {tuple(roi_size)}")
        self.pad_value = float(pad_value)

    def window_start(self, foreground: torch.Tensor, keep: torch.Tensor | None = None) -> list[int]:
        """First index of the window per spatial axis (negative: padding before) for spatial masks of one shape."""
        foreground = torch.as_tensor(foreground) > 0
        if foreground.ndim != len(self.roi_size):
            raise ValueError(
                f"foreground must have {len(self.roi_size)} spatial axes, got shape {tuple(foreground.shape)}"
            )
        points = torch.nonzero(foreground).double()
        shape = torch.tensor(foreground.shape, dtype=torch.float64)
        centre = points.mean(dim=0) if len(points) else (shape - 1) / 2
        kept = torch.nonzero(torch.as_tensor(keep) > 0) if keep is not None else torch.zeros(0, foreground.ndim)
        starts = []
        for axis, (size, roi) in enumerate(zip(foreground.shape, self.roi_size)):
            if size <= roi:
                starts.append(-((roi - size) // 2))
                continue
            start = math.floor(float(centre[axis]) - (roi - 1) / 2 + 0.5)
            if len(kept):
                low, high = int(kept[:, axis].min()), int(kept[:, axis].max())
                fitted = min(max(start, high - roi + 1), low)
                start = fitted if high - low < roi else math.floor((low + high - roi + 1) / 2 + 0.5)
            starts.append(min(max(start, 0), size - roi))
        return starts

    def crop(self, img: torch.Tensor, starts: Sequence[int]) -> torch.Tensor:
        """Cut the window beginning at ``starts`` from a channel-first ``img``, padding where it leaves the image."""
        shape = img.shape[1:]
        ends = [s + r for s, r in zip(starts, self.roi_size)]
        cropper = SpatialCrop(roi_start=[max(s, 0) for s in starts], roi_end=[min(e, n) for e, n in zip(ends, shape)])
        inside = cropper(img)
        border = [b for s, e, n in zip(starts, ends, shape) for b in (max(-s, 0), max(e - n, 0))]
        return BorderPad(border, mode="constant", value=self.pad_value)(inside) if any(border) else inside

    def __call__(self, img: torch.Tensor, foreground: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Crop a channel-first ``img`` around ``foreground`` (spatial mask), keeping ``keep`` inside when it fits."""
        return self.crop(img, self.window_start(foreground, keep))


class SmartCropd(MapTransform):
    """Dictionary wrapper of :class:`SmartCrop`: one window, from ``data[source_key]``, cuts every key.

    Args:
        keys: keys to crop (e.g. ``["ct", "pet", "mask"]``).
        source_key: channel-first image whose pixels above ``threshold`` (in any channel) are the foreground.
        roi_size: output spatial size; paper: (128, 128).
        threshold: foreground threshold in the image's units; -0.5 is -500 HU with the default CT window
            (``PetCtSettings.body_threshold``).
        keep_key: optional channel-first mask (e.g. ``"mask"``) whose positive pixels are kept inside the window
            when they fit.
        pad_value: value of padded pixels.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str,
        roi_size: Sequence[int] = (128, 128),
        threshold: float = -0.5,
        keep_key: str | None = None,
        pad_value: float = -1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key, self.keep_key = source_key, keep_key
        self.threshold = float(threshold)
        self.cropper = SmartCrop(roi_size, pad_value)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        foreground = (torch.as_tensor(d[self.source_key]) > self.threshold).any(dim=0)
        keep = torch.as_tensor(d[self.keep_key]).amax(dim=0) if self.keep_key is not None else None
        starts = self.cropper.window_start(foreground, keep)
        for key in self.key_iterator(d):
            d[key] = self.cropper.crop(d[key], starts)
        return d


SmartCropD = SmartCropDict = SmartCropd
