"""Tests of common.workflows.latent_evaluation's sample listing: the volumes an inference run wrote, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.workflows.latent_evaluation import list_samples


def write_samples(root: Path, entries: list[dict], files: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    (root / "dataset.json").write_text(json.dumps({"training": entries}))
    return root


def test_list_samples_resolves_paths_and_derives_missing_ids(tmp_path: Path) -> None:
    entries = [{"case_id": "s0", "image": "s0/ct.nii.gz", "masks": {}}, {"image": "s1/ct.nii.gz"}]
    root = write_samples(tmp_path, entries, ("s0/ct.nii.gz", "s1/ct.nii.gz"))
    assert list_samples(root) == [
        {"case_id": "s0", "image": str(root / "s0/ct.nii.gz")},
        {"case_id": "s1", "image": str(root / "s1/ct.nii.gz")},
    ]


def test_list_samples_without_a_datalist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config key 'sample_dir': .* has no dataset.json"):
        list_samples(tmp_path)


def test_list_samples_of_an_empty_datalist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config key 'sample_dir': .*dataset.json' lists no samples"):
        list_samples(write_samples(tmp_path, []))


def test_list_samples_names_a_missing_volume(tmp_path: Path) -> None:
    root = write_samples(tmp_path, [{"case_id": "s0", "image": "s0/ct.nii.gz"}])
    with pytest.raises(FileNotFoundError, match=r"training\[0\] \(case 's0'\): 1 listed file\(s\) do not exist"):
        list_samples(root)


def test_list_samples_wants_one_volume_per_entry(tmp_path: Path) -> None:
    root = write_samples(tmp_path, [{"image": ["a.nii.gz", "b.nii.gz"]}], ("a.nii.gz", "b.nii.gz"))
    with pytest.raises(ValueError, match=r"training\[0\]: expected 'image': one CT path"):
        list_samples(root)
