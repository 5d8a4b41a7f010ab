"""Tests of the 2D phantoms of the swin_ddpm bundle and of the 2D image datasets that read them."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.data.images2d import find_images, prepare_image_dataset
from common.data.phantoms.slices import axial_ct_slice, cardiac_mri_slice, chest_radiograph_drr, write_slice_phantoms


def test_chest_radiograph_is_8bit_with_dense_mediastinum_and_dark_lungs():
    image = chest_radiograph_drr(32, np.random.default_rng(0))
    assert image.shape == (32, 32) and image.dtype == np.uint8
    middle = image[12:20, 14:18].mean()  # spine and heart
    lungs = np.concatenate([image[10:20, 6:10], image[10:20, 22:26]]).mean()
    assert middle > lungs + 20


def test_cardiac_slice_has_bright_blood_inside_darker_myocardium():
    image = cardiac_mri_slice(64, np.random.default_rng(1), spacing_mm=4.0)
    assert image.shape == (64, 64) and np.isfinite(image).all() and image.min() >= 0
    assert image.max() > 700 and np.percentile(image, 5) < 100  # blood pools bright, background dark


def test_axial_ct_slice_is_in_hu():
    image, spacing = axial_ct_slice(32, np.random.default_rng(2))
    assert image.shape == (32, 32) and spacing == (350 / 32, 350 / 32)
    assert image.min() >= -1024 and image.max() > 100 and (image < -900).mean() > 0.1  # air around the body


def test_writing_is_seeded_and_readable(tmp_path):
    for kind, reader in (("chest_xray", lambda p: np.asarray(Image.open(p))), ("axial_ct", nib.load)):
        one = write_slice_phantoms(kind, tmp_path / f"{kind}_a", n=2, size=16, seed=3)
        two = write_slice_phantoms(kind, tmp_path / f"{kind}_b", n=2, size=16, seed=3)
        content = json.loads((one / "dataset.json").read_text())
        assert [e["case_id"] for e in content["training"]] == [f"{kind}_0000", f"{kind}_0001"]
        for entry in content["training"]:
            a, b = reader(one / entry["image"]), reader(two / entry["image"])
            a, b = (np.asarray(x.get_fdata()) if hasattr(x, "get_fdata") else x for x in (a, b))
            np.testing.assert_array_equal(a, b)
    cases = find_images(tmp_path / "axial_ct_a")
    assert [c["case_id"] for c in cases] == ["axial_ct_0000", "axial_ct_0001"]


def test_default_folder_gets_phantoms_and_other_folders_errors(tmp_path):
    phantom = {"dir": str(tmp_path / "default"), "kind": "cardiac_mri", "n": 3, "size": 16, "seed": 0}
    split = prepare_image_dataset(tmp_path / "default", phantom=phantom, val_fraction=0.3)
    assert len(split["train"]) == 2 and len(split["val"]) == 1
    with pytest.raises(FileNotFoundError, match=r"'dataset_dir'.*missing"):
        prepare_image_dataset(tmp_path / "missing", phantom=phantom)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"'dataset_dir': no images"):
        find_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="phantom kind"):
        write_slice_phantoms("pelvis", tmp_path / "x")
    with pytest.raises(FileExistsError, match="not empty"):
        write_slice_phantoms("cardiac_mri", tmp_path / "default")
