"""NIfTI header checks: images and masks of a case share grid, spacing and orientation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.data.layouts import NIFTI_SUFFIXES

__all__ = ["check_ct_case_headers", "nifti_header", "check_case_headers", "world_bounding_box", "check_petct_headers"]


def check_ct_case_headers(case: dict[str, Any], rtol: float = 1e-3, atol: float = 1e-2) -> None:
    """Every structure mask of ``case`` must lie on the CT's grid (same shape and affine).

    Raises:
        ValueError: naming the mask file, with both shapes or affines.
    """
    shape, affine = nifti_header(case["image"])
    for name, path in sorted(case.get("masks", {}).items()):
        mask_shape, mask_affine = nifti_header(path)
        if mask_shape != shape:
            raise ValueError(
                f"case '{case['case_id']}': mask '{name}' ({path}) has shape {mask_shape}, the CT ({case['image']}) "
                f"has {shape}; masks must be on the CT grid"
            )
        if not np.allclose(mask_affine, affine, rtol=rtol, atol=atol):
            raise ValueError(
                f"case '{case['case_id']}': mask '{name}' ({path}) has affine\n{mask_affine.round(3)}\nbut the CT "
                f"({case['image']}) has\n{affine.round(3)}; spacing or origin differ"
            )


def nifti_header(path: str) -> tuple[tuple[int, ...], np.ndarray]:
    """(3D shape, affine) of a NIfTI file from its header, with clear errors for a missing, non-NIfTI or bad file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"file '{path}' listed in the dataset does not exist")
    if not path.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"'{path}': expected a NIfTI file (.nii or .nii.gz)")
    try:
        image = nib.load(path)
    except Exception as e:  # nibabel raises several types for damaged files
        raise ValueError(f"cannot read NIfTI header of '{path}': {e}") from e
    shape = tuple(image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape, image.affine


def check_case_headers(case: dict[str, Any], rtol: float = 1e-3, atol: float = 1e-2) -> None:
    """Check, from the NIfTI headers only, that every file of ``case`` has the same 3D grid.

    Raises:
        ValueError: a file is not a readable 3D NIfTI, or shapes / spacing / orientation differ between the files of
            the case (the message names both files and what each has).
    """
    paths = [*case["image"], case["label"]]
    reference_path = case["image"][0]
    reference_shape, reference_affine = nifti_header(reference_path)
    if len(reference_shape) != 3:
        raise ValueError(f"'{reference_path}': expected a 3D volume, found shape {reference_shape}")
    for path in paths[1:]:
        shape, affine = nifti_header(path)
        if shape != reference_shape:
            raise ValueError(
                f"case '{case['case_id']}': shape {shape} of '{path}' does not match shape {reference_shape} of "
                f"'{reference_path}'"
            )
        if not np.allclose(affine, reference_affine, rtol=rtol, atol=atol):
            spacing, reference_spacing = (
                np.linalg.norm(a[:3, :3], axis=0).round(4) for a in (affine, reference_affine)
            )
            raise ValueError(
                f"case '{case['case_id']}': voxel grid of '{path}' (spacing {spacing.tolist()}, affine "
                f"{affine.round(3).tolist()}) does not match '{reference_path}' (spacing {reference_spacing.tolist()}, "
                f"affine {reference_affine.round(3).tolist()})"
            )


_ROLES = {"ct": "CT", "pet": "PET", "label": "mask"}


# ------------------------------------------------------------------------------------------------ header-level checks


def world_bounding_box(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """Axis-aligned world-space box (mm) of a voxel grid, voxel edges included: ``[[x0, y0, z0], [x1, y1, z1]]``."""
    edges = [(-0.5, n - 0.5) for n in shape[:3]]
    corners = np.array(np.meshgrid(*edges, indexing="ij")).reshape(3, -1)
    world = np.asarray(affine, np.float64)[:3, :3] @ corners + np.asarray(affine, np.float64)[:3, 3:4]
    return np.stack([world.min(axis=1), world.max(axis=1)])


def _intersection_volume(a: np.ndarray, b: np.ndarray) -> float:
    sides = np.minimum(a[1], b[1]) - np.maximum(a[0], b[0])
    return float(np.prod(sides)) if np.all(sides > 0) else 0.0


def _describe_box(box: np.ndarray) -> str:
    return " x ".join(f"[{lo:.1f}, {hi:.1f}]" for lo, hi in zip(box[0], box[1])) + " mm"


def check_petct_headers(case: Mapping[str, str], min_overlap: float = 0.5) -> None:
    """Check, from the NIfTI headers only, that the files of a case are readable 3D volumes that overlap in space.

    The world-space bounding boxes (from affines and shapes, i.e. aligned by the images' origins) of the PET and the
    mask must intersect the CT box, and the PET box must cover at least ``min_overlap`` of the CT box volume.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: unreadable header, not a 3D volume, fields of view that do not overlap or overlap too little.
    """
    boxes = {}
    for role in ("ct", "pet", "label"):
        shape, affine = nifti_header(case[role])
        if len(shape) != 3:
            raise ValueError(
                f"case '{case['case_id']}': {_ROLES[role]} '{case[role]}' must be a 3D volume, found {shape}"
            )
        boxes[role] = world_bounding_box(shape, affine)
    for role in ("pet", "label"):
        if _intersection_volume(boxes["ct"], boxes[role]) == 0.0:
            raise ValueError(
                f"case '{case['case_id']}': CT '{case['ct']}' (world box {_describe_box(boxes['ct'])}) and "
                f"{_ROLES[role]} '{case[role]}' (world box {_describe_box(boxes[role])}) do not overlap after "
                "alignment by their affines; check the origins and orientations in the NIfTI headers"
            )
    covered = _intersection_volume(boxes["ct"], boxes["pet"]) / float(np.prod(boxes["ct"][1] - boxes["ct"][0]))
    if covered < min_overlap:
        raise ValueError(
            f"case '{case['case_id']}': PET '{case['pet']}' covers {covered:.0%} of the field of view of CT "
            f"'{case['ct']}' after alignment by their affines; expected at least {min_overlap:.0%} (setting "
            "min_overlap): check the origins in the NIfTI headers"
        )
