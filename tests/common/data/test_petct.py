"""Tests of common.data.petct (with its crop, augmentation and split): PET-CT case discovery (both layouts, every
error branch), per-case validation and resampling by the affines, intensity windows, tumour-slice selection, the
smart crop, the slice dataset, augmentation, the split by patient and ``prepare_petct_dataset``.

The synthetic cases are built in world coordinates: a CT of 40 x 40 x 16 voxels at 3 mm in LPS-like orientation, a PET
of 20 x 20 x 8 voxels at 6 mm (RAS) with another origin, and a mask with a tumour sphere on the CT grid; the PET has a
hot sphere at the tumour's world position.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import common.data.prepare as prepare_module
from common.data.headers import check_petct_headers, world_bounding_box
from common.data.petct import PairedSliceDataset, PetCtSettings, find_petct_cases, load_petct_case, tumour_slices
from common.data.prepare import prepare_petct_dataset
from common.data.splits import split_by_patient
from common.io import atomic_write_nifti
from common.transforms.augmentation import petct_augmentation
from common.transforms.crop import SmartCrop, SmartCropd

CT_SHAPE = (40, 40, 16)
CT_AFFINE = np.array([[-3.0, 0, 0, 58.5], [0, -3.0, 0, 58.5], [0, 0, 3.0, -22.5], [0, 0, 0, 1]])
PET_SHAPE = (20, 20, 8)
PET_AFFINE = np.array([[6.0, 0, 0, -54.0], [0, 6.0, 0, -60.0], [0, 0, 6.0, -18.0], [0, 0, 0, 1]])
BODY_CENTRE, BODY_RADIUS = np.array([10.0, 5.0]), 45.0
TUMOUR_CENTRE, TUMOUR_RADIUS, PET_HOT_RADIUS = np.array([20.0, -15.0, 3.0]), 9.0, 12.0


# ---------------------------------------------------------------------------------------------------------- helpers


def world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the voxel centres of a grid, shape (*shape, 3)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def body(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[..., :2] - BODY_CENTRE, axis=-1) < BODY_RADIUS


def sphere(points: np.ndarray, radius: float) -> np.ndarray:
    return np.linalg.norm(points - TUMOUR_CENTRE, axis=-1) < radius


def save(path: Path, array: np.ndarray, affine: np.ndarray, dtype: type = np.float32) -> str:
    atomic_write_nifti(np.asarray(array)[None], affine, path, dtype=dtype, overwrite=True)
    return str(path)


def write_case(
    root: Path,
    case_id: str,
    tumour: bool = True,
    pet_affine: np.ndarray = PET_AFFINE,
    edit: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> dict[str, str]:
    """Write a synthetic HECKTOR-layout case under ``root`` and return its case dict; ``edit`` changes the arrays."""
    ct_points, pet_points = world(CT_SHAPE, CT_AFFINE), world(PET_SHAPE, pet_affine)
    arrays = {
        "ct": np.where(body(ct_points), 40.0, -1000.0),
        "pet": np.where(sphere(pet_points, PET_HOT_RADIUS), 8.0, np.where(body(pet_points), 1.0, 0.0)),
        "label": (sphere(ct_points, TUMOUR_RADIUS) & tumour).astype(np.uint8),
    }
    if edit is not None:
        edit(arrays)
    return {
        "case_id": case_id,
        "ct": save(root / "imagesTr" / f"{case_id}__CT.nii.gz", arrays["ct"], CT_AFFINE),
        "pet": save(root / "imagesTr" / f"{case_id}__PT.nii.gz", arrays["pet"], pet_affine),
        "label": save(root / "labelsTr" / f"{case_id}.nii.gz", arrays["label"], CT_AFFINE, arrays["label"].dtype.type),
    }


def touch(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def hecktor_names(*ids: str) -> list[str]:
    return [n for i in ids for n in (f"imagesTr/{i}__CT.nii.gz", f"imagesTr/{i}__PT.nii.gz", f"labelsTr/{i}.nii.gz")]


def write_datalist(root: Path, content: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(content))
    return root


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return world(mask.shape, affine)[mask].mean(axis=0)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One synthetic case loaded with the default settings (shared: loading is the slow part)."""
    case = write_case(tmp_path_factory.mktemp("loaded"), "HN-001")
    return load_petct_case(case)


# --------------------------------------------------------------------------------------------------------- settings


def test_settings_defaults_and_lists_from_configs() -> None:
    settings = PetCtSettings(pixdim=[1, 1, 2], roi_size=[64, 32], allowed_mask_labels=[2, 0, 1])
    assert settings.pixdim == (1.0, 1.0, 2.0) and settings.roi_size == (64, 32)
    assert settings.allowed_mask_labels == (0, 1, 2)
    assert PetCtSettings().body_threshold == pytest.approx(-0.5)
    assert PetCtSettings(ct_window=(-1000, 0), body_threshold_hu=-500).body_threshold == pytest.approx(0.0)
    hash(settings)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"pixdim": (2, 2)}, "pixdim must be 3 positive"),
        ({"pixdim": (2, 0, 2)}, "pixdim must be 3 positive"),
        ({"roi_size": (128,)}, "roi_size must be 2 positive"),
        ({"ct_window": (1000, -1000)}, r"ct_window must be \(low, high\)"),
        ({"pet_window": (5, 5)}, r"pet_window must be \(low, high\)"),
        ({"pet_max_range": (200, 0.5)}, r"pet_max_range must be \(low, high\)"),
        ({"allowed_mask_labels": (1, 2)}, "must hold 0"),
        ({"min_overlap": 1.5}, "min_overlap must be in"),
        ({"min_tumour_voxels": 0}, "min_tumour_voxels must be >= 1"),
    ],
)
def test_settings_reject(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PetCtSettings(**options)


# -------------------------------------------------------------------------------------------------- case discovery


def test_hecktor_layout_pairs_by_id_not_sort_order(tmp_path: Path) -> None:
    # sorted, the PET files would pair CHUM-10 with CHUM-2's CT: the ids differ in length
    touch(tmp_path, *hecktor_names("CHUM-10", "CHUM-2", "MDA-7"))
    (tmp_path / "labelsTr" / "MDA-7.nii.gz").rename(tmp_path / "labelsTr" / "MDA-7.nii")
    touch(tmp_path, "imagesTr/README.txt")
    cases = find_petct_cases(tmp_path, layout="hecktor")
    assert [c["case_id"] for c in cases] == ["CHUM-10", "CHUM-2", "MDA-7"]
    for case in cases:
        i = case["case_id"]
        assert case["ct"] == str(tmp_path / "imagesTr" / f"{i}__CT.nii.gz")
        assert case["pet"] == str(tmp_path / "imagesTr" / f"{i}__PT.nii.gz")
        assert case["label"].startswith(str(tmp_path / "labelsTr" / f"{i}.nii"))
    assert find_petct_cases(tmp_path) == cases


def test_datalist_layout_with_ct_pet_keys(tmp_path: Path) -> None:
    touch(tmp_path, "a_ct.nii.gz", "a_pet.nii.gz", "masks/a.nii.gz")
    write_datalist(tmp_path, {"training": [{"ct": "a_ct.nii.gz", "pet": "a_pet.nii.gz", "label": "masks/a.nii.gz"}]})
    assert find_petct_cases(tmp_path) == [
        {
            "case_id": "a",
            "ct": str(tmp_path / "a_ct.nii.gz"),
            "pet": str(tmp_path / "a_pet.nii.gz"),
            "label": str(tmp_path / "masks/a.nii.gz"),
        }
    ]


@pytest.mark.parametrize("modality", [None, {"0": "CT", "1": "PT"}, {"0": "PT", "1": "CT"}, {"0": "pet", "1": "ct"}])
def test_datalist_layout_with_image_lists_respects_modality(tmp_path: Path, modality: dict | None) -> None:
    touch(tmp_path, *hecktor_names("x1", "x2"))
    pet_first = modality is not None and modality["0"].upper() != "CT"
    entries = [
        {
            "image": [f"imagesTr/{i}__{m}.nii.gz" for m in (("PT", "CT") if pet_first else ("CT", "PT"))],
            "label": f"labelsTr/{i}.nii.gz",
        }
        for i in ("x2", "x1")
    ]
    write_datalist(tmp_path, {"training": entries, **({"modality": modality} if modality else {})})
    cases = find_petct_cases(tmp_path, layout="auto")
    assert [c["case_id"] for c in cases] == ["x2", "x1"]
    assert all(c["ct"].endswith(f"{c['case_id']}__CT.nii.gz") and c["pet"].endswith("__PT.nii.gz") for c in cases)


def test_auto_layout_ignores_a_dataset_json_without_training_list(tmp_path: Path) -> None:
    touch(tmp_path, *hecktor_names("a"))
    write_datalist(tmp_path, {"channel_names": {"0": "CT", "1": "PT"}})
    assert [c["case_id"] for c in find_petct_cases(tmp_path)] == ["a"]


def _missing_folder(root: Path) -> Path:
    return root / "absent"


def _empty_folder(root: Path) -> Path:
    root.mkdir()
    return root


def _unrelated_files(root: Path) -> Path:
    return touch(root, "notes.txt")


def _no_labels_folder(root: Path) -> Path:
    return touch(root, "imagesTr/a__CT.nii.gz", "imagesTr/a__PT.nii.gz")


def _images_not_hecktor_named(root: Path) -> Path:
    return touch(root, "imagesTr/a_0000.nii.gz", "labelsTr/a.nii.gz")


def _ct_without_pet(root: Path) -> Path:
    touch(root, *hecktor_names("a", "b", "c"))
    (root / "imagesTr" / "b__PT.nii.gz").unlink()
    (root / "imagesTr" / "c__PT.nii.gz").unlink()
    return root


def _pet_without_ct(root: Path) -> Path:
    touch(root, *hecktor_names("a", "b"))
    (root / "imagesTr" / "b__CT.nii.gz").unlink()
    return root


def _images_without_label(root: Path) -> Path:
    touch(root, *hecktor_names("a", "b"))
    (root / "labelsTr" / "b.nii.gz").unlink()
    return root


def _label_without_images(root: Path) -> Path:
    return touch(root, *hecktor_names("a"), "labelsTr/z.nii.gz")


def _two_files_for_one_id(root: Path) -> Path:
    return touch(root, *hecktor_names("a"), "imagesTr/a__CT.nii")


def _datalist_missing_files(root: Path) -> Path:
    touch(root, "a__CT.nii.gz")
    return write_datalist(root, {"training": [{"image": ["a__CT.nii.gz", "a__PT.nii.gz"], "label": "a.nii.gz"}]})


def _datalist_duplicate_ids(root: Path) -> Path:
    touch(root, *hecktor_names("a"))
    entry = {"ct": "imagesTr/a__CT.nii.gz", "pet": "imagesTr/a__PT.nii.gz", "label": "labelsTr/a.nii.gz"}
    return write_datalist(root, {"training": [entry, entry]})


def _datalist_pairs_other_cases(root: Path) -> Path:
    touch(root, *hecktor_names("a", "b"))
    entry = {"image": ["imagesTr/a__CT.nii.gz", "imagesTr/b__PT.nii.gz"], "label": "labelsTr/a.nii.gz"}
    return write_datalist(root, {"training": [entry]})


def _datalist_one_image(root: Path) -> Path:
    return write_datalist(root, {"training": [{"image": ["a__CT.nii.gz"], "label": "a.nii.gz"}]})


def _datalist_modality_without_pet(root: Path) -> Path:
    return write_datalist(root, {"modality": {"0": "CT", "1": "MR"}, "training": []})


def _datalist_not_json(root: Path) -> Path:
    root.mkdir()
    (root / "dataset.json").write_text('{"training": [')
    return root


def _datalist_empty(root: Path) -> Path:
    return write_datalist(root, {"training": []})


FIND_ERRORS: dict[str, tuple[Callable[[Path], Path], type[Exception], list[str]]] = {
    "missing folder": (_missing_folder, FileNotFoundError, ["config key 'dataset_dir'", "absent", "does not exist"]),
    "empty folder": (_empty_folder, ValueError, ["config key 'dataset_dir'", "no PET-CT cases", "an empty folder"]),
    "unrelated files": (_unrelated_files, ValueError, ["no PET-CT cases", "<id>__CT.nii.gz", "notes.txt"]),
    "imagesTr without labelsTr": (_no_labels_folder, ValueError, ["has imagesTr/ but no labelsTr/"]),
    "images not named <id>__CT": (_images_not_hecktor_named, ValueError, ["labels without images: ['a']"]),
    "CT without PET": (_ct_without_pet, ValueError, ["do not pair up by case id", "CT without PET: ['b', 'c']"]),
    "PET without CT": (_pet_without_ct, ValueError, ["PET without CT: ['b']"]),
    "images without a label": (_images_without_label, ValueError, ["images without a label: ['b']"]),
    "label without images": (_label_without_images, ValueError, ["labels without images: ['z']"]),
    "two files for one id": (_two_files_for_one_id, ValueError, ["case 'a' has two files", "a__CT.nii"]),
    "listed file missing": (_datalist_missing_files, FileNotFoundError, ["dataset.json", "2 listed file(s)", "a__PT"]),
    "duplicate ids": (_datalist_duplicate_ids, ValueError, ["more than once", "['a']"]),
    "datalist pairs two cases": (_datalist_pairs_other_cases, ValueError, ["case 'a'", "named for case 'b'"]),
    "image list of one": (_datalist_one_image, ValueError, ["training[0]", "'image': [2 paths"]),
    "modality without PET": (_datalist_modality_without_pet, ValueError, ["'modality'", "'MR'"]),
    "unreadable dataset.json": (_datalist_not_json, ValueError, ["dataset.json", "not readable JSON"]),
    "empty datalist": (_datalist_empty, ValueError, ["no PET-CT cases"]),
}


@pytest.mark.parametrize("name", list(FIND_ERRORS))
def test_find_petct_cases_errors(tmp_path: Path, name: str) -> None:
    build, error, fragments = FIND_ERRORS[name]
    root = build(tmp_path / "data")
    with pytest.raises(error) as info:
        find_petct_cases(root)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_find_petct_cases_names_the_config_key_and_rejects_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config key 'petct_dir'.*absent"):
        find_petct_cases(tmp_path / "absent", config_key="petct_dir")
    with pytest.raises(ValueError, match=r"layout must be one of .*got 'brats'"):
        find_petct_cases(tmp_path, layout="brats")


# ------------------------------------------------------------------------------------------ loading and resampling


def test_world_bounding_box_includes_voxel_edges() -> None:
    box = world_bounding_box(CT_SHAPE, CT_AFFINE)
    np.testing.assert_allclose(box, [[-60.0, -60.0, -24.0], [60.0, 60.0, 24.0]])


def test_load_resamples_onto_one_ras_grid_of_pixdim(loaded: dict) -> None:
    affine = loaded["affine"]
    np.testing.assert_allclose(np.diag(affine)[:3], [2.0, 2.0, 2.0])  # RAS: positive diagonal
    np.testing.assert_allclose(affine[:3, :3], np.diag([2.0, 2.0, 2.0]))
    assert loaded["ct"].shape == loaded["pet"].shape == loaded["mask"].shape == (60, 60, 24)
    assert all(loaded[k].dtype == np.float32 for k in ("ct", "pet", "mask"))
    box = world_bounding_box(loaded["ct"].shape, affine)
    np.testing.assert_allclose(box, world_bounding_box(CT_SHAPE, CT_AFFINE), atol=1.0)


def test_load_aligns_pet_and_mask_by_world_coordinates(loaded: dict) -> None:
    tumour = loaded["mask"] > 0
    hot_pet = loaded["pet"] > 0.0  # SUV above 5: the hot sphere
    np.testing.assert_allclose(world_centroid(tumour, loaded["affine"]), TUMOUR_CENTRE, atol=1.5)
    np.testing.assert_allclose(world_centroid(hot_pet, loaded["affine"]), TUMOUR_CENTRE, atol=3.0)
    # the RAS reorientation kept left and right: the body centre is at x = +10 mm, y = +5 mm
    in_body = loaded["ct"] > -0.5
    np.testing.assert_allclose(world_centroid(in_body, loaded["affine"])[:2], BODY_CENTRE, atol=1.5)


def test_load_maps_windows_and_mask_to_minus_one_plus_one(tmp_path: Path) -> None:
    # a 2 mm RAS grid: no interpolation changes the blocks' values
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ct_values = [-3000.0, -1000.0, -500.0, 0.0, 500.0, 1000.0, 4000.0]
    pet_values = [-1.0, 0.0, 2.5, 5.0, 10.0, 50.0, 7.5]
    ct = np.repeat(np.array(ct_values), 4)[:, None, None] * np.ones((1, 8, 6))
    pet = np.repeat(np.array(pet_values), 4)[:, None, None] * np.ones((1, 8, 6))
    label = np.zeros(ct.shape, np.uint8)
    label[4:8, 2:4, 1:3], label[8:12, 2:4, 1:3] = 1, 2
    case = {
        "case_id": "w",
        "ct": save(tmp_path / "ct.nii.gz", ct, affine),
        "pet": save(tmp_path / "pet.nii.gz", pet, affine),
        "label": save(tmp_path / "label.nii.gz", label, affine, np.uint8),
    }
    out = load_petct_case(case, PetCtSettings(allowed_mask_labels=(0, 1, 2)))
    centres = np.arange(7) * 4 + 1  # voxels well inside each block
    np.testing.assert_allclose(out["ct"][centres, 4, 3], [-1.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(out["pet"][centres, 4, 3], [-1.0, -1.0, -0.5, 0.0, 1.0, 1.0, 0.5], atol=1e-5)
    assert set(np.unique(out["mask"])) == {-1.0, 1.0}
    assert (out["mask"] > 0).sum() == (label > 0).sum()  # labels 1 and 2 are both tumour


def test_load_keeps_custom_pixdim(tmp_path: Path) -> None:
    out = load_petct_case(write_case(tmp_path, "p"), PetCtSettings(pixdim=(3.0, 4.0, 6.0)))
    np.testing.assert_allclose(np.linalg.norm(out["affine"][:3, :3], axis=0), [3.0, 4.0, 6.0])
    assert out["ct"].shape == (40, 30, 8)


def _nan_ct(arrays: dict) -> None:
    arrays["ct"][0, 0, :3] = np.nan


def _inf_pet(arrays: dict) -> None:
    arrays["pet"][1, 1, 1] = np.inf


def _label_three(arrays: dict) -> None:
    arrays["label"][0, 0, 0] = 3


def _pet_in_becquerel(arrays: dict) -> None:
    arrays["pet"] *= 25000.0 / 8.0


def _pet_normalised(arrays: dict) -> None:
    arrays["pet"] /= 8.0


def _pet_empty(arrays: dict) -> None:
    arrays["pet"][:] = 0.0


LOAD_ERRORS: dict[str, tuple[Callable[[dict], None], str, list[str]]] = {
    "NaN CT voxels": (_nan_ct, "ct", ["3 NaN/inf voxel(s)"]),
    "inf PET voxel": (_inf_pet, "pet", ["1 NaN/inf voxel(s)"]),
    "mask label outside the allowed ones": (
        _label_three,
        "label",
        ["found labels [0, 1, 3]", "allowed labels are [0, 1]", "allowed_mask_labels"],
    ),
    "PET in Bq/mL": (
        _pet_in_becquerel,
        "pet",
        ["maximum 25000 is above 200", "Bq/mL", "expected SUV", "pet_max_range"],
    ),
    "PET normalised to [0, 1]": (_pet_normalised, "pet", ["span exactly [0, 1]", "already normalised", "expected SUV"]),
    "PET all zero": (_pet_empty, "pet", ["maximum 0 is below 0.5", "expected SUV"]),
}


@pytest.mark.parametrize("name", list(LOAD_ERRORS))
def test_load_petct_case_errors(tmp_path: Path, name: str) -> None:
    edit, role, fragments = LOAD_ERRORS[name]
    case = write_case(tmp_path, "bad", edit=edit)
    with pytest.raises(ValueError) as info:
        load_petct_case(case)
    for fragment in [case[role], *fragments]:
        assert fragment in str(info.value)


def test_pet_unit_check_can_be_disabled(tmp_path: Path) -> None:
    case = write_case(tmp_path, "bq", edit=_pet_in_becquerel)
    out = load_petct_case(case, PetCtSettings(pet_max_range=None, pet_window=(0, 5000)))
    assert out["pet"].max() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "shift, fragments",
    [
        ((0.0, 0.0, 1000.0), ["do not overlap after alignment", "CT '", "PET '"]),
        ((80.0, 0.0, 0.0), ["covers 28% of the field of view", "expected at least 50%", "min_overlap"]),
    ],
)
def test_fields_of_view_must_overlap(tmp_path: Path, shift: tuple[float, ...], fragments: list[str]) -> None:
    pet_affine = PET_AFFINE.copy()
    pet_affine[:3, 3] += shift
    case = write_case(tmp_path, "far", pet_affine=pet_affine)
    with pytest.raises(ValueError) as info:
        check_petct_headers(case)
    for fragment in ["case 'far'", case["pet"], *fragments]:
        assert fragment in str(info.value)
    if shift[2] == 0.0:
        check_petct_headers(case, min_overlap=0.25)


def test_mask_must_overlap_the_ct(tmp_path: Path) -> None:
    case = write_case(tmp_path, "m")
    save(
        Path(case["label"]),
        np.ones((4, 4, 4), np.uint8),
        np.diag([1.0, 1.0, 1.0, 1.0]) + np.eye(4, k=3) * 500,
        np.uint8,
    )
    with pytest.raises(ValueError, match=r"mask '.*labelsTr/m.nii.gz'.*do not overlap after alignment"):
        load_petct_case(case)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    case = write_case(tmp_path, "c")
    ct = Path(case["ct"])
    raw = gzip.decompress(ct.read_bytes())
    ct.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # intact header, truncated voxels
    with pytest.raises(ValueError, match=r"cannot read .*c__CT.nii.gz.*corrupt"):
        load_petct_case(case)
    Path(case["pet"]).write_bytes(b"not a NIfTI file")
    with pytest.raises(ValueError, match=r"cannot read NIfTI header of '.*c__PT.nii.gz'"):
        load_petct_case(case)
    Path(case["label"]).unlink()
    case["pet"] = write_case(tmp_path, "d")["pet"]
    with pytest.raises(FileNotFoundError, match=r"labelsTr/c.nii.gz"):
        load_petct_case(case)


def test_four_dimensional_file_is_rejected(tmp_path: Path) -> None:
    case = write_case(tmp_path, "f")
    atomic_write_nifti(np.zeros((2, *PET_SHAPE), np.float32), PET_AFFINE, case["pet"], overwrite=True)
    with pytest.raises(ValueError, match=r"PET '.*f__PT.nii.gz' must be a 3D volume, found \(20, 20, 8, 2\)"):
        load_petct_case(case)


# ------------------------------------------------------------------------------------------------- slice selection


def test_tumour_slices_picks_exactly_the_slices_with_enough_tumour() -> None:
    mask = -np.ones((6, 6, 8), np.float32)
    mask[1, 1, 2] = 1.0
    mask[2:4, 2, 5] = 1.0
    mask[0, 0, 7] = 1.0
    mask[0:3, 0, 7] = 1.0
    assert tumour_slices(mask) == [2, 5, 7]
    assert tumour_slices(torch.from_numpy(mask), min_voxels=2) == [5, 7]
    assert tumour_slices(mask, min_voxels=3) == [7]
    assert tumour_slices(-np.ones((4, 4, 3))) == []


def test_tumour_slices_of_a_loaded_case_cover_the_tumour_in_world_z(loaded: dict) -> None:
    slices = tumour_slices(loaded["mask"])
    z = loaded["affine"][2, 3] + 2.0 * np.array(slices)
    assert slices == list(range(slices[0], slices[-1] + 1))
    assert z.min() >= TUMOUR_CENTRE[2] - TUMOUR_RADIUS - 2 and z.max() <= TUMOUR_CENTRE[2] + TUMOUR_RADIUS + 2
    assert z.max() - z.min() >= 2 * TUMOUR_RADIUS - 6


# ------------------------------------------------------------------------------------------------------ smart crop


def disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2).float()[None]


def scaled(foreground: torch.Tensor) -> torch.Tensor:
    return foreground * 2.0 - 1.0


def test_smart_crop_centres_on_the_centre_of_mass_not_the_geometric_centre() -> None:
    ct = scaled(disk((100, 100), (30, 60), 8))
    out = SmartCropd(["ct"], "ct", roi_size=(32, 32))({"ct": ct})["ct"]
    assert out.shape == (1, 32, 32)
    inside = torch.nonzero(out[0] > 0).float().mean(dim=0)
    torch.testing.assert_close(inside, torch.tensor([15.5, 15.5]), atol=1.0, rtol=0)
    torch.testing.assert_close(out, ct[:, 15:47, 45:77])


def test_smart_crop_stays_inside_the_image() -> None:
    ct = scaled(disk((100, 80), (3, 77), 5))
    out = SmartCropd(["ct"], "ct", roi_size=(32, 32))({"ct": ct})["ct"]
    torch.testing.assert_close(out, ct[:, 0:32, 48:80])


def test_smart_crop_pads_with_minus_one_where_the_image_is_smaller() -> None:
    ct = torch.full((1, 20, 50), 0.5)
    out = SmartCropd(["ct"], "ct", roi_size=(32, 32))({"ct": ct})["ct"]
    assert out.shape == (1, 32, 32)
    assert torch.all(out[:, :6] == -1.0) and torch.all(out[:, 26:] == -1.0)
    torch.testing.assert_close(out[:, 6:26], ct[:, :, 9:41])


def test_smart_crop_falls_back_to_the_geometric_centre() -> None:
    ct = -torch.ones(1, 64, 40)
    ct[0, 0, 0] = -0.9  # below the -0.5 body threshold
    starts = SmartCrop((16, 16)).window_start(ct[0] > -0.5)
    assert starts == [24, 12]


def test_smart_crop_keeps_the_tumour_inside_and_cuts_all_keys_alike() -> None:
    body_ct = scaled(disk((200, 200), (100, 100), 95))
    tumour = scaled(disk((200, 200), (20, 180), 6))
    data = {"ct": body_ct, "pet": body_ct.clone() * 0.5, "mask": tumour}
    out = SmartCropd(["ct", "pet", "mask"], "ct", roi_size=(64, 64), keep_key="mask")(data)
    assert int((out["mask"] > 0).sum()) == int((tumour > 0).sum())
    without_keep = SmartCropd(["mask"], "ct", roi_size=(64, 64))({"ct": body_ct, "mask": tumour})
    assert int((without_keep["mask"] > 0).sum()) == 0  # the body's centre of mass alone would lose it
    torch.testing.assert_close(out["pet"], out["ct"] * 0.5)


def test_smart_crop_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="roi_size must be positive"):
        SmartCrop((0, 16))
    with pytest.raises(ValueError, match="foreground must have 2 spatial axes"):
        SmartCrop((16, 16)).window_start(torch.ones(4, 4, 4))


# ---------------------------------------------------------------------------------------------------------- dataset


SMALL = PetCtSettings(roi_size=(24, 24))


def test_dataset_items(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cases = [write_case(tmp_path, i) for i in ("HN-002", "HN-001")]
    caplog.set_level(logging.INFO, logger="common")
    dataset = PairedSliceDataset(data=cases, settings=SMALL, cache_dtype=torch.float16)
    expected = tumour_slices(load_petct_case(cases[0], SMALL)["mask"])
    assert len(dataset) == 2 * len(expected)
    assert [dataset[i]["slice_index"] for i in range(len(expected))] == expected
    assert {dataset[i]["case_id"] for i in range(len(dataset))} == {"HN-001", "HN-002"}
    item = dataset[0]
    for key in ("ct", "pet", "mask"):
        assert item[key].shape == (1, 24, 24) and item[key].dtype == torch.float32
        assert float(item[key].min()) >= -1.0 and float(item[key].max()) <= 1.0
    assert set(torch.unique(item["mask"]).tolist()) == {-1.0, 1.0}
    item["ct"].fill_(7.0)
    assert float(dataset[0]["ct"].max()) <= 1.0  # a fresh copy every time
    assert any(
        f"{len(dataset)} tumour slice(s)" in r.getMessage() and "2 of 2 case(s)" in r.getMessage()
        for r in caplog.records
    )


def test_dataset_crop_keeps_every_tumour_pixel(tmp_path: Path) -> None:
    case = write_case(tmp_path, "HN-003")
    volume = load_petct_case(case, SMALL)
    dataset = PairedSliceDataset([case], SMALL)
    for item in dataset:
        assert int((item["mask"] > 0).sum()) == int((volume["mask"][:, :, item["slice_index"]] > 0).sum())


def test_dataset_applies_the_transform(tmp_path: Path) -> None:
    dataset = PairedSliceDataset([write_case(tmp_path, "t")], SMALL, transform=lambda d: {**d, "seen": True})
    assert dataset[0]["seen"] is True


def test_dataset_skips_cases_without_tumour_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cases = [write_case(tmp_path, "empty", tumour=False), write_case(tmp_path, "full")]
    with caplog.at_level(logging.WARNING, logger="common"):
        dataset = PairedSliceDataset(cases, SMALL)
    assert {item["case_id"] for item in dataset} == {"full"}
    assert any("case 'empty'" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def test_dataset_without_any_tumour_is_an_error(tmp_path: Path) -> None:
    cases = [write_case(tmp_path, i, tumour=False) for i in ("e1", "e2")]
    with pytest.raises(ValueError, match=r"none of the 2 case\(s\).*min_tumour_voxels.*\['e1', 'e2'\]"):
        PairedSliceDataset(cases, SMALL)
    with pytest.raises(ValueError, match="at least one PET-CT case"):
        PairedSliceDataset([], SMALL)


# ----------------------------------------------------------------------------------------------------- augmentation


def item_2d() -> dict[str, torch.Tensor]:
    ct = scaled(disk((32, 32), (12, 18), 10))
    return {"ct": ct, "pet": ct * 0.5, "mask": scaled(disk((32, 32), (10, 20), 4)), "case_id": "a", "slice_index": 3}


def augmented(seed: int, **options: float) -> dict:
    augment = petct_augmentation(prob=1.0, **options)
    augment.set_random_state(seed=seed)
    return augment(item_2d())


def test_augmentation_is_reproducible_and_mask_stays_binary() -> None:
    first, again, other = augmented(5), augmented(5), augmented(6)
    for key in ("ct", "pet", "mask"):
        torch.testing.assert_close(torch.as_tensor(first[key]), torch.as_tensor(again[key]))
    assert not torch.equal(torch.as_tensor(first["ct"]), torch.as_tensor(other["ct"]))
    for out in (first, other, augmented(7, rotate_degrees=30.0, jitter_pixels=6.0)):
        assert set(torch.unique(torch.as_tensor(out["mask"])).tolist()) <= {-1.0, 1.0}
        assert out["ct"].shape == (1, 32, 32) and out["case_id"] == "a"


def test_augmentation_flips_the_left_right_axis() -> None:
    augment = petct_augmentation(rotate_degrees=0.0, jitter_pixels=0.0, flip_prob=1.0, prob=0.0)
    item = item_2d()
    out = augment(item)
    for key in ("ct", "pet", "mask"):
        torch.testing.assert_close(torch.as_tensor(out[key]), item[key].flip(1))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"rotate_degrees": -1.0}, "rotate_degrees and jitter_pixels must be >= 0"),
        ({"jitter_pixels": -2.0}, "rotate_degrees and jitter_pixels must be >= 0"),
        ({"flip_prob": 1.5}, r"flip_prob must be in \[0, 1\]"),
        ({"prob": -0.1}, r"prob must be in \[0, 1\]"),
    ],
)
def test_augmentation_rejects(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        petct_augmentation(**options)


# -------------------------------------------------------------------------------------------------------- splitting


def id_cases(*ids: str) -> list[dict]:
    return [{"case_id": i, "ct": f"{i}__CT.nii.gz", "pet": f"{i}__PT.nii.gz", "label": f"{i}.nii.gz"} for i in ids]


def ids_of(split: dict) -> dict[str, list[str]]:
    return {name: [c["case_id"] for c in cases] for name, cases in split.items()}


@pytest.mark.parametrize(
    "n, sizes", [(10, (8, 1, 1)), (3, (1, 1, 1)), (20, (16, 2, 2)), (2, (2, 0, 0)), (1, (1, 0, 0))]
)
def test_split_sizes_and_disjoint(n: int, sizes: tuple[int, int, int]) -> None:
    cases = id_cases(*(f"c{i:02d}" for i in range(n)))
    split = ids_of(split_by_patient(cases))
    assert tuple(len(split[k]) for k in ("train", "val", "test")) == sizes
    assert sorted(sum(split.values(), [])) == [c["case_id"] for c in cases]


def test_split_is_seeded_and_independent_of_input_order() -> None:
    cases = id_cases(*(f"c{i:02d}" for i in range(12)))
    first = ids_of(split_by_patient(cases, seed=4))
    assert ids_of(split_by_patient(list(reversed(cases)), seed=4)) == first
    assert any(ids_of(split_by_patient(cases, seed=s)) != first for s in range(5, 9))


def test_split_keeps_each_patient_in_one_split() -> None:
    ids = [f"P{p:02d}_scan{s}" for p in range(10) for s in range(1 + p % 3)]
    split = split_by_patient(id_cases(*ids), fractions=(0.6, 0.2, 0.2), seed=1, patient_pattern=r"^(P\d+)_")
    patients = {name: {c["case_id"].split("_")[0] for c in cases} for name, cases in split.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert [len(p) for p in patients.values()] == [6, 2, 2]
    assert sorted(c["case_id"] for cases in split.values() for c in cases) == sorted(ids)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"fractions": (0.8, 0.2)}, "fractions must be 3 non-negative numbers"),
        ({"fractions": (0.8, 0.3, -0.1)}, "fractions must be 3 non-negative numbers"),
        ({"fractions": (0.5, 0.2, 0.2)}, r"summing to 1, got \[0.5, 0.2, 0.2\]"),
        ({"patient_pattern": r"^P\d+"}, "must have a group"),
        ({"patient_pattern": r"^(P\d+)_"}, "does not match case id 'other'"),
    ],
)
def test_split_rejects(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_by_patient(id_cases("P01_a", "other", "P02_a"), **options)


# -------------------------------------------------------------------------------------------------- prepare_dataset


def test_prepare_finds_checks_and_splits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    touch(tmp_path, *hecktor_names(*(f"c{i}" for i in range(10))))
    caplog.set_level(logging.INFO, logger="common")
    split = prepare_petct_dataset(str(tmp_path), check_headers=False)
    assert [len(split[k]) for k in ("train", "val", "test")] == [8, 1, 1]
    assert any("8 train, 1 val, 1 test" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="cannot read NIfTI header"):
        prepare_petct_dataset(str(tmp_path))


def test_prepare_writes_phantoms_only_into_the_phantom_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = []

    def fake_writer(phantom: dict) -> None:
        written.append(phantom["kind"])
        for i in range(3):
            write_case(Path(phantom["dir"]), f"HN_phantom_{i:03d}")

    monkeypatch.setattr(prepare_module, "_write_phantoms", fake_writer)
    phantom = {"dir": str(tmp_path / "phantoms"), "kind": "paired_petct", "n": 3, "size": 32, "seed": 0}
    with pytest.raises(FileNotFoundError, match="config key 'dataset_dir'.*user.*does not exist"):
        prepare_petct_dataset(str(tmp_path / "user"), phantom=phantom)
    assert not written and not (tmp_path / "phantoms").exists()
    split = prepare_petct_dataset(phantom["dir"], phantom=phantom)
    assert written == ["paired_petct"] and sum(len(v) for v in split.values()) == 3
    prepare_petct_dataset(phantom["dir"], phantom=phantom)
    assert written == ["paired_petct"]  # existing phantoms are kept


def test_head_neck_phantom_end_to_end(tmp_path: Path) -> None:
    from common.data.phantoms.kinds import PHANTOM_KINDS

    if "head_neck_petct" not in PHANTOM_KINDS:
        pytest.skip("phantom kind 'head_neck_petct' is not registered yet")
    phantom = {"dir": str(tmp_path / "phantoms"), "kind": "paired_petct", "n": 3, "size": 32, "seed": 0}
    split = prepare_petct_dataset(phantom["dir"], phantom=phantom)
    cases = [c for cases in split.values() for c in cases]
    assert sorted(c["case_id"] for c in cases) == [f"HN_phantom_{i:03d}" for i in range(3)]
    dataset = PairedSliceDataset(cases, PetCtSettings(roi_size=(32, 32)), transform=petct_augmentation())
    assert len(dataset) > 0 and dataset[0]["ct"].shape == (1, 32, 32)
