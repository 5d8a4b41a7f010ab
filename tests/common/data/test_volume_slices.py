"""Tests of cutting 3D NIfTI volumes into a cache of 2D slices (common/data/volume_slices.py) and of reading such a
folder through the 2D image datasets (common/data/images2d.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data import volume_slices
from common.data.images2d import find_images, prepare_image_dataset
from common.data.volume_slices import SLICING_MANIFEST, SliceOptions, slice_volumes

SPACING = (0.7, 0.8, 3.0)


def write_volume(path: Path, data: np.ndarray, spacing=SPACING) -> Path:
    """A NIfTI with a flipped, shifted affine (the slices keep only the voxel sizes)."""
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [40.0, -20.0, 7.5]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def volume(seed: int, shape=(12, 10, 6)) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, size=shape).astype(np.int16)


@pytest.fixture
def volumes(tmp_path: Path) -> Path:
    for index in range(2):
        write_volume(tmp_path / "volumes" / f"case{index}.nii.gz", volume(index))
    return tmp_path / "volumes"


def cut(folder: Path, cache: Path, **keys) -> list[dict]:
    options = SliceOptions.from_config({"slice_axis": 2, **keys})
    return slice_volumes(find_images(folder), cache, options, folder)


@pytest.mark.parametrize("axis, count, spacing", [(2, 6, (0.7, 0.8)), (0, 12, (0.8, 3.0)), (-2, 10, (0.7, 3.0))])
def test_every_slice_has_the_volume_values_and_in_plane_spacing(volumes, tmp_path, axis, count, spacing):
    entries = cut(volumes, tmp_path / "cache", slice_axis=axis)
    assert len(entries) == 2 * count
    for entry in entries:
        data = volume(int(entry["volume_id"][-1]))
        image = nib.load(entry["image"])
        assert image.ndim == 2 and image.get_data_dtype() == np.int16
        np.testing.assert_array_equal(np.asanyarray(image.dataobj), data.take(entry["slice_index"], axis=axis))
        np.testing.assert_allclose(image.header.get_zooms(), spacing, rtol=1e-6)
        assert entry["case_id"] == f"{entry['volume_id']}_{entry['slice_index']:03d}"


def test_range_step_and_foreground_choose_the_slices(tmp_path):
    data = np.full((8, 8, 7), -1000.0, dtype=np.float32)
    data[2:6, 2:6, 1:6] = 40.0  # 16 of 64 pixels of slices 1..5 are body
    data[3, 3, 6] = 40.0  # one pixel: below any useful share
    write_volume(tmp_path / "in" / "body.nii", data)
    indices = [e["slice_index"] for e in cut(tmp_path / "in", tmp_path / "a", slice_range=[1, None], slice_step=2)]
    assert indices == [1, 3, 5]
    kept = cut(tmp_path / "in", tmp_path / "b", min_foreground=0.2, foreground_threshold=-500)
    assert [e["slice_index"] for e in kept] == [1, 2, 3, 4, 5]
    kept = cut(tmp_path / "in", tmp_path / "c", slice_range=[-3, None], min_foreground=0.01)  # above the minimum
    assert [e["slice_index"] for e in kept] == [4, 5, 6]


def test_cache_is_reused_and_cut_again_when_inputs_or_options_change(volumes, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = cut(volumes, cache)
    manifest = json.loads((cache / SLICING_MANIFEST).read_text())
    assert manifest["options"]["axis"] == 2 and len(manifest["inputs"]) == 2

    real_cut = volume_slices._cut
    calls = []
    monkeypatch.setattr(volume_slices, "_cut", lambda *args: calls.append(1) or real_cut(*args))
    assert cut(volumes, cache) == first and not calls  # same inputs and options: nothing cut
    assert len(cut(volumes, cache, slice_step=3)) == 4 and len(calls) == 1  # slices 0 and 3 of each volume
    write_volume(volumes / "case1.nii.gz", volume(5, shape=(12, 10, 4)))
    entries = cut(volumes, cache, slice_step=3)
    assert len(calls) == 2 and [e["slice_index"] for e in entries if e["volume_id"] == "case1"] == [0, 3]
    assert sorted(p.name for p in (cache / "images").iterdir()) == sorted(Path(e["image"]).name for e in entries)


def test_image_dataset_of_volumes_splits_by_volume_and_skips_the_phantom_folder(volumes, tmp_path):
    slicing = {"slice_axis": 2, "slice_cache_dir": str(tmp_path / "cache")}
    split = prepare_image_dataset(volumes, val_fraction=0.3, slicing=slicing)
    assert len(split["train"]) == len(split["val"]) == 6
    assert {e["volume_id"] for e in split["train"]}.isdisjoint({e["volume_id"] for e in split["val"]})
    phantom = {"dir": str(tmp_path / "phantoms"), "kind": "axial_ct", "n": 2, "size": 16, "seed": 0}
    split = prepare_image_dataset(tmp_path / "phantoms", phantom, val_fraction=0.0, slicing=slicing)
    assert len(split["train"]) == 2  # 2D phantoms, read as they are


@pytest.mark.parametrize(
    "keys, words",
    [
        ({"slice_axis": 3}, ["'slice_axis'", "got 3"]),
        ({"slice_axis": 1.0}, ["'slice_axis'", "got 1.0"]),
        ({"slice_range": [1]}, ["'slice_range'", "[start, stop]", "got [1]"]),
        ({"slice_step": 0}, ["'slice_step'", ">= 1", "got 0"]),
        ({"min_foreground": 1.5}, ["'min_foreground'", "[0, 1]", "got 1.5"]),
        ({"foreground_threshold": "air"}, ["'foreground_threshold'", "got 'air'"]),
    ],
)
def test_bad_options_name_the_config_key(keys, words):
    with pytest.raises(ValueError) as error:
        SliceOptions.from_config({"slice_axis": 2, **keys})
    assert all(word in str(error.value) for word in words), str(error.value)


@pytest.mark.parametrize(
    "shape, axis, words",
    [
        ((12, 10), 2, ["'slice_axis' = 2", "expects a 3D volume", "2D image of shape (12, 10)"]),
        ((12, 10, 1), 0, ["'slice_axis' = 0", "would be (10, 1)"]),
        ((12, 10, 6, 3), 2, ["'slice_axis' = 2", "found a 4D image", "(12, 10, 6, 3)"]),
    ],
)
def test_volumes_that_cannot_be_cut_name_the_file_and_key(tmp_path, shape, axis, words):
    path = write_volume(tmp_path / "in" / "odd.nii.gz", np.zeros(shape, dtype=np.float32))
    with pytest.raises(ValueError) as error:
        cut(tmp_path / "in", tmp_path / "cache", slice_axis=axis)
    assert str(path) in str(error.value) and all(w in str(error.value) for w in words), str(error.value)
    assert not (tmp_path / "cache").exists()  # nothing half-written


def test_trailing_singleton_axis_is_a_3d_volume(tmp_path):
    write_volume(tmp_path / "in" / "v.nii.gz", np.ones((6, 5, 4, 1), dtype=np.float32))
    assert len(cut(tmp_path / "in", tmp_path / "cache")) == 4


def test_no_slice_left_png_and_cache_folder_errors(volumes, tmp_path):
    with pytest.raises(ValueError, match=r"no slice left of 2 volume\(s\).*slice_range = \[10, 20\].*at least one"):
        cut(volumes, tmp_path / "cache", slice_range=[10, 20])
    assert not (tmp_path / "cache").exists()
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"x\.png'.*'slice_axis' = 2 expects a 3D volume.*found a 2D image \(PNG\)"):
        cut(tmp_path / "png", tmp_path / "cache")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"'slice_cache_dir': expected a new or empty folder.*holding other files"):
        cut(volumes, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match=r"'slice_cache_dir': expected a folder outside dataset_dir"):
        cut(volumes, volumes / "cache")
    with pytest.raises(ValueError, match=r"'slice_cache_dir': expected a folder for the slices"):
        prepare_image_dataset(volumes, slicing={"slice_axis": 2, "slice_cache_dir": None})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match=r"broken\.nii\.gz': cannot be read as a NIfTI volume"):
        cut(tmp_path / "bad", tmp_path / "cache")
