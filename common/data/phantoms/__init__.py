"""Digital phantoms that stand in for the real datasets, one module per anatomy; ``kinds`` writes datasets."""

from __future__ import annotations

from common.data.phantoms.geometry import PhantomCase, phantom_affine
from common.data.phantoms.head_neck import (
    HEAD_NECK_TISSUES,
    HECKTOR_MODALITIES,
    PETCT_MODALITIES,
    head_neck_petct_phantom,
)
from common.data.phantoms.kinds import (
    PHANTOM_ALIASES,
    PHANTOM_KINDS,
    PhantomKind,
    get_phantom_kind,
    phantom_grid,
    write_phantom_dataset,
)
from common.data.phantoms.mri import (
    BRATS_MODALITIES,
    BRATS_TISSUES,
    WHOLE_HEAD_TISSUES,
    brats_mri_phantom,
    whole_head_mri_phantom,
)
from common.data.phantoms.thorax import THORAX_STRUCTURES, THORAX_TISSUES, thorax_ct_phantom

__all__ = [
    "BRATS_MODALITIES",
    "BRATS_TISSUES",
    "HEAD_NECK_TISSUES",
    "HECKTOR_MODALITIES",
    "PETCT_MODALITIES",
    "PHANTOM_ALIASES",
    "PHANTOM_KINDS",
    "PhantomCase",
    "PhantomKind",
    "THORAX_STRUCTURES",
    "THORAX_TISSUES",
    "WHOLE_HEAD_TISSUES",
    "brats_mri_phantom",
    "get_phantom_kind",
    "head_neck_petct_phantom",
    "phantom_affine",
    "phantom_grid",
    "thorax_ct_phantom",
    "whole_head_mri_phantom",
    "write_phantom_dataset",
]
