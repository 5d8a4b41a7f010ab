"""Tests of common.data (layouts, headers, splits, preparation): the three folder layouts, pairing by case id,
every error branch, header checks, the train/validation split, phantom writing in ``prepare_dataset``,
``case_paths`` and ``write_datalist``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.headers import check_case_headers
from common.data.layouts import case_id_from_path, case_paths, find_cases, write_datalist
from common.data.phantoms.kinds import write_phantom_dataset
from common.data.phantoms.mri import BRATS_MODALITIES
from common.data.prepare import prepare_dataset
from common.data.splits import split_cases
from common.io import atomic_write_nifti

SHAPE = (8, 8, 8)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def write_volume(
    path: Path, shape: tuple[int, ...] = SHAPE, affine: np.ndarray = AFFINE, channels: int = 1, value: float = 0.0
) -> str:
    atomic_write_nifti(np.full((channels, *shape), value, np.float32), affine, path, overwrite=True)
    return str(path)


def write_datalist_json(root: Path, content: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(content))


def whole_head(root: Path, n: int = 2, keep_datalist: bool = True) -> Path:
    write_phantom_dataset("whole_head_mri", root, n=n, size=8)
    if not keep_datalist:
        (root / "dataset.json").unlink()
    return root


def brats(root: Path, n: int = 2, keep_datalist: bool = False) -> Path:
    write_phantom_dataset("brats_mri", root, n=n, shape=SHAPE)
    if not keep_datalist:
        (root / "dataset.json").unlink()
    return root


def images_labels(root: Path, image_names: list[str], label_names: list[str]) -> Path:
    for name in image_names:
        write_volume(root / "imagesTr" / name)
    for name in label_names:
        write_volume(root / "labelsTr" / name)
    return root


def simple_case(root: Path, case_id: str = "c0", modalities: int = 1) -> dict:
    images = [write_volume(root / f"{case_id}_{m}.nii.gz") for m in range(modalities)]
    return {"case_id": case_id, "image": images, "label": write_volume(root / f"{case_id}_seg.nii.gz")}


# --------------------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", ["auto", "datalist"])
def test_datalist_layout(tmp_path: Path, layout: str) -> None:
    root = whole_head(tmp_path / "data", n=2)
    cases = find_cases(root, ["t1c"], layout=layout)
    assert cases == [
        {
            "case_id": f"head_00{i}",
            "image": [str(root / f"imagesTr/head_00{i}.nii.gz")],
            "label": str(root / f"labelsTr/head_00{i}.nii.gz"),
        }
        for i in range(2)
    ]


def test_datalist_validation_section(tmp_path: Path) -> None:
    root = tmp_path / "data"
    files = {f"c{i}": [write_volume(root / f"c{i}.nii.gz"), write_volume(root / f"c{i}_seg.nii.gz")] for i in range(4)}
    training = [{"image": f"c{i}.nii.gz", "label": f"c{i}_seg.nii.gz"} for i in range(3)]
    write_datalist_json(
        root, {"training": training, "validation": [{"image": ["c3.nii.gz"], "label": "c3_seg.nii.gz"}]}
    )
    validation = find_cases(root, ["t1"], section="validation")
    assert validation == [{"case_id": "c3", "image": [files["c3"][0]], "label": files["c3"][1]}]
    split = prepare_dataset(str(root), ["t1"], val_fraction=0.5)
    assert [c["case_id"] for c in split["train"]] == ["c0", "c1", "c2"]
    assert split["val"] == validation


def test_datalist_case_id_field_and_seg_suffix(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_volume(root / "a.nii.gz")
    write_volume(root / "a_seg.nii.gz")
    write_datalist_json(
        root,
        {
            "training": [
                {"image": "a.nii.gz", "label": "a_seg.nii.gz"},
                {"image": "a.nii.gz", "label": "a_seg.nii.gz", "case_id": "named"},
            ]
        },
    )
    assert [c["case_id"] for c in find_cases(root, ["t1"])] == ["a", "named"]


@pytest.mark.parametrize("layout", ["auto", "images_labels"])
def test_images_labels_single_modality(tmp_path: Path, layout: str) -> None:
    root = whole_head(tmp_path / "data", n=2, keep_datalist=layout == "images_labels")
    cases = find_cases(root, ["t1c"], layout=layout)
    assert [c["case_id"] for c in cases] == ["head_000", "head_001"]
    for case in cases:
        assert case["image"] == [str(root / "imagesTr" / f"{case['case_id']}.nii.gz")]
        assert case["label"] == str(root / "labelsTr" / f"{case['case_id']}.nii.gz")


def test_images_labels_nnunet_channels_pair_by_id_not_sort_order(tmp_path: Path) -> None:
    ids = ["case1", "case10"]
    image_names = [f"{i}_{c:04d}.nii.gz" for i in ids for c in range(2)]
    root = images_labels(tmp_path / "data", image_names, [f"{i}.nii.gz" for i in ids])
    first_channels = sorted(p.name for p in (root / "imagesTr").glob("*_0000.nii.gz"))
    labels = sorted(p.name for p in (root / "labelsTr").iterdir())
    # sorted file names would pair case10's images with case1's label
    assert [n.split("_")[0] for n in first_channels] != [case_id_from_path(n) for n in labels]
    cases = find_cases(root, ["t1", "t2"])
    assert cases == [
        {
            "case_id": i,
            "image": [str(root / "imagesTr" / f"{i}_0000.nii.gz"), str(root / "imagesTr" / f"{i}_0001.nii.gz")],
            "label": str(root / "labelsTr" / f"{i}.nii.gz"),
        }
        for i in ids
    ]


def test_images_labels_ids_that_end_in_four_digits(tmp_path: Path) -> None:
    """A plain ``<id>.nii.gz`` whose id ends in ``_dddd`` is a case of its own when a label has that id."""
    ids = ["patient_0001", "patient_0002"]
    root = images_labels(tmp_path / "data", [f"{i}.nii.gz" for i in ids], [f"{i}.nii.gz" for i in ids])
    cases = find_cases(root, ["t1"])
    assert [(c["case_id"], c["image"]) for c in cases] == [(i, [str(root / "imagesTr" / f"{i}.nii.gz")]) for i in ids]


@pytest.mark.parametrize("modalities", [BRATS_MODALITIES, ("flair", "t1")])
def test_brats_layout_in_case_folders(tmp_path: Path, modalities: tuple[str, ...]) -> None:
    root = brats(tmp_path / "data", n=2)
    cases = find_cases(root, modalities)
    assert [c["case_id"] for c in cases] == ["BraTS_phantom_00000", "BraTS_phantom_00001"]
    for case in cases:
        folder = root / case["case_id"]
        assert case["image"] == [str(folder / f"{case['case_id']}_{m}.nii.gz") for m in modalities]
        assert case["label"] == str(folder / f"{case['case_id']}_seg.nii.gz")


# ---------------------------------------------------------------------------------------------------- find errors


def _missing_folder(root: Path) -> Path:
    return root / "absent"


def _empty_folder(root: Path) -> Path:
    root.mkdir()
    return root


def _unrelated_files(root: Path) -> Path:
    root.mkdir()
    (root / "notes.txt").write_text("no images here")
    return root


def _images_without_labels_folder(root: Path) -> Path:
    write_volume(root / "imagesTr" / "a.nii.gz")
    return root


def _images_without_labels(root: Path) -> Path:
    return images_labels(root, ["a.nii.gz", "b.nii.gz", "c.nii.gz"], ["a.nii.gz"])


def _labels_without_images(root: Path) -> Path:
    return images_labels(root, ["a.nii.gz"], ["a.nii.gz", "z.nii.gz"])


def _missing_channel_file(root: Path) -> Path:
    return images_labels(root, ["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz"], ["a.nii.gz", "b.nii.gz"])


def _two_files_for_one_channel(root: Path) -> Path:
    return images_labels(root, ["a.nii.gz", "a_0000.nii.gz"], ["a.nii.gz"])


def _brats_missing_modality(root: Path) -> Path:
    brats(root, n=2)
    (root / "BraTS_phantom_00001" / "BraTS_phantom_00001_t2.nii.gz").unlink()
    return root


def _brats_duplicate_ids(root: Path) -> Path:
    for site in ("site_a", "site_b"):
        for name in ("x_t1.nii.gz", "x_seg.nii.gz"):
            write_volume(root / site / name)
    return root


def _datalist_wrong_channel_count(root: Path) -> Path:
    write_datalist_json(root, {"training": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]})
    return root


def _datalist_duplicate_ids(root: Path) -> Path:
    entry = {"image": ["a.nii.gz"], "label": "a_seg.nii.gz"}
    write_datalist_json(root, {"training": [entry, entry]})
    return root


def _datalist_not_json(root: Path) -> Path:
    root.mkdir()
    (root / "dataset.json").write_text('{"training": [')
    return root


def _datalist_section_not_a_list(root: Path) -> Path:
    write_datalist_json(root, {"training": {"image": "a.nii.gz"}})
    return root


def _datalist_entry_without_label(root: Path) -> Path:
    write_datalist_json(root, {"training": [{"image": "a.nii.gz"}]})
    return root


def _datalist_empty(root: Path) -> Path:
    write_datalist_json(root, {"training": []})
    return root


FIND_ERRORS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...], type[Exception], list[str]]] = {
    "missing folder": (_missing_folder, ("t1",), FileNotFoundError, ["config key 'dataset_dir'", "does not exist"]),
    "empty folder": (_empty_folder, ("t1",), ValueError, ["config key 'dataset_dir'", "no usable cases", "empty"]),
    "unrelated files": (_unrelated_files, ("t1",), ValueError, ["no usable cases", "notes.txt"]),
    "imagesTr without labelsTr": (_images_without_labels_folder, ("t1",), ValueError, ["no labelsTr"]),
    "images without labels": (
        _images_without_labels,
        ("t1",),
        ValueError,
        ["do not pair up", "images without a label: ['b', 'c']", "labels without an image: []"],
    ),
    "labels without images": (
        _labels_without_images,
        ("t1",),
        ValueError,
        ["images without a label: []", "labels without an image: ['z']"],
    ),
    "missing channel file": (
        _missing_channel_file,
        ("t1", "t2"),
        ValueError,
        ["case 'b'", "channel files [0]", "expected channels [0, 1]"],
    ),
    "two files for one channel": (_two_files_for_one_channel, ("t1",), ValueError, ["'a'", "two files for channel 0"]),
    "BraTS case missing a modality": (
        _brats_missing_modality,
        BRATS_MODALITIES,
        ValueError,
        ["'BraTS_phantom_00001'", "lacks modality files ['t2']"],
    ),
    "BraTS duplicate ids": (_brats_duplicate_ids, ("t1",), ValueError, ["more than once", "['x']"]),
    "wrong channel count": (
        _datalist_wrong_channel_count,
        ("t1", "t2"),
        ValueError,
        ["case 'a'", "1 image channel file(s)", "expected 2"],
    ),
    "duplicate ids": (_datalist_duplicate_ids, ("t1",), ValueError, ["more than once", "['a']"]),
    "unreadable dataset.json": (_datalist_not_json, ("t1",), ValueError, ["dataset.json", "not readable JSON"]),
    "section not a list": (
        _datalist_section_not_a_list,
        ("t1",),
        ValueError,
        ["expected a list of cases under 'training'"],
    ),
    "entry without label": (_datalist_entry_without_label, ("t1",), ValueError, ["training[0]", "'label'"]),
    "empty datalist": (_datalist_empty, ("t1",), ValueError, ["no usable cases"]),
}


@pytest.mark.parametrize("name", list(FIND_ERRORS))
def test_find_cases_errors(tmp_path: Path, name: str) -> None:
    build, modalities, error, fragments = FIND_ERRORS[name]
    root = build(tmp_path / "data")
    with pytest.raises(error) as info:
        find_cases(root, modalities)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_find_cases_names_the_given_config_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config key 'real_dir'.*absent"):
        find_cases(tmp_path / "absent", ["t1"], config_key="real_dir")


def test_find_cases_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"layout must be one of .*got 'nifti'"):
        find_cases(tmp_path, ["t1"], layout="nifti")


# -------------------------------------------------------------------------------------------------- header checks


def test_check_case_headers_accepts_matching_files_and_trailing_singleton_axis(tmp_path: Path) -> None:
    case = simple_case(tmp_path, modalities=2)
    label = nib.Nifti1Image(np.zeros((*SHAPE, 1), np.uint8), AFFINE)
    nib.save(label, case["label"])
    assert check_case_headers(case) is None


def _shape_mismatch(case: dict) -> None:
    write_volume(Path(case["label"]), shape=(8, 8, 6))


def _spacing_mismatch(case: dict) -> None:
    write_volume(Path(case["image"][1]), affine=np.diag([3.0, 2.0, 2.0, 1.0]))


def _four_dimensional(case: dict) -> None:
    write_volume(Path(case["image"][0]), channels=2)


def _truncated(case: dict) -> None:
    path = Path(case["label"])
    path.write_bytes(path.read_bytes()[:24])


def _not_nifti(case: dict) -> None:
    Path(case["image"][1]).write_bytes(b"this is not a NIfTI file at all")


HEADER_ERRORS: dict[str, tuple[Callable[[dict], None], type[Exception], Callable[[dict], list[str]]]] = {
    "shape mismatch": (
        _shape_mismatch,
        ValueError,
        lambda c: [c["label"], c["image"][0], "(8, 8, 6)", "(8, 8, 8)"],
    ),
    "spacing mismatch": (_spacing_mismatch, ValueError, lambda c: [c["image"][1], c["image"][0], "spacing [3.0"]),
    "4D image": (_four_dimensional, ValueError, lambda c: [c["image"][0], "must be a 3D volume", "(8, 8, 8, 2)"]),
    "truncated header": (_truncated, ValueError, lambda c: [c["label"], "cannot read NIfTI header"]),
    "not a NIfTI file": (_not_nifti, ValueError, lambda c: [c["image"][1], "cannot read NIfTI header"]),
}


@pytest.mark.parametrize("name", list(HEADER_ERRORS))
def test_check_case_headers_errors(tmp_path: Path, name: str) -> None:
    damage, error, fragments = HEADER_ERRORS[name]
    case = simple_case(tmp_path, modalities=2)
    damage(case)
    with pytest.raises(error) as info:
        check_case_headers(case)
    for fragment in fragments(case):
        assert fragment in str(info.value)


def test_check_case_headers_missing_file(tmp_path: Path) -> None:
    case = simple_case(tmp_path)
    Path(case["label"]).unlink()
    with pytest.raises(FileNotFoundError, match="c0_seg.nii.gz"):
        check_case_headers(case)


def test_check_case_headers_wrong_suffix(tmp_path: Path) -> None:
    case = simple_case(tmp_path)
    case["label"] = str(tmp_path / "label.mha")
    Path(case["label"]).write_bytes(b"")
    with pytest.raises(ValueError, match=r"label.mha.*expected a NIfTI file"):
        check_case_headers(case)


# ------------------------------------------------------------------------------------------------------ splitting


def _cases(n: int) -> list[dict]:
    return [{"case_id": f"c{i:02d}", "image": [f"c{i:02d}.nii.gz"], "label": f"c{i:02d}_seg.nii.gz"} for i in range(n)]


@pytest.mark.parametrize(
    "n, val_fraction, n_val",
    [(10, 0.2, 2), (10, 0.0, 0), (3, 0.1, 1), (2, 0.01, 1), (1, 0.5, 0), (20, 0.5, 10)],
)
def test_split_cases_sizes(n: int, val_fraction: float, n_val: int) -> None:
    train, val = split_cases(_cases(n), val_fraction)
    assert len(val) == n_val
    assert sorted(c["case_id"] for c in train + val) == [c["case_id"] for c in _cases(n)]


def test_split_cases_is_deterministic_and_independent_of_input_order() -> None:
    cases = _cases(12)
    first = split_cases(cases, 0.25, seed=3)
    assert split_cases(list(reversed(cases)), 0.25, seed=3) == first
    assert split_cases(cases, 0.25, seed=3) == first
    assert any(split_cases(cases, 0.25, seed=s)[1] != first[1] for s in range(4, 8))


@pytest.mark.parametrize("val_fraction", [-0.1, 1.0])
def test_split_cases_rejects_fraction(val_fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction must be in"):
        split_cases(_cases(4), val_fraction)


# ------------------------------------------------------------------------------------------------ prepare_dataset


def _phantom(folder: Path, n: int = 3) -> dict:
    return {"dir": str(folder), "kind": "whole_head_mri", "n": n, "size": 8, "seed": 0}


@pytest.mark.parametrize("exists", [False, True])
def test_prepare_dataset_writes_phantoms_into_the_default_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, exists: bool
) -> None:
    folder = tmp_path / "phantoms"
    if exists:
        folder.mkdir()
    caplog.set_level(logging.INFO, logger="common.data")
    split = prepare_dataset(str(folder), ["t1c"], phantom=_phantom(folder), val_fraction=0.3)
    assert (folder / "dataset.json").is_file()
    assert sorted(c["case_id"] for c in split["train"] + split["val"]) == ["head_000", "head_001", "head_002"]
    assert len(split["val"]) == 1
    assert any("is empty: writing 3 'whole_head_mri' phantoms" in r.getMessage() for r in caplog.records)


def test_prepare_dataset_keeps_existing_phantoms(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = whole_head(tmp_path / "phantoms", n=2)
    caplog.set_level(logging.INFO, logger="common.data")
    split = prepare_dataset(str(folder), ["t1c"], phantom=_phantom(folder, n=5))
    assert len(split["train"] + split["val"]) == 2
    assert not any("phantoms" in r.getMessage() and "writing" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "exists, error, match",
    [(False, FileNotFoundError, "config key 'dataset_dir'.*does not exist"), (True, ValueError, "no usable cases")],
)
def test_prepare_dataset_user_folder_is_never_filled_with_phantoms(
    tmp_path: Path, exists: bool, error: type[Exception], match: str
) -> None:
    user_dir, phantom_dir = tmp_path / "user", tmp_path / "phantoms"
    if exists:
        user_dir.mkdir()
    with pytest.raises(error, match=match):
        prepare_dataset(str(user_dir), ["t1c"], phantom=_phantom(phantom_dir))
    assert not phantom_dir.exists()
    assert not exists or not any(user_dir.iterdir())


def test_prepare_dataset_without_phantom_settings(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_dataset(str(tmp_path / "phantoms"), ["t1c"])


@pytest.mark.parametrize("layout", ["images_labels", "brats"])
def test_prepare_dataset_ignores_a_foreign_dataset_json_outside_the_datalist_layout(
    tmp_path: Path, layout: str
) -> None:
    root = (
        whole_head(tmp_path / "data", n=2, keep_datalist=False)
        if layout == "images_labels"
        else brats(tmp_path / "data")
    )
    (root / "dataset.json").write_text("written by another tool, not JSON")
    modalities = ["t1c"] if layout == "images_labels" else list(BRATS_MODALITIES)
    split = prepare_dataset(str(root), modalities, layout=layout, val_fraction=0.5)
    assert len(split["train"]) == len(split["val"]) == 1


def test_prepare_dataset_checks_headers(tmp_path: Path) -> None:
    root = whole_head(tmp_path / "data", n=2)
    write_volume(root / "labelsTr" / "head_001.nii.gz", shape=(8, 8, 9))
    assert len(prepare_dataset(str(root), ["t1c"], check_headers=False)["train"]) == 1
    with pytest.raises(ValueError, match=r"head_001.*\(8, 8, 9\)"):
        prepare_dataset(str(root), ["t1c"])


# ---------------------------------------------------------------------------------------- case_paths / write_datalist


@pytest.mark.parametrize(
    "layout, modalities, images, label",
    [
        ("images_labels", ["t1c"], ["imagesTr/x.nii.gz"], "labelsTr/x.nii.gz"),
        ("images_labels", ["t1", "t2"], ["imagesTr/x_0000.nii.gz", "imagesTr/x_0001.nii.gz"], "labelsTr/x.nii.gz"),
        ("brats", ["t1", "flair"], ["x/x_t1.nii.gz", "x/x_flair.nii.gz"], "x/x_seg.nii.gz"),
    ],
)
def test_case_paths(tmp_path: Path, layout: str, modalities: list[str], images: list[str], label: str) -> None:
    assert case_paths(tmp_path, "x", modalities, layout) == ([tmp_path / p for p in images], tmp_path / label)


def test_case_paths_rejects_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="output layout must be 'images_labels' or 'brats', got 'datalist'"):
        case_paths(tmp_path, "x", ["t1"], "datalist")


def _write_cases(root: Path, modalities: list[str], layout: str) -> list[dict]:
    cases = []
    for case_id in ("s1", "s10", "s2"):
        images, label = case_paths(root, case_id, modalities, layout)
        cases.append({"case_id": case_id, "image": [write_volume(p) for p in images], "label": write_volume(label)})
    return sorted(cases, key=lambda c: c["case_id"])


@pytest.mark.parametrize("layout", ["images_labels", "brats"])
@pytest.mark.parametrize("modalities", [["t1c"], ["t1", "t2"]])
def test_case_paths_is_the_inverse_of_find_cases(tmp_path: Path, layout: str, modalities: list[str]) -> None:
    cases = _write_cases(tmp_path, modalities, layout)
    assert find_cases(tmp_path, modalities) == cases


@pytest.mark.parametrize("layout", ["images_labels", "brats"])
def test_write_datalist_round_trips(tmp_path: Path, layout: str) -> None:
    cases = _write_cases(tmp_path, ["t1", "t2"], layout)
    target = write_datalist(tmp_path, cases, name="synthetic")
    assert target == tmp_path / "dataset.json"
    content = json.loads(target.read_text())
    assert content["name"] == "synthetic" and content["numTraining"] == 3
    assert not Path(content["training"][0]["label"]).is_absolute()
    assert find_cases(tmp_path, ["t1", "t2"], layout="datalist") == cases
    assert not list(tmp_path.glob(".dataset.json*"))
