"""NIfTI header checks of a case's files, from the headers alone (no voxel is read), so a bad dataset fails in seconds.

One code path reads the headers of a case's files, each named by its role (:func:`read_case_headers`: an existing,
readable 3D NIfTI), and one compares them with the case's first file (:func:`check_same_grid`: shape, spacing,
orientation and origin). Multi-modal MRI cases (:func:`check_case_headers`) and CT cases with structure masks
(:func:`check_ct_case_headers`) are that comparison; PET-CT cases (:func:`check_petct_headers`) are the one
specialisation: PET and CT come on different grids, so their world-space bounding boxes must overlap instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.data.layouts import NIFTI_SUFFIXES

__all__ = [
    "nifti_header",
    "read_case_headers",
    "check_same_grid",
    "check_case_headers",
    "check_ct_case_headers",
    "world_bounding_box",
    "check_petct_headers",
]


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


def read_case_headers(case_id: str, files: Sequence[tuple[str, str]]) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """(3D shape, affine) of each ``(role, path)`` of a case, e.g. ``("CT", "/data/a/ct.nii.gz")``.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file is not a readable NIfTI or not a 3D volume (the case, the role and the file are named).
    """
    headers = []
    for role, path in files:
        shape, affine = nifti_header(path)
        if len(shape) != 3:
            raise ValueError(f"case '{case_id}': {role} '{path}' must be a 3D volume, found {shape}")
        headers.append((shape, affine))
    return headers


def _describe_grid(affine: np.ndarray) -> str:
    spacing = np.linalg.norm(affine[:3, :3], axis=0).round(4).tolist()
    orientation = "".join(nib.aff2axcodes(affine))
    return f"spacing {spacing}, orientation {orientation}, origin {affine[:3, 3].round(3).tolist()}"


def check_same_grid(case_id: str, files: Sequence[tuple[str, str]], rtol: float = 1e-3, atol: float = 1e-2) -> None:
    """Every ``(role, path)`` of ``files`` is a 3D NIfTI on the voxel grid of the first: same shape and affine.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_case_headers`; a shape or affine (spacing, orientation,
            origin) that differs from the first file's (both files and what each has are named).
    """
    headers = read_case_headers(case_id, files)
    (reference_role, reference_path), (reference_shape, reference_affine) = files[0], headers[0]
    for (role, path), (shape, affine) in zip(files[1:], headers[1:]):
        if shape != reference_shape:
            raise ValueError(
                f"case '{case_id}': {role} '{path}' has shape {shape}, but {reference_role} '{reference_path}' has "
                f"{reference_shape}; the files of a case must share one voxel grid"
            )
        if not np.allclose(affine, reference_affine, rtol=rtol, atol=atol):
            raise ValueError(
                f"case '{case_id}': the voxel grid of {role} '{path}' ({_describe_grid(affine)}) does not match "
                f"{reference_role} '{reference_path}' ({_describe_grid(reference_affine)}): orientation, spacing or "
                "origin differ"
            )


def check_case_headers(case: dict[str, Any], rtol: float = 1e-3, atol: float = 1e-2) -> None:
    """Every image and the label of ``case`` (``{"case_id", "image": [paths], "label"}``) share one 3D grid.

    Raises:
        FileNotFoundError, ValueError: see :func:`check_same_grid`.
    """
    files = [*(("image", path) for path in case["image"]), ("label", case["label"])]
    check_same_grid(case["case_id"], files, rtol, atol)


def check_ct_case_headers(case: dict[str, Any], rtol: float = 1e-3, atol: float = 1e-2) -> None:
    """Every structure mask of ``case`` (``{"case_id", "image": ct path, "masks": {name: path}}``) lies on the CT grid.

    Raises:
        FileNotFoundError, ValueError: see :func:`check_same_grid` (the mask is named by its structure).
    """
    masks = sorted(case.get("masks", {}).items())
    files = [("CT", case["image"]), *((f"mask '{name}'", path) for name, path in masks)]
    check_same_grid(case["case_id"], files, rtol, atol)


_ROLES = {"ct": "CT", "pet": "PET", "label": "mask"}


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
    files = [(_ROLES[role], case[role]) for role in _ROLES]
    headers = read_case_headers(case["case_id"], files)
    boxes = {role: world_bounding_box(shape, affine) for role, (shape, affine) in zip(_ROLES, headers)}
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
