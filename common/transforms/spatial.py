"""Spatial transforms: put a model-grid output back onto the grid its input was loaded on."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialResample

__all__ = ["ResampleToSourced", "ResampleToSourceD", "ResampleToSourceDict"]


class ResampleToSourced(MapTransform):
    """Resample ``keys`` (network outputs on the model grid) onto the grid ``ref_key`` was loaded on.

    The reference is the preprocessed input (a MetaTensor): its ``affine`` is the model grid (after orientation,
    spacing and crop/pad), its meta data ``original_affine`` and ``spatial_shape`` (written by ``LoadImage``) the
    grid of the file it came from. The output is resampled in world coordinates, so orientation, spacing and the
    crop or pad are all undone at once; voxels outside the model's field of view take the nearest border value.

    Args:
        keys: the outputs, each (C, *spatial) on the model grid.
        ref_key: the preprocessed input.
        mode: interpolation (``bilinear`` for images, ``nearest`` for labels).
        padding_mode: ``border``, ``zeros`` or ``reflection`` (``torch.nn.functional.grid_sample``).
        dtype: data type of the resampled output.

    Raises:
        ValueError: naming the key, when the reference carries no source grid or an output is not (C, *spatial).
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str,
        mode: str = "bilinear",
        padding_mode: str = "border",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(keys)
        self.ref_key = ref_key
        self.dtype = dtype
        self.resampler = SpatialResample(mode=mode, padding_mode=padding_mode, dtype=torch.float64)

    def source_grid(self, reference: Any) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(model-grid affine, source affine, source spatial shape) of the reference."""
        meta = reference.meta if isinstance(reference, MetaTensor) else {}
        source_affine, shape = meta.get("original_affine"), meta.get("spatial_shape")
        if source_affine is None or shape is None:
            raise ValueError(
                f"key '{self.ref_key}': expected a MetaTensor loaded from a file (meta data 'original_affine' and "
                f"'spatial_shape'), found {type(reference).__name__} with meta keys {sorted(meta)}"
            )
        source = torch.as_tensor(np.asarray(source_affine), dtype=torch.float64)
        return reference.affine.to(torch.float64), source, [int(s) for s in np.asarray(shape).ravel()]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        model_affine, source_affine, shape = self.source_grid(d[self.ref_key])
        for key in self.key_iterator(d):
            output = torch.as_tensor(d[key])
            if output.ndim != len(shape) + 1:
                raise ValueError(
                    f"key '{key}': expected an output of shape (channels, {len(shape)} spatial axes), found "
                    f"{tuple(output.shape)}"
                )
            on_model_grid = MetaTensor(output.detach().to(torch.float64), affine=model_affine)
            resampled = self.resampler(on_model_grid, dst_affine=source_affine, spatial_size=shape)
            d[key] = MetaTensor(resampled.as_tensor().to(self.dtype), affine=source_affine.clone())
        return d


ResampleToSourceD = ResampleToSourceDict = ResampleToSourced
