"""MONAI transforms shared by the bundles: safe loading, case validation and mask-to-condition encoding.

Each transform comes as an array ``Transform`` and a dictionary ``MapTransform`` with ``d``/``D``/``Dict`` aliases,
as in MONAI itself.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform, Transform

__all__ = [
    "SafeLoadImaged",
    "SafeLoadImageD",
    "SafeLoadImageDict",
    "ValidateCase",
    "ValidateCased",
    "ValidateCaseD",
    "ValidateCaseDict",
    "AddBrainLabel",
    "AddBrainLabeld",
    "AddBrainLabelD",
    "AddBrainLabelDict",
    "LabelToCondition",
    "LabelToConditiond",
    "LabelToConditionD",
    "LabelToConditionDict",
    "source_name",
]


def source_name(data: Any, fallback: str = "<input>") -> str:
    """The file a (Meta)tensor was read from, for error messages."""
    if isinstance(data, MetaTensor):
        return str(data.meta.get("filename_or_obj", fallback))
    return fallback


class SafeLoadImaged(LoadImaged):
    """``monai.transforms.LoadImaged`` whose read errors name the file(s) and the key.

    A truncated, corrupt or unsupported file otherwise surfaces as a reader-specific exception (gzip ``EOFError``,
    nibabel ``ImageFileError``, ...) deep in a data-loader traceback.
    """

    def __call__(self, data: Mapping, reader: Any = None) -> dict:
        try:
            return super().__call__(data, reader)
        except Exception as e:
            files = {key: data.get(key) for key in self.keys if key in data}
            raise ValueError(f"cannot read {files}: corrupt, truncated or not a medical image file ({e})") from e


class ValidateCase(Transform):
    """Check a loaded (image, label) pair before any resampling.

    Args:
        num_channels: expected image channel count (one per modality).
        label_values: the label values allowed in the mask (e.g. ``[0, 1, 2]``).
        atol: tolerance for comparing the image and label affines.

    Raises ``ValueError`` naming the file for: a wrong channel count, NaN/inf voxels, a label grid that differs from
    the image grid, label values outside ``label_values`` or non-integer labels.
    """

    def __init__(self, num_channels: int, label_values: Sequence[int], atol: float = 1e-2) -> None:
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.num_channels = num_channels
        self.label_values = sorted(int(v) for v in label_values)
        self.atol = atol

    def check_image(self, image: torch.Tensor) -> None:
        name = source_name(image)
        if image.shape[0] != self.num_channels:
            raise ValueError(
                f"'{name}': expected {self.num_channels} image channel(s), found {image.shape[0]} (shape {tuple(image.shape)})"
            )
        finite = torch.isfinite(image)
        if not bool(finite.all()):
            raise ValueError(f"'{name}': {int((~finite).sum())} NaN/inf voxel(s); expected finite intensities")

    def check_label(self, label: torch.Tensor, image: torch.Tensor | None = None) -> None:
        name = source_name(label)
        if label.shape[0] != 1:
            raise ValueError(f"'{name}': expected a single-channel label map, found shape {tuple(label.shape)}")
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
    ) -> None:
        super().__init__([k for k in (image_key, label_key) if k is not None])
        self.image_key, self.label_key = image_key, label_key
        self.validator = ValidateCase(num_channels, label_values, atol)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        image = d[self.image_key] if self.image_key is not None else None
        if image is not None:
            self.validator.check_image(image)
        if self.label_key is not None:
            self.validator.check_label(d[self.label_key], image)
        return d


class AddBrainLabel(Transform):
    """Give background voxels inside the brain their own label (Med-DDPM's BraTS experiment).

    The paper adds a label for the brain area "by thresholding the T1 image": a voxel whose label is background
    (``0``) and whose reference intensity exceeds ``threshold * max(reference)`` becomes ``brain_label``.

    Args:
        brain_label: value given to brain voxels (paper: 4, after remapping the enhancing tumour 4 -> 3).
        threshold: fraction of the reference maximum above which a voxel is brain (skull-stripped data has a zero
            background, so a small value suffices).
    """

    def __init__(self, brain_label: int, threshold: float = 0.05) -> None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.brain_label = brain_label
        self.threshold = threshold

    def __call__(self, label: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``label``: (1, *spatial) label map; ``reference``: (1, *spatial) T1 intensities. Returns a new label map."""
        if tuple(label.shape) != tuple(reference.shape):
            raise ValueError(f"label shape {tuple(label.shape)} and reference shape {tuple(reference.shape)} differ")
        brain = (reference > self.threshold * reference.max()) & (label == 0)
        out = label.clone()
        out[brain] = self.brain_label
        return out


class AddBrainLabeld(MapTransform):
    """Dictionary wrapper of :class:`AddBrainLabel`; the reference is channel ``channel`` of ``image_key``."""

    def __init__(
        self, keys: KeysCollection, image_key: str, brain_label: int, threshold: float = 0.05, channel: int = 0
    ) -> None:
        super().__init__(keys)
        self.image_key = image_key
        self.channel = channel
        self.adder = AddBrainLabel(brain_label, threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        reference = d[self.image_key][self.channel : self.channel + 1]
        for key in self.key_iterator(d):
            d[key] = self.adder(d[key], reference)
        return d


class LabelToCondition(Transform):
    """One-hot encode a label map into the conditioning channels, background dropped (Med-DDPM, Sec. II).

    Args:
        labels: label values that get a channel, in channel order (e.g. ``[1, 2]`` head and tumour: the paper's
            two-channel condition; ``[1, 2, 3, 4]`` for its BraTS experiment). Background is every other value.

    Input (1, *spatial) label map; output (len(labels), *spatial) float32 tensor of 0/1.
    """

    def __init__(self, labels: Sequence[int]) -> None:
        if len(labels) == 0 or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be a non-empty list of distinct values, got {list(labels)}")
        self.labels = [int(v) for v in labels]

    def __call__(self, label: torch.Tensor) -> torch.Tensor:
        if label.shape[0] != 1:
            raise ValueError(f"expected a single-channel label map, found shape {tuple(label.shape)}")
        channels = [(label[0] == value) for value in self.labels]
        condition = torch.stack(channels).to(torch.float32)
        if isinstance(label, MetaTensor):
            condition = MetaTensor(condition, meta=dict(label.meta))
        return condition


class LabelToConditiond(MapTransform):
    """Dictionary wrapper of :class:`LabelToCondition`: ``data[output_key] = one-hot(data[key])``."""

    def __init__(self, keys: KeysCollection, labels: Sequence[int], output_key: str = "condition") -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"LabelToConditiond takes one label key, got {self.keys}")
        self.output_key = output_key
        self.encoder = LabelToCondition(labels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        d[self.output_key] = self.encoder(d[self.keys[0]])
        return d


SafeLoadImageD = SafeLoadImageDict = SafeLoadImaged
ValidateCaseD = ValidateCaseDict = ValidateCased
AddBrainLabelD = AddBrainLabelDict = AddBrainLabeld
LabelToConditionD = LabelToConditionDict = LabelToConditiond
