"""2D image datasets of the guidance bundle (``mammo_guidance``): training images, anatomy references and
pathology patches.

A dataset folder holds either a ``dataset.json`` (``training``: entries with ``image`` and optionally ``label``,
``cancer``, ...; ``patches``: entries with ``image`` and ``label``, the lesion mask of the patch) or the plain folders
``imagesTr/*.nii.gz`` (+ ``labelsTr/`` with the same names) and ``patches/patch_*.nii.gz`` (+ ``*_mask.nii.gz``).
The bundle's phantom folder is written on first use (``common.data.prepare.ensure_phantom_dataset``); a user folder
that is missing or holds no image is an error naming the config key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.data.prepare import ensure_phantom_dataset
from common.data.splits import split_cases

__all__ = ["find_planar_cases", "prepare_planar_dataset", "find_patches", "reference_cases", "patch_cases"]

logger = logging.getLogger(__name__)


def _folder(dataset_dir: str | Path, config_key: str) -> Path:
    root = Path(dataset_dir)
    if not root.is_dir() or not any(root.iterdir()):
        state = "does not exist" if not root.exists() else "is empty" if root.is_dir() else "is not a folder"
        raise FileNotFoundError(
            f"config key '{config_key}': '{root}' {state}; expected a dataset.json or imagesTr/*.nii.gz"
        )
    return root


def _datalist(root: Path) -> dict[str, Any] | None:
    path = root / "dataset.json"
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"'{path}' is not valid JSON ({error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"'{path}' must hold a JSON object, got {type(content).__name__}")
    return content


def _absolute(root: Path, entry: Mapping[str, Any], source: str) -> dict[str, Any]:
    out = dict(entry)
    for key in ("image", "label"):
        if out.get(key) is not None:
            path = root / str(out[key])
            if not path.is_file():
                raise FileNotFoundError(f"{source}: '{path}' (the entry's '{key}') does not exist")
            out[key] = str(path)
    if "image" not in out:
        raise ValueError(f"{source}: an entry without 'image': {dict(entry)}")
    out.setdefault("case_id", Path(out["image"]).name.split(".nii")[0])
    return out


def find_planar_cases(dataset_dir: str | Path, config_key: str = "dataset_dir") -> list[dict[str, Any]]:
    """The 2D cases of a folder, ``[{"case_id", "image", "label" (or absent), ...}]`` with absolute paths."""
    root = _folder(dataset_dir, config_key)
    content = _datalist(root)
    if content is not None and content.get("training"):
        return [_absolute(root, e, f"config key '{config_key}': {root / 'dataset.json'}") for e in content["training"]]
    images = sorted((root / "imagesTr").glob("*.nii.gz"))
    if not images:
        raise FileNotFoundError(
            f"config key '{config_key}': '{root}' has no dataset.json 'training' list and no imagesTr/*.nii.gz"
        )
    cases = []
    for image in images:
        label = root / "labelsTr" / image.name
        cases.append(
            {"case_id": image.name.split(".nii")[0], "image": str(image)}
            | ({"label": str(label)} if label.is_file() else {})
        )
    return cases


def prepare_planar_dataset(
    dataset_dir: str, phantom: Mapping[str, Any] | None = None, val_fraction: float = 0.1, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Find and split the 2D cases of ``dataset_dir``, writing the phantoms first when it is the (empty) default.

    Returns:
        ``{"train": [...], "val": [...]}``.
    """
    ensure_phantom_dataset(dataset_dir, dict(phantom) if phantom else None)
    cases = find_planar_cases(dataset_dir)
    train, val = split_cases(cases, val_fraction, seed)
    logger.info(f"dataset '{dataset_dir}': {len(train)} training and {len(val)} validation images")
    return {"train": train, "val": val}


def find_patches(patch_dir: str | Path, config_key: str = "patch_dir") -> list[dict[str, Any]]:
    """The pathology patches of a folder: ``dataset.json`` ``patches`` entries, or ``patches/patch_*.nii.gz`` with
    their ``*_mask.nii.gz`` (the lesion mask, required)."""
    root = _folder(patch_dir, config_key)
    content = _datalist(root)
    if content is not None and content.get("patches"):
        entries = [
            _absolute(root, e, f"config key '{config_key}': {root / 'dataset.json'}") for e in content["patches"]
        ]
    else:
        folder = root / "patches" if (root / "patches").is_dir() else root
        images = sorted(p for p in folder.glob("*.nii.gz") if not p.name.endswith("_mask.nii.gz"))
        entries = []
        for image in images:
            mask = image.with_name(image.name.replace(".nii.gz", "_mask.nii.gz"))
            if not mask.is_file():
                raise FileNotFoundError(f"config key '{config_key}': patch '{image}' has no lesion mask '{mask.name}'")
            entries.append({"case_id": image.name.split(".nii")[0], "image": str(image), "label": str(mask)})
    if not entries:
        raise FileNotFoundError(f"config key '{config_key}': no pathology patch found in '{root}'")
    missing = [e["image"] for e in entries if not e.get("label")]
    if missing:
        raise ValueError(f"config key '{config_key}': patches without a lesion mask ('label'): {missing[:5]}")
    return entries


def reference_cases(
    dataset_dir: str | Path,
    phantom: Mapping[str, Any] | None = None,
    limit: int | None = None,
    healthy_only: bool = True,
    config_key: str = "references",
) -> list[dict[str, Any]]:
    """Anatomy references for guided sampling: the cases of ``dataset_dir`` (phantoms written first when it is the
    default), those flagged ``cancer: 1`` left out with ``healthy_only``, the first ``limit`` of them."""
    ensure_phantom_dataset(dataset_dir, dict(phantom) if phantom else None)
    cases = find_planar_cases(dataset_dir, config_key)
    if healthy_only:
        cases = [c for c in cases if not int(c.get("cancer", 0))]
    if not cases:
        raise ValueError(f"config key '{config_key}': '{dataset_dir}' holds no cancer-free image to use as a reference")
    return cases[: int(limit)] if limit else cases


def patch_cases(
    patch_dir: str | Path, phantom: Mapping[str, Any] | None = None, config_key: str = "patch_dir"
) -> list[dict[str, Any]]:
    """The pathology patches of ``patch_dir`` (phantoms written first when it is the default folder)."""
    ensure_phantom_dataset(patch_dir, dict(phantom) if phantom else None)
    return find_patches(patch_dir, config_key)
