"""Dataset preparation of the latent CT bundle: find, check and split CT cases with their structure masks.

The bundle reads the layout that ``tools/dicom_to_nifti.py`` writes from NSCLC-Radiomics DICOM and that the
``thorax_ct`` phantoms use: ``<case>/ct.nii.gz`` plus ``<case>/masks/<structure>.nii.gz`` and a ``dataset.json``
(see :func:`common.ct_transforms.find_ct_cases`). Every case is resized to one grid (128^3 in the paper) whatever
its field of view, so the voxel size written into generated volumes is the training set's mean field of view over
that grid (:func:`training_pixdim`), stored with the diffusion weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.data import ensure_phantom_dataset, nifti_header, split_cases

__all__ = ["check_ct_case_headers", "field_of_view_mm", "prepare_ct_dataset", "training_pixdim"]

logger = logging.getLogger(__name__)


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


def field_of_view_mm(path: str) -> np.ndarray:
    """Extent (mm) of a NIfTI image along the RAS axes (x: left-right, y: posterior-anterior, z: inferior-superior)."""
    shape, affine = nifti_header(path)
    orientation = nib.orientations.io_orientation(affine)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    extent = np.zeros(3)
    for axis in range(3):
        extent[int(orientation[axis, 0])] = shape[axis] * spacing[axis]
    return extent


def training_pixdim(cases: Sequence[dict[str, Any]], spatial_size: Sequence[int]) -> list[float]:
    """Mean voxel size (mm, RAS order) of the cases once resized to ``spatial_size``: mean field of view / size."""
    if not cases:
        raise ValueError("training_pixdim needs at least one case")
    extents = np.stack([field_of_view_mm(c["image"]) for c in cases])
    return [float(e) / int(n) for e, n in zip(extents.mean(axis=0), spatial_size)]


def prepare_ct_dataset(
    dataset_dir: str,
    phantom: dict | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    check_headers: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Find, check and split the CT cases of ``dataset_dir``; write the phantoms first when it is the default.

    Args:
        dataset_dir: the ``dataset_dir`` config value.
        phantom: the bundle's phantom settings ``{"dir", "kind", "n", "shape", "spacing", "seed"}`` (see
            :func:`common.data.ensure_phantom_dataset`).
        val_fraction: share of cases held out (the paper keeps 5 % for testing), at least one when there are two.
        seed: seed of the split.
        check_headers: check that every mask lies on its CT's grid.

    Returns:
        ``{"train": [...], "val": [...]}`` lists of cases ``{"case_id", "image", "masks"}``.
    """
    from common.ct_transforms import find_ct_cases

    root = Path(dataset_dir)
    ensure_phantom_dataset(root, phantom)
    cases = find_ct_cases(root)
    if check_headers:
        for case in cases:
            check_ct_case_headers(case)
    train, val = split_cases(cases, val_fraction, seed)
    logger.info(f"dataset '{root}': {len(train)} training and {len(val)} held-out cases")
    return {"train": train, "val": val}
