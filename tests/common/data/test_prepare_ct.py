"""Dataset preparation of the latent CT bundle: header checks, the training grid's voxel size, phantoms and split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.data.headers import check_ct_case_headers
from common.data.prepare import field_of_view_mm, prepare_ct_dataset, training_pixdim
from common.io import atomic_write_nifti


def _case(root: Path, name: str, shape=(8, 6, 4), spacing=(2.0, 3.0, 5.0), mask_shape=None, mask_affine=None) -> dict:
    affine = np.diag([*spacing, 1.0])
    image = root / name / "ct.nii.gz"
    mask = root / name / "masks" / "GTV-1.nii.gz"
    atomic_write_nifti(np.full((1, *shape), -1000.0, dtype=np.float32), affine, image)
    atomic_write_nifti(
        np.zeros((1, *(mask_shape or shape)), dtype=np.uint8), affine if mask_affine is None else mask_affine, mask
    )
    return {"case_id": name, "image": str(image), "masks": {"GTV-1": str(mask)}}


def test_field_of_view_follows_the_ras_axes(tmp_path: Path) -> None:
    case = _case(tmp_path, "a")
    np.testing.assert_allclose(field_of_view_mm(case["image"]), [16.0, 18.0, 20.0])
    # axes stored as (z, x, y): the field of view is still reported along x, y, z
    path = tmp_path / "permuted.nii.gz"
    affine = np.array([[0, 2.0, 0, 0], [0, 0, 3.0, 0], [5.0, 0, 0, 0], [0, 0, 0, 1]])
    atomic_write_nifti(np.zeros((1, 4, 8, 6), dtype=np.float32), affine, path)
    np.testing.assert_allclose(field_of_view_mm(str(path)), [16.0, 18.0, 20.0])


def test_training_pixdim_is_the_mean_field_of_view_over_the_grid(tmp_path: Path) -> None:
    cases = [_case(tmp_path, "a"), _case(tmp_path, "b", shape=(8, 6, 8))]
    np.testing.assert_allclose(training_pixdim(cases, [4, 6, 10]), [16 / 4, 18 / 6, (20 + 40) / 2 / 10])
    with pytest.raises(ValueError, match="at least one case"):
        training_pixdim([], [4, 4, 4])


def test_masks_off_the_ct_grid_are_named(tmp_path: Path) -> None:
    check_ct_case_headers(_case(tmp_path, "ok"))
    with pytest.raises(ValueError, match=r"mask 'GTV-1' .* has shape \(8, 6, 3\)"):
        check_ct_case_headers(_case(tmp_path, "shape", mask_shape=(8, 6, 3)))
    with pytest.raises(ValueError, match="spacing or origin differ"):
        check_ct_case_headers(_case(tmp_path, "affine", mask_affine=np.diag([2.0, 3.0, 2.5, 1.0])))
    broken = _case(tmp_path, "corrupt")
    Path(broken["masks"]["GTV-1"]).write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="cannot read NIfTI header"):
        check_ct_case_headers(broken)


def test_prepare_writes_the_phantoms_once_and_splits(tmp_path: Path) -> None:
    phantom = {"dir": str(tmp_path / "ph"), "kind": "thorax_ct", "n": 4, "size": 16, "seed": 0}
    split = prepare_ct_dataset(phantom["dir"], phantom=phantom, val_fraction=0.25, seed=0)
    assert len(split["train"]) == 3 and len(split["val"]) == 1
    assert not {c["case_id"] for c in split["train"]} & {c["case_id"] for c in split["val"]}
    assert len(json.loads((tmp_path / "ph" / "dataset.json").read_text())["training"]) == 4
    again = prepare_ct_dataset(phantom["dir"], phantom=phantom, val_fraction=0.25, seed=0)
    assert again == split  # existing phantoms are read, not rewritten; the split is seeded
    with pytest.raises((FileNotFoundError, ValueError), match="absent"):
        prepare_ct_dataset(str(tmp_path / "absent"), phantom=phantom)
