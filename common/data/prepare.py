"""Dataset preparation the bundle configs call: phantoms on first use, case discovery, checks and splits."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch.distributed as dist

from common.data.datalist import datalist_content
from common.data.headers import check_case_headers, check_ct_case_headers, check_petct_headers, nifti_header
from common.data.layouts import find_cases
from common.data.petct import PetCtSettings, find_petct_cases
from common.data.splits import split_by_patient, split_cases

__all__ = [
    "field_of_view_mm",
    "training_pixdim",
    "prepare_ct_dataset",
    "ensure_phantom_dataset",
    "prepare_dataset",
    "prepare_petct_dataset",
]

logger = logging.getLogger(__name__)


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
            :func:`common.data.prepare.ensure_phantom_dataset`).
        val_fraction: share of cases held out (the paper keeps 5 % for testing), at least one when there are two.
        seed: seed of the split.
        check_headers: check that every mask lies on its CT's grid.

    Returns:
        ``{"train": [...], "val": [...]}`` lists of cases ``{"case_id", "image", "masks"}``.
    """
    from common.data.ct_cases import find_ct_cases

    root = Path(dataset_dir)
    ensure_phantom_dataset(root, phantom)
    cases = find_ct_cases(root)
    if check_headers:
        for case in cases:
            check_ct_case_headers(case)
    train, val = split_cases(cases, val_fraction, seed)
    logger.info(f"dataset '{root}': {len(train)} training and {len(val)} held-out cases")
    return {"train": train, "val": val}


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _needs_phantoms(dataset_dir: Path, phantom: dict | None) -> bool:
    if not phantom or Path(phantom["dir"]).resolve() != dataset_dir.resolve():
        return False
    return not dataset_dir.exists() or not any(dataset_dir.iterdir())


def _write_phantoms(phantom: dict) -> None:
    from common.data.phantoms.kinds import write_phantom_dataset
    from common.data.phantoms.mammography import PLANAR_PHANTOMS

    options = {k: v for k, v in phantom.items() if k not in ("dir", "kind")}
    logger.info(f"dataset_dir '{phantom['dir']}' is empty: writing {options.get('n', 8)} '{phantom['kind']}' phantoms")
    folder = Path(phantom["dir"])
    if folder.exists():  # an empty folder: the writer wants to create it itself, atomically
        folder.rmdir()
    if phantom["kind"] in PLANAR_PHANTOMS:
        PLANAR_PHANTOMS[phantom["kind"]](folder, **options)
    else:
        write_phantom_dataset(phantom["kind"], folder, **options)


def ensure_phantom_dataset(dataset_dir: str | Path, phantom: dict | None) -> None:
    """Write the bundle's phantom dataset when ``dataset_dir`` is its (missing or empty) phantom folder.

    Only rank 0 writes under ``torchrun``; every rank waits for it. Any other folder is left alone (a missing or
    empty user folder is reported by the case finder that runs next).
    """
    root = Path(dataset_dir)
    if _is_main_process() and _needs_phantoms(root, phantom):
        _write_phantoms(phantom)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def prepare_dataset(
    dataset_dir: str,
    modalities: Sequence[str],
    phantom: dict | None = None,
    layout: str = "auto",
    val_fraction: float = 0.1,
    seed: int = 0,
    check_headers: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Find, check and split the cases of ``dataset_dir``; write the phantom dataset first when it is the default.

    Args:
        dataset_dir: the ``dataset_dir`` config value.
        modalities: modality names (one image channel each).
        phantom: the bundle's phantom settings ``{"dir", "kind", "n", "shape", "spacing", "seed"}``. When
            ``dataset_dir`` is ``phantom["dir"]`` and that folder is missing or empty, the phantom dataset is written
            there first (by rank 0 only under ``torchrun``) and the fact is logged. Any other missing or empty
            folder is an error.
        layout: folder layout, see :func:`find_cases`.
        val_fraction: share of cases held out for validation when the datalist has no ``validation`` section.
        seed: seed of the train/validation split.
        check_headers: run :func:`check_case_headers` on every case.

    Returns:
        ``{"train": [...], "val": [...]}`` lists of cases.
    """
    root = Path(dataset_dir)
    ensure_phantom_dataset(root, phantom)
    train = find_cases(root, modalities, layout)
    # only a datalist layout reads dataset.json: another layout may sit next to a foreign or non-JSON one
    has_validation = (
        layout in ("auto", "datalist")
        and (root / "dataset.json").is_file()
        and "validation" in datalist_content(root / "dataset.json")
    )
    if has_validation:
        val = find_cases(root, modalities, "datalist", section="validation")
    else:
        train, val = split_cases(train, val_fraction, seed)
    if check_headers:
        for case in train + val:
            check_case_headers(case)
    logger.info(f"dataset '{root}': {len(train)} training and {len(val)} validation cases")
    return {"train": train, "val": val}


def prepare_petct_dataset(
    dataset_dir: str,
    phantom: dict | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    patient_pattern: str | None = None,
    layout: str = "auto",
    settings: PetCtSettings | None = None,
    check_headers: bool = True,
) -> dict[str, list[Mapping[str, Any]]]:
    """Find, check and split the PET-CT cases of ``dataset_dir``; write the phantom dataset first when it is the
    default.

    Args:
        dataset_dir: the ``dataset_dir`` config value.
        phantom: the bundle's phantom settings ``{"dir", "kind", "n", "size" or "shape", "seed"}``. When
            ``dataset_dir`` is ``phantom["dir"]`` and that folder is missing or empty, the phantom dataset is written
            there first (by rank 0 only under ``torchrun``) and the fact is logged. Any other missing or empty
            folder is an error.
        fractions: (train, val, test) shares of the patients, see :func:`split_by_patient`.
        seed: seed of the split.
        patient_pattern: regular expression giving the patient id of a case id, see :func:`split_by_patient`.
        layout: folder layout, see :func:`find_petct_cases`.
        settings: preprocessing options; their ``min_overlap`` is used by the header checks.
        check_headers: run :func:`check_petct_headers` on every case (headers only, no voxel is read).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` lists of cases.

    Raises:
        FileNotFoundError, ValueError: see :func:`find_petct_cases`, :func:`check_petct_headers` and
            :func:`split_by_patient`.
    """
    root = Path(dataset_dir)
    ensure_phantom_dataset(root, phantom)
    cases = find_petct_cases(root, layout)
    if check_headers:
        min_overlap = (settings or PetCtSettings()).min_overlap
        for case in cases:
            check_petct_headers(case, min_overlap)
    splits = split_by_patient(cases, fractions, seed, patient_pattern)
    logger.info(
        f"PET-CT dataset '{root}': {', '.join(f'{len(v)} {k}' for k, v in splits.items())} case(s) "
        f"(split by patient, seed {seed})"
    )
    return splits
