"""2D phantoms of the guidance bundle: mammograms (RSNA stand-in), pathology patches, shifted set, CT slices."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import label

from common.data.phantoms.mammography import (
    DENSITY_CATEGORIES,
    mammogram_phantom,
    patch_lesion_kinds,
    pathology_patch,
    write_mammography_dataset,
)
from common.data.phantoms.thorax_slices import write_thorax_slice_dataset
from common.data.planar import find_patches, prepare_planar_dataset, reference_cases


@pytest.mark.parametrize("view", ["CC", "MLO"])
@pytest.mark.parametrize("lesion", ["none", "mass", "calcification"])
def test_mammogram_views_lesions_and_labels(view: str, lesion: str) -> None:
    case = mammogram_phantom(64, np.random.default_rng(3), lesion=lesion, view=view)
    assert case.image.shape == case.label.shape == (64, 64) and case.image.dtype == np.float32
    assert case.image.min() >= 0.0 and case.image.max() <= 1.0
    labels = set(np.unique(case.label).tolist())
    assert {0, 1} <= labels and ((2 in labels) == (view == "MLO"))  # pectoral muscle only in MLO
    assert (3 in labels) == (lesion == "mass") and (4 in labels) == (lesion == "calcification")
    assert case.cancer == int(lesion != "none") and case.view == view and case.density in DENSITY_CATEGORIES
    assert np.percentile(case.image[case.label == 0], 99) < 0.1  # air around the breast (blur spills one pixel)
    if lesion == "mass":  # the mass is brighter than the breast tissue around it
        rows, cols = np.nonzero(case.label == 3)
        window = (slice(max(int(rows.mean()) - 8, 0), int(rows.mean()) + 8), slice(max(int(cols.mean()) - 8, 0), None))
        around = case.label[window] == 1
        assert case.image[case.label == 3].mean() > case.image[window][around].mean()


def test_thickness_falls_towards_the_skin_and_the_shifted_set_is_denser() -> None:
    cases = [mammogram_phantom(64, np.random.default_rng(k), view="CC") for k in range(8)]
    for case in cases:
        breast = case.label == 1
        cols = np.nonzero(breast)[1]
        near, far = breast & (np.arange(64) < cols.max() * 0.3), breast & (np.arange(64) > cols.max() * 0.9)
        assert case.image[near].mean() > case.image[far].mean()
    shifted = [mammogram_phantom(64, np.random.default_rng(k), shifted=True).density for k in range(40)]
    normal = [mammogram_phantom(64, np.random.default_rng(k)).density for k in range(40)]
    assert sum(d in "cd" for d in shifted) > sum(d in "cd" for d in normal)


def test_patch_stream_crops_a_mass() -> None:
    image, mask = pathology_patch(64, 16, np.random.default_rng(0))
    assert image.shape == mask.shape == (16, 16) and mask.any() and mask[6:10, 6:10].any()
    with pytest.raises(ValueError, match="'patch_size'"):
        pathology_patch(64, 80, np.random.default_rng(0))
    with pytest.raises(ValueError, match="'phantom_size'"):
        mammogram_phantom(16, np.random.default_rng(0))
    with pytest.raises(ValueError, match="lesion: expected one of \\['mass', 'calcification'\\], got 'cyst'"):
        pathology_patch(64, 16, np.random.default_rng(0), lesion="cyst")


@pytest.mark.parametrize("size, patch_size", [(64, 16), (128, 32)])
def test_patch_stream_crops_a_calcification_cluster(size: int, patch_size: int) -> None:
    for index in range(5):
        image, mask = pathology_patch(size, patch_size, np.random.default_rng((0, 1, index)), lesion="calcification")
        regions, count = label(mask)
        assert image.shape == mask.shape == (patch_size, patch_size) and count >= 2  # several specks, not one blob
        assert mask.sum() <= 12 and image[mask > 0].mean() > np.median(image)  # small and bright


def test_patch_kinds_are_spread_by_the_share() -> None:
    assert patch_lesion_kinds(6, 0.5) == ["mass", "calcification"] * 3
    assert patch_lesion_kinds(8, 0.25).count("calcification") == 2 and patch_lesion_kinds(3, 0.0) == ["mass"] * 3
    assert patch_lesion_kinds(2, 1.0) == ["calcification"] * 2
    with pytest.raises(ValueError, match="config key 'calcification_patch_fraction': expected a share in \\[0, 1\\]"):
        patch_lesion_kinds(2, 1.5)


def test_dataset_writer_layout_flags_and_planar_readers(tmp_path: Path) -> None:
    folder = tmp_path / "mammo"
    settings = {"dir": str(folder), "kind": "mammography", "n": 20, "size": 32, "seed": 0, "patches": 2}
    split = prepare_planar_dataset(str(folder), phantom=settings | {"cancer_fraction": 0.1, "patch_size": 8})
    content = json.loads((folder / "dataset.json").read_text())
    assert content["numTraining"] == 20 and len(split["train"]) + len(split["val"]) == 20
    assert [e["cancer"] for e in content["training"]].count(1) == 2  # 10 % positives
    assert {e["lesion"] for e in content["training"] if e["cancer"]} == {"mass", "calcification"}
    references = reference_cases(str(folder), limit=3)
    assert len(references) == 3 and all(r["cancer"] == 0 for r in references)
    patches = find_patches(folder)
    assert [Path(p["image"]).name for p in patches] == ["patch_000.nii.gz", "patch_001.nii.gz"]
    assert [p["lesion"] for p in patches] == [e["lesion"] for e in content["patches"]] == ["mass", "calcification"]
    assert all(nib.load(p["label"]).get_fdata().any() for p in patches)  # every patch has its lesion mask
    with pytest.raises(FileExistsError, match="not empty"):
        write_mammography_dataset(folder, n=1, size=32)
    with pytest.raises(FileNotFoundError, match="config key 'patch_dir'.*does not exist"):
        find_patches(tmp_path / "none")


def test_thorax_slices_for_the_lung_ct_overlay(tmp_path: Path) -> None:
    folder = write_thorax_slice_dataset(tmp_path / "lung", n=2, size=32, cancer_fraction=0.1, patches=1, patch_size=8)
    content = json.loads((folder / "dataset.json").read_text())
    assert [e["cancer"] for e in content["training"]] == [1, 0]
    assert find_patches(folder)[0]["label"].endswith("patch_000_mask.nii.gz")
    assert content["patches"][0]["lesion"] == "tumour"
    with pytest.raises(ValueError, match="config key 'phantom_calcification_patch_fraction': the thorax CT slice"):
        write_thorax_slice_dataset(tmp_path / "lung2", n=1, size=32, patches=1, calcification_patch_fraction=0.5)
