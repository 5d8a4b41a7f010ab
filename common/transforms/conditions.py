"""Mask-to-condition encoding of mask-conditioned bundles (brain label, one channel per condition label)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = [
    "AddBrainLabel",
    "AddBrainLabeld",
    "LabelToCondition",
    "LabelToConditiond",
    "AddBrainLabelD",
    "AddBrainLabelDict",
    "LabelToConditionD",
    "LabelToConditionDict",
]


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


AddBrainLabelD = AddBrainLabelDict = AddBrainLabeld


LabelToConditionD = LabelToConditionDict = LabelToConditiond
