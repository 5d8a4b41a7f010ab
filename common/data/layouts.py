"""Finding, pairing and checking the cases of a dataset folder, and writing cases in the same layouts.

A *case* is a dict ``{"case_id": str, "image": [path, ...], "label": path}`` with one image path per modality
(in the order of the bundle's ``modalities``). Three folder layouts are understood (``layout="auto"`` tries them
in this order):

* ``datalist``: a MONAI decathlon-style ``dataset.json`` with ``training`` (and optionally ``validation``) entries
  ``{"image": path or [paths], "label": path}``, paths relative to the folder;
* ``images_labels``: ``imagesTr/<id>.nii.gz`` + ``labelsTr/<id>.nii.gz`` (several modalities as nnU-Net channel
  files ``<id>_0000.nii.gz``, ``<id>_0001.nii.gz``, ...);
* ``brats``: ``<id>_<modality>.nii.gz`` files and ``<id>_seg.nii.gz`` anywhere below the folder (BraTS 2021).

Images and labels are paired by case id, never by sort order. Header-level checks (shapes, spacing, orientation
of every file of a case) run before any voxel is read, so a bad dataset fails in seconds with the file named.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.data.datalist import read_datalist, save_datalist

__all__ = [
    "LAYOUTS",
    "NIFTI_SUFFIXES",
    "case_id_from_path",
    "require_cases",
    "find_cases",
    "write_datalist",
    "case_paths",
]


LAYOUTS = ("auto", "datalist", "images_labels", "brats")


NIFTI_SUFFIXES = (".nii.gz", ".nii")


_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def case_id_from_path(path: str | Path) -> str:
    """File name without its NIfTI suffix (``/a/head_001.nii.gz`` -> ``head_001``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def require_cases(
    cases: Sequence[Mapping[str, Any]],
    root: Path,
    what: str,
    expected: str,
    context: str,
    config_key: str | None = None,
) -> None:
    """What every case finder returns: at least one case, and no case id twice (ids name outputs and pair samples).

    Args:
        cases: the cases found.
        root: the dataset folder.
        what: what was looked for, e.g. ``"PET-CT cases"``.
        expected: the layouts understood, for the message.
        context: how the folder was read, e.g. ``"layout 'auto'"``.
        config_key: config key of the folder, named in the messages.

    Raises:
        ValueError: no case (the folder's first entries are listed) or repeated case ids (they are listed).
    """
    where = f"config key '{config_key}': " if config_key else ""
    if not cases:
        found = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))[:10]
        raise ValueError(
            f"{where}no {what} in '{root}' ({context}): expected {expected}; found {found or 'an empty folder'}"
        )
    ids = [case["case_id"] for case in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{where}case ids occur more than once in '{root}': {duplicates[:10]}")


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))


def _cases_from_datalist(datalist: Path, section: str) -> list[dict[str, Any]]:
    entries = read_datalist(
        datalist, ("image", "label"), section, expected="{'image': path or [paths], 'label': path, 'case_id'?: id}"
    )
    cases = []
    for entry in entries:
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        case_id = str(entry.get("case_id", re.sub(r"_seg$", "", case_id_from_path(entry["label"]))))
        cases.append({"case_id": case_id, "image": images, "label": entry["label"]})
    return cases


def _cases_from_images_labels(root: Path, num_modalities: int) -> list[dict[str, Any]]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    labels = {case_id_from_path(p): str(p) for p in _nifti_files(labels_dir)}
    grouped: dict[str, dict[int, str]] = {}
    for path in _nifti_files(images_dir):
        stem = case_id_from_path(path)
        # a plain <id>.nii.gz whose id ends in _dddd (patient_0001) is not a channel file when a label has that id
        match = _CHANNEL_SUFFIX.match(stem) if stem not in labels else None
        case_id, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        if channel in grouped.setdefault(case_id, {}):
            raise ValueError(f"'{images_dir}': case '{case_id}' has two files for channel {channel}")
        grouped[case_id][channel] = str(path)
    _require_same_ids(set(grouped), set(labels), images_dir, labels_dir)
    cases = []
    for case_id in sorted(grouped):
        channels = grouped[case_id]
        if sorted(channels) != list(range(num_modalities)):
            raise ValueError(
                f"'{images_dir}': case '{case_id}' has channel files {sorted(channels)}, expected channels "
                f"{list(range(num_modalities))} (one per modality, nnU-Net naming <id>_0000.nii.gz ...)"
            )
        cases.append({"case_id": case_id, "image": [channels[c] for c in sorted(channels)], "label": labels[case_id]})
    return cases


def _require_same_ids(image_ids: set[str], label_ids: set[str], images_dir: Path, labels_dir: Path) -> None:
    if image_ids == label_ids:
        return
    only_images, only_labels = sorted(image_ids - label_ids), sorted(label_ids - image_ids)
    raise ValueError(
        f"images and labels do not pair up by case id ({len(image_ids)} images in '{images_dir}', "
        f"{len(label_ids)} labels in '{labels_dir}'): images without a label: {only_images[:10]}; "
        f"labels without an image: {only_labels[:10]}"
    )


def _cases_from_brats(root: Path, modalities: Sequence[str]) -> list[dict[str, Any]]:
    cases = []
    for seg in sorted(p for suffix in NIFTI_SUFFIXES for p in root.rglob(f"*_seg{suffix}")):
        case_id = case_id_from_path(seg)[: -len("_seg")]
        images, missing = [], []
        for modality in modalities:
            found = [seg.parent / f"{case_id}_{modality}{suffix}" for suffix in NIFTI_SUFFIXES]
            found = [p for p in found if p.is_file()]
            if found:
                images.append(str(found[0]))
            else:
                missing.append(modality)
        if missing:
            raise ValueError(
                f"BraTS case '{case_id}' in '{seg.parent}' lacks modality files {missing} "
                f"(expected {[f'{case_id}_{m}.nii.gz' for m in modalities]})"
            )
        cases.append({"case_id": case_id, "image": images, "label": str(seg)})
    return cases


def find_cases(
    dataset_dir: str | Path,
    modalities: Sequence[str],
    layout: str = "auto",
    section: str = "training",
    config_key: str = "dataset_dir",
) -> list[dict[str, Any]]:
    """List the cases of ``dataset_dir`` paired by case id.

    Args:
        dataset_dir: dataset folder.
        modalities: modality names, one image channel each (e.g. ``["t1c"]``, ``["t1", "t1ce", "t2", "flair"]``).
        layout: one of :data:`LAYOUTS`.
        section: datalist section to read (``training`` or ``validation``).
        config_key: config key named in error messages.

    Raises:
        FileNotFoundError: the folder does not exist; layout ``datalist`` without a ``dataset.json``.
        ValueError: unknown layout, no usable cases, images and labels that do not pair up, wrong channel count, a
            malformed datalist (see :func:`common.data.datalist.read_datalist`).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got '{layout}'")
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"config key '{config_key}': dataset folder '{root}' does not exist")
    datalist = root / "dataset.json"
    if layout == "datalist" and not datalist.is_file():
        raise FileNotFoundError(f"config key '{config_key}': '{root}' has no dataset.json (layout 'datalist')")
    if layout == "datalist" or (layout == "auto" and datalist.is_file()):
        cases = _cases_from_datalist(datalist, section)
    elif layout == "images_labels" or (layout == "auto" and (root / "imagesTr").is_dir()):
        if not (root / "labelsTr").is_dir():
            raise ValueError(f"config key '{config_key}': '{root}' has imagesTr/ but no labelsTr/ folder")
        cases = _cases_from_images_labels(root, len(modalities))
    else:
        cases = _cases_from_brats(root, modalities)
    expected = (
        "a dataset.json datalist, imagesTr/ + labelsTr/ folders, or BraTS files "
        f"<id>_{{{','.join(modalities)}}}.nii.gz + <id>_seg.nii.gz"
    )
    require_cases(cases, root, "usable cases", expected, f"layout '{layout}'", config_key)
    for case in cases:
        if len(case["image"]) != len(modalities):
            raise ValueError(
                f"case '{case['case_id']}' has {len(case['image'])} image channel file(s) {case['image']}, expected "
                f"{len(modalities)} (modalities {list(modalities)})"
            )
    return cases


def write_datalist(out_dir: str | Path, cases: list[dict[str, Any]], **fields: Any) -> Path:
    """Write ``out_dir/dataset.json`` (decathlon style) for ``cases``, paths relative to ``out_dir``, atomically."""
    root = Path(out_dir)

    def relative(path: str) -> str:
        return os.path.relpath(path, root)

    training = [
        {"case_id": c["case_id"], "image": [relative(p) for p in c["image"]], "label": relative(c["label"])}
        for c in cases
    ]
    return save_datalist(root / "dataset.json", training, **fields)


def case_paths(out_dir: str | Path, case_id: str, modalities: Sequence[str], layout: str) -> tuple[list[Path], Path]:
    """Where a case is written in ``layout`` (the inverse of :func:`find_cases`): (image paths, label path).

    ``images_labels``: ``imagesTr/<id>.nii.gz`` (one modality) or ``imagesTr/<id>_0000.nii.gz``... (nnU-Net channel
    files) and ``labelsTr/<id>.nii.gz``; ``brats``: ``<id>/<id>_<modality>.nii.gz`` and ``<id>/<id>_seg.nii.gz``.
    """
    root = Path(out_dir)
    if layout == "images_labels":
        names = (
            [f"{case_id}.nii.gz"]
            if len(modalities) == 1
            else [f"{case_id}_{c:04d}.nii.gz" for c in range(len(modalities))]
        )
        return [root / "imagesTr" / n for n in names], root / "labelsTr" / f"{case_id}.nii.gz"
    if layout == "brats":
        folder = root / case_id
        return [folder / f"{case_id}_{m}.nii.gz" for m in modalities], folder / f"{case_id}_seg.nii.gz"
    raise ValueError(f"output layout must be 'images_labels' or 'brats', got '{layout}'")
