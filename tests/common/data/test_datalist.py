"""Tests of common.data.datalist: reading a decathlon datalist through MONAI (paths resolved against its folder, other
keys untouched), one error per validation branch, and writing (fields, merging an earlier run's entries)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from common.data.datalist import datalist_content, read_datalist, save_datalist


def write_json(root: Path, content: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "dataset.json"
    path.write_text(json.dumps(content))
    return path


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


# ---------------------------------------------------------------------------------------------------------- reading


def test_paths_are_resolved_against_the_datalist_folder(tmp_path: Path) -> None:
    entries = [
        {"image": ["imagesTr/a_0000.nii.gz", "imagesTr/a_0001.nii.gz"], "label": "labelsTr/a.nii.gz"},
        {"image": "./b.nii.gz", "label": "sub/../b_seg.nii.gz", "fold": 1},
    ]
    path = write_json(tmp_path / "data", {"name": "x", "training": entries})
    root = tmp_path / "data"
    assert read_datalist(path) == [
        {
            "image": [str(root / "imagesTr/a_0000.nii.gz"), str(root / "imagesTr/a_0001.nii.gz")],
            "label": str(root / "labelsTr/a.nii.gz"),
        },
        {"image": str(root / "b.nii.gz"), "label": str(root / "b_seg.nii.gz"), "fold": 1},
    ]


def test_other_path_keys_are_resolved_like_image_and_other_keys_kept(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "P1").mkdir(parents=True)  # a folder named like the case id: MONAI alone would turn the id into a path
    entry = {"case_id": "P1", "ct": "P1/ct.nii.gz", "masks": {"GTV": "P1/masks/GTV.nii.gz"}, "note": "P1"}
    path = write_json(root, {"training": [entry]})
    (case,) = read_datalist(path, ("ct",), path_keys=("ct", "masks"))
    assert case == {
        "case_id": "P1",
        "ct": str(root / "P1/ct.nii.gz"),
        "masks": {"GTV": str(root / "P1/masks/GTV.nii.gz")},
        "note": "P1",
    }


def test_sections_empty_sections_and_content(tmp_path: Path) -> None:
    entry = {"image": "v.nii.gz", "label": "v_seg.nii.gz"}
    path = write_json(tmp_path, {"modality": {"0": "CT"}, "training": [], "validation": [entry], "test": []})
    assert read_datalist(path) == []
    assert read_datalist(path, section="test") == []
    assert [c["image"] for c in read_datalist(path, section="validation")] == [str(tmp_path / "v.nii.gz")]
    assert datalist_content(path)["modality"] == {"0": "CT"}


def test_files_are_checked_only_when_asked(tmp_path: Path) -> None:
    touch(tmp_path, "a.nii.gz", "a_seg.nii.gz")
    path = write_json(tmp_path, {"training": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]})
    assert read_datalist(path, check_files=True) == read_datalist(path)


# ----------------------------------------------------------------------------------------------------------- errors


def test_missing_datalist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"datalist '.*dataset.json' does not exist"):
        read_datalist(tmp_path / "dataset.json")


def test_unreadable_json(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text('{"training": [')
    with pytest.raises(ValueError, match=r"datalist: '.*dataset.json' is not readable JSON"):
        read_datalist(tmp_path / "dataset.json")


def test_top_level_not_an_object(tmp_path: Path) -> None:
    path = write_json(tmp_path, [{"image": "a.nii.gz"}])
    with pytest.raises(ValueError, match=r"datalist: '.*' holds a JSON list, not an object"):
        read_datalist(path)


def test_unknown_section(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"name": "x", "training": []})
    with pytest.raises(ValueError, match=r"has no section 'validation'; its sections are \['training'\]"):
        read_datalist(path, section="validation")


def test_section_not_a_list(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"training": {"image": "a.nii.gz"}})
    with pytest.raises(
        ValueError, match=r"expected a list of cases under 'training', found dict with keys \['image'\]"
    ):
        read_datalist(path)


def test_entry_not_an_object(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"training": [{"image": "a", "label": "b"}, "c.nii.gz"]})
    with pytest.raises(ValueError, match=r"training\[1\]: expected an object with keys \['image', 'label'\], found 'c"):
        read_datalist(path)


def test_entry_without_a_required_key(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"validation": [{"image": "a.nii.gz"}]})
    with pytest.raises(
        ValueError, match=r"validation\[0\]: expected \{'image', 'label'\}; missing key\(s\) \['label'\]"
    ):
        read_datalist(path, section="validation", expected="{'image', 'label'}")


def test_path_key_of_the_wrong_type(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"training": [{"image": ["a.nii.gz", 3], "label": "b.nii.gz"}]})
    with pytest.raises(
        ValueError, match=r"training\[0\]: key 'image' must be a path, a list of paths or a \{name: path"
    ):
        read_datalist(path)


def test_entry_check_sees_the_raw_entry_and_where_it_is(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"training": [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}]})
    seen: list[tuple[dict, str]] = []

    def one_ct(entry: Mapping[str, Any], where: str) -> None:
        seen.append((dict(entry), where))
        if entry["image"] == "b.nii.gz":
            raise ValueError(f"{where}: 'b' is not a CT")

    with pytest.raises(ValueError, match=r"dataset.json' training\[1\]: 'b' is not a CT"):
        read_datalist(path, ("image",), check_entry=one_ct)
    assert seen[0][0] == {"image": "a.nii.gz"}  # unresolved: the check runs before MONAI joins the paths


def test_missing_listed_files_name_the_entry_and_the_keys(tmp_path: Path) -> None:
    touch(tmp_path, "a_0000.nii.gz")
    entry = {"case_id": "a", "image": ["a_0000.nii.gz", "a_0001.nii.gz"], "masks": {"GTV": "m/GTV.nii.gz"}}
    path = write_json(tmp_path, {"training": [entry]})
    with pytest.raises(
        FileNotFoundError,
        match=r"training\[0\] \(case 'a'\): 2 listed file\(s\) do not exist .*image\[1\] '.*a_0001.nii.gz', "
        r"masks\['GTV'\] '.*GTV.nii.gz'",
    ):
        read_datalist(path, ("image",), path_keys=("image", "masks"), check_files=True)


# ----------------------------------------------------------------------------------------------------------- writing


def test_save_writes_fields_first_and_reads_back(tmp_path: Path) -> None:
    entries = [{"case_id": "a", "image": ["imagesTr/a.nii.gz"], "label": "labelsTr/a.nii.gz"}]
    path = save_datalist(tmp_path / "out" / "dataset.json", entries, name="synthetic", modality={"0": "t1c"})
    text = path.read_text()
    assert list(json.loads(text)) == ["name", "modality", "numTraining", "training"] and text.endswith("}\n")
    assert read_datalist(path)[0]["label"] == str(tmp_path / "out" / "labelsTr/a.nii.gz")


def test_save_merges_an_earlier_run(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    save_datalist(path, [{"case_id": "a", "image": "a1"}, {"case_id": "b", "image": "b1"}], name="first")
    save_datalist(path, [{"case_id": "b", "image": "b2"}, {"case_id": "c", "image": "c2"}], merge=True, name="second")
    content = datalist_content(path)
    assert content["name"] == "second" and content["numTraining"] == 3
    assert content["training"] == [
        {"case_id": "a", "image": "a1"},
        {"case_id": "b", "image": "b2"},
        {"case_id": "c", "image": "c2"},
    ]
    save_datalist(path, [{"case_id": "d", "image": "d"}])  # without merge: replaced
    assert [e["case_id"] for e in datalist_content(path)["training"]] == ["d"]


def test_save_refuses_to_merge_into_a_malformed_datalist(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"training": {"case_id": "a"}})
    with pytest.raises(ValueError, match=r"cannot add entries to it: expected a list of objects under 'training'"):
        save_datalist(path, [{"case_id": "b"}], merge=True)
    assert datalist_content(path) == {"training": {"case_id": "a"}}
