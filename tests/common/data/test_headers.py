"""Tests of common.data.headers' shared path: reading a case's headers by role and comparing grids (shape, spacing,
orientation, origin); the per-kind checks are tested with their case finders (test_layouts, test_prepare_ct,
test_petct)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data.headers import check_same_grid, read_case_headers
from common.io import atomic_write_nifti

SHAPE = (6, 5, 4)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def volume(path: Path, shape: tuple[int, ...] = SHAPE, affine: np.ndarray = AFFINE, channels: int = 1) -> str:
    atomic_write_nifti(np.zeros((channels, *shape), np.float32), affine, path)
    return str(path)


def test_read_case_headers_gives_shape_and_affine_per_role(tmp_path: Path) -> None:
    files = [("CT", volume(tmp_path / "ct.nii.gz")), ("PET", volume(tmp_path / "pet.nii.gz", shape=(3, 3, 2)))]
    (ct_shape, ct_affine), (pet_shape, _) = read_case_headers("c", files)
    assert ct_shape == SHAPE and pet_shape == (3, 3, 2)
    np.testing.assert_allclose(ct_affine, AFFINE)


def test_read_case_headers_names_the_role_of_a_4d_file(tmp_path: Path) -> None:
    files = [("CT", volume(tmp_path / "ct.nii.gz")), ("PET", volume(tmp_path / "pet.nii.gz", channels=2))]
    with pytest.raises(ValueError, match=r"case 'c': PET '.*pet.nii.gz' must be a 3D volume, found \(6, 5, 4, 2\)"):
        read_case_headers("c", files)


def test_same_grid_accepts_a_case_within_tolerance(tmp_path: Path) -> None:
    nearly = AFFINE.copy()
    nearly[0, 3] = 0.001
    files = [("image", volume(tmp_path / "a.nii.gz")), ("label", volume(tmp_path / "b.nii.gz", affine=nearly))]
    assert check_same_grid("c", files) is None


def test_same_grid_names_both_files_for_a_shape_mismatch(tmp_path: Path) -> None:
    files = [("CT", volume(tmp_path / "ct.nii.gz")), ("mask 'GTV'", volume(tmp_path / "m.nii.gz", shape=(6, 5, 3)))]
    with pytest.raises(ValueError, match=r"mask 'GTV' '.*m.nii.gz' has shape \(6, 5, 3\), but CT '.*ct.nii.gz' has"):
        check_same_grid("c", files)


def test_same_grid_reports_orientation_spacing_and_origin(tmp_path: Path) -> None:
    flipped = np.diag([-2.0, 2.0, 3.0, 1.0])
    files = [("image", volume(tmp_path / "a.nii.gz")), ("label", volume(tmp_path / "b.nii.gz", affine=flipped))]
    with pytest.raises(ValueError, match=r"label '.*b.nii.gz' \(spacing \[2.0, 2.0, 3.0\], orientation LAS.*RAS"):
        check_same_grid("c", files)
