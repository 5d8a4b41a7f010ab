"""Case validation: shapes, labels, finite values and pairing of images and masks, with errors naming the file."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from common.transforms.io import source_name

__all__ = ["checked_range", "ValidateCase", "ValidateCased", "ValidateCaseD", "ValidateCaseDict"]


def checked_range(values: Sequence[float], name: str) -> tuple[float, float]:
    """``(low, high)`` as floats; ValueError naming ``name`` unless it is two numbers with high > low."""
    if len(values) != 2 or not float(values[1]) > float(values[0]):
        raise ValueError(f"{name} must be (low, high) with high > low, got {tuple(values)}")
    return float(values[0]), float(values[1])


class ValidateCase(Transform):
    """Check a loaded (image, label) pair before any resampling.

    Args:
        num_channels: expected image channel count (one per modality).
        label_values: the label values allowed in the mask (e.g. ``[0, 1, 2]``).
        atol: tolerance for comparing the image and label affines.
        spatial_dims: when given, the label map must have this many spatial axes and (a MetaTensor) an affine that
            can be resampled: finite and invertible (serving checks what a user sends; None: not checked).

    Raises ``ValueError`` naming the file for: a wrong channel count, NaN/inf voxels, a label grid that differs from
    the image grid, label values outside ``label_values``, non-integer labels, or (``spatial_dims``) a label map of
    another dimensionality or with a singular affine.
    """

    def __init__(
        self, num_channels: int, label_values: Sequence[int], atol: float = 1e-2, spatial_dims: int | None = None
    ) -> None:
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.num_channels = num_channels
        self.label_values = sorted(int(v) for v in label_values)
        self.atol = atol
        self.spatial_dims = spatial_dims

    def check_grid(self, label: torch.Tensor) -> None:
        """A label map with ``spatial_dims`` spatial axes of at least one voxel, on a finite, invertible affine."""
        name = source_name(label)
        if label.ndim - 1 != self.spatial_dims or min(label.shape[1:], default=0) < 1:
            raise ValueError(
                f"'{name}': expected a {self.spatial_dims}D label map (channel-first shape (1, {self.spatial_dims} "
                f"spatial axes)), found shape {tuple(label.shape)}"
            )
        if isinstance(label, MetaTensor):
            affine = label.affine.double()
            if not bool(torch.isfinite(affine).all()) or abs(float(torch.linalg.det(affine[:-1, :-1]))) < 1e-12:
                raise ValueError(
                    f"'{name}': the label map's affine {affine.tolist()} is not finite and invertible (zero or NaN "
                    "spacing?); it cannot be resampled to the model grid"
                )

    def check_image(self, image: torch.Tensor) -> None:
        name = source_name(image)
        if image.shape[0] != self.num_channels:
            raise ValueError(
                f"'{name}': expected {self.num_channels} image channel(s), found {image.shape[0]} "
                f"(shape {tuple(image.shape)})"
            )
        finite = torch.isfinite(image)
        if not bool(finite.all()):
            raise ValueError(f"'{name}': {int((~finite).sum())} NaN/inf voxel(s); expected finite intensities")

    def check_label(self, label: torch.Tensor, image: torch.Tensor | None = None) -> None:
        name = source_name(label)
        if label.shape[0] != 1:
            raise ValueError(f"'{name}': expected a single-channel label map, found shape {tuple(label.shape)}")
        if self.spatial_dims is not None:
            self.check_grid(label)
        if not bool(torch.isfinite(label).all()) or not bool((label == label.round()).all()):
            raise ValueError(
                f"'{name}': label map has non-integer or NaN/inf values; expected labels {self.label_values}"
            )
        values = sorted(int(v) for v in torch.unique(label))
        unexpected = [v for v in values if v not in self.label_values]
        if unexpected:
            raise ValueError(
                f"'{name}': label values {unexpected} are not allowed; expected a subset of {self.label_values}"
            )
        if image is None:
            return
        if tuple(label.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(
                f"'{name}': label shape {tuple(label.shape[1:])} does not match image '{source_name(image)}' shape "
                f"{tuple(image.shape[1:])}"
            )
        both_meta = isinstance(label, MetaTensor) and isinstance(image, MetaTensor)
        if both_meta and not torch.allclose(label.affine.double(), image.affine.double(), atol=self.atol):
            raise ValueError(
                f"'{name}': label affine {label.affine.tolist()} does not match image '{source_name(image)}' "
                f"affine {image.affine.tolist()} (spacing or origin differ)"
            )

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> None:
        self.check_image(image)
        if label is not None:
            self.check_label(label, image)


class ValidateCased(MapTransform):
    """Dictionary wrapper of :class:`ValidateCase`: checks ``data[image_key]`` and ``data[label_key]``.

    Either key may be ``None`` (inference checks a mask alone).
    """

    def __init__(
        self,
        image_key: str | None,
        label_key: str | None,
        num_channels: int,
        label_values: Sequence[int],
        atol: float = 1e-2,
        spatial_dims: int | None = None,
    ) -> None:
        super().__init__([k for k in (image_key, label_key) if k is not None])
        self.image_key, self.label_key = image_key, label_key
        self.validator = ValidateCase(num_channels, label_values, atol, spatial_dims)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        image = d[self.image_key] if self.image_key is not None else None
        if image is not None:
            self.validator.check_image(image)
        if self.label_key is not None:
            self.validator.check_label(d[self.label_key], image)
        return d


ValidateCaseD = ValidateCaseDict = ValidateCased
