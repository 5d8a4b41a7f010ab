"""MONAI transforms of the bundles: loading, validation, conditions, CT structures, crops, latents, augmentation,
binary morphology, resampling outputs to the source grid."""

from __future__ import annotations

from common.transforms.augmentation import petct_augmentation
from common.transforms.conditions import (
    AddBrainLabel,
    AddBrainLabelD,
    AddBrainLabeld,
    AddBrainLabelDict,
    LabelToCondition,
    LabelToConditionD,
    LabelToConditiond,
    LabelToConditionDict,
)
from common.transforms.crop import SmartCrop, SmartCropD, SmartCropd, SmartCropDict
from common.transforms.ct import (
    DEFAULT_STRUCTURE_SYNONYMS,
    DEFAULT_STRUCTURES,
    CheckHURange,
    CheckHURangeD,
    CheckHURanged,
    CheckHURangeDict,
    IsolateBody,
    IsolateBodyD,
    IsolateBodyd,
    IsolateBodyDict,
    LoadStructureMasksD,
    LoadStructureMasksd,
    LoadStructureMasksDict,
    MergeSegmentationD,
    MergeSegmentationd,
    MergeSegmentationDict,
    StructureSynonyms,
    normalise_structure_name,
)
from common.transforms.io import SafeLoadImageD, SafeLoadImaged, SafeLoadImageDict, source_name
from common.transforms.latent import EncodeLatentd, SampleLatentd
from common.transforms.morphology import binary_opening, fill_holes, largest_component
from common.transforms.spatial import ResampleToSourceD, ResampleToSourced, ResampleToSourceDict
from common.transforms.validation import ValidateCase, ValidateCaseD, ValidateCased, ValidateCaseDict, checked_range

__all__ = [
    "ResampleToSourceD",
    "ResampleToSourceDict",
    "ResampleToSourced",
    "AddBrainLabel",
    "AddBrainLabelD",
    "AddBrainLabelDict",
    "AddBrainLabeld",
    "CheckHURange",
    "CheckHURangeD",
    "CheckHURangeDict",
    "CheckHURanged",
    "DEFAULT_STRUCTURES",
    "DEFAULT_STRUCTURE_SYNONYMS",
    "EncodeLatentd",
    "IsolateBody",
    "IsolateBodyD",
    "IsolateBodyDict",
    "IsolateBodyd",
    "LabelToCondition",
    "LabelToConditionD",
    "LabelToConditionDict",
    "LabelToConditiond",
    "LoadStructureMasksD",
    "LoadStructureMasksDict",
    "LoadStructureMasksd",
    "MergeSegmentationD",
    "MergeSegmentationDict",
    "MergeSegmentationd",
    "SafeLoadImageD",
    "SafeLoadImageDict",
    "SafeLoadImaged",
    "SampleLatentd",
    "SmartCrop",
    "SmartCropD",
    "SmartCropDict",
    "SmartCropd",
    "StructureSynonyms",
    "checked_range",
    "ValidateCase",
    "ValidateCaseD",
    "ValidateCaseDict",
    "ValidateCased",
    "binary_opening",
    "fill_holes",
    "largest_component",
    "normalise_structure_name",
    "petct_augmentation",
    "source_name",
]
