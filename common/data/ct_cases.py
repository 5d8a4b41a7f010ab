"""Finding CT cases with RTSTRUCT-style structure masks (case folders or a datalist)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.data.datalist import read_datalist
from common.data.layouts import NIFTI_SUFFIXES, case_id_from_path, require_cases

__all__ = ["CT_IMAGE_NAMES", "find_ct_cases"]


CT_IMAGE_NAMES = ("ct.nii.gz", "ct.nii")
"""File names of the CT inside a case folder."""


# --------------------------------------------------------------------------------------------------- case discovery


def _case_id_of_image(image: str) -> str:
    """Case id of a CT path: its folder for ``<case>/ct.nii.gz``, else the file name without its NIfTI suffix."""
    path = Path(image)
    return path.parent.name if path.name in CT_IMAGE_NAMES and path.parent.name else case_id_from_path(path)


_CT_ENTRY = "{'case_id': ..., 'image': 'ct path', 'masks': {name: path}} with one CT path"


def _check_ct_entry(entry: Mapping[str, Any], where: str) -> None:
    if not isinstance(entry["image"], str):
        raise ValueError(f"{where}: expected {_CT_ENTRY}, found {entry}")
    masks = entry.get("masks", {})
    if not isinstance(masks, dict):
        raise ValueError(f"{where}: 'masks' must map structure names to paths, found {masks}")


def _cases_from_ct_datalist(datalist: Path, section: str) -> list[dict[str, Any]]:
    entries = read_datalist(
        datalist,
        ("image",),
        section,
        path_keys=("image", "masks"),
        check_files=True,
        expected=_CT_ENTRY,
        check_entry=_check_ct_entry,
    )
    return [
        {
            "case_id": str(entry.get("case_id") or _case_id_of_image(entry["image"])),
            "image": entry["image"],
            "masks": entry.get("masks", {}),
        }
        for entry in entries
    ]


def _cases_from_case_folders(root: Path) -> list[dict[str, Any]]:
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = [folder / name for name in CT_IMAGE_NAMES if (folder / name).is_file()]
        if len(images) != 1:
            found = sorted(p.name for p in folder.iterdir())[:10]
            problem = "has both ct.nii.gz and ct.nii" if images else "has no ct.nii.gz"
            raise ValueError(
                f"case folder '{folder}' {problem}: expected <case>/ct.nii.gz and <case>/masks/<structure>.nii.gz; "
                f"found {found or 'an empty folder'}"
            )
        masks: dict[str, str] = {}
        mask_dir = folder / "masks"
        if mask_dir.is_dir():
            for path in sorted(p for p in mask_dir.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)):
                name = case_id_from_path(path)
                if name in masks:
                    raise ValueError(
                        f"case folder '{folder}': structure '{name}' has two files, {masks[name]} and {path}"
                    )
                masks[name] = str(path)
        cases.append({"case_id": folder.name, "image": str(images[0]), "masks": masks})
    return cases


def find_ct_cases(
    dataset_dir: str | os.PathLike, datalist: str | None = "dataset.json", section: str = "training"
) -> list[dict[str, Any]]:
    """List the CT cases of a dataset folder with their structure masks.

    Layout (written by the phantom writer and the DICOM converter)::

        <dataset_dir>/dataset.json                       {"training": [{"case_id", "image", "masks": {name: path}}]}
        <dataset_dir>/<case_id>/ct.nii.gz                CT in Hounsfield units
        <dataset_dir>/<case_id>/masks/<Structure>.nii.gz one binary mask per structure, on the CT grid

    Without the datalist file, every (non-hidden) sub-folder is a case: ``<case>/ct.nii.gz`` (or ``ct.nii``) and the
    NIfTI files in ``<case>/masks/``, named by structure (any spelling; see :class:`StructureSynonyms`).

    Args:
        dataset_dir: dataset folder.
        datalist: name of the datalist file inside ``dataset_dir``; used when it exists. ``None``: always scan the
            case folders.
        section: list of the datalist to read (``training``, ``validation``, ...).

    Returns:
        Cases ``{"case_id": str, "image": absolute CT path, "masks": {structure name: absolute path}}`` sorted by case
        id; a datalist entry without ``case_id`` takes its CT's folder name.

    Raises:
        FileNotFoundError: the folder does not exist; a file listed in the datalist does not exist (case, role and
            path named).
        ValueError: an empty folder; unreadable or malformed datalist; a case folder without ``ct.nii.gz``; two files
            for one structure; no cases; case ids that occur twice.
    """
    root = Path(dataset_dir).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder '{root}' does not exist")
    contents = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    expected = "a dataset.json datalist or case folders <case>/ct.nii.gz + <case>/masks/<structure>.nii.gz"
    if not contents:
        raise ValueError(f"dataset folder '{root}' is empty: expected {expected}")
    if datalist is not None and (root / datalist).is_file():
        cases = _cases_from_ct_datalist(root / datalist, section)
    else:
        cases = _cases_from_case_folders(root)
    require_cases(cases, root, "CT cases", expected, f"section '{section}'")
    return sorted(cases, key=lambda case: case["case_id"])
