"""Datasets of 2D images (one PNG or NIfTI file per image) for unconditional 2D synthesis (the ``swin_ddpm`` bundle).

A dataset folder holds a decathlon ``dataset.json`` (``training``: ``[{"image": path}, ...]``, paths relative to the
folder) or, without one, image files (``.png``, ``.nii``, ``.nii.gz``) anywhere below it. With the bundle's default
``dataset_dir`` (its phantom folder) missing or empty, the 2D phantoms are written there first
(:mod:`common.data.phantoms.slices`); any other missing or empty folder is an error naming the config key.

A folder of 3D volumes (ACDC, BTCV) is read through its 2D slices when the ``slicing`` options set ``slice_axis``
(:mod:`common.data.volume_slices`: cut once into ``slice_cache_dir``, reused while inputs and options are unchanged).
The bundle's own phantom folder holds 2D images and is never cut, so a dataset overlay can set the axis its real data
needs and still train on the phantoms by default.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist

from common.data.datalist import read_datalist
from common.data.layouts import case_id_from_path
from common.data.splits import split_cases
from common.data.volume_slices import SliceOptions, slice_volumes

__all__ = ["IMAGE_SUFFIXES", "ensure_slice_phantoms", "find_images", "prepare_image_dataset"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".nii.gz", ".nii")


def find_images(dataset_dir: str | Path, config_key: str = "dataset_dir") -> list[dict[str, Any]]:
    """``[{"case_id", "image"}]`` of a dataset folder, sorted by case id (module docstring).

    Raises:
        FileNotFoundError: the folder does not exist, or a listed file is missing.
        ValueError: no image in the folder, or a malformed ``dataset.json``.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"config key '{config_key}': dataset folder '{root}' does not exist")
    if (root / "dataset.json").is_file():
        cases = read_datalist(root / "dataset.json", ["image"], check_files=True)
        cases = [{**case, "case_id": case.get("case_id") or case_id_from_path(case["image"])} for case in cases]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
        cases = [{"case_id": case_id_from_path(p), "image": str(p)} for p in files]
    if not cases:
        raise ValueError(
            f"config key '{config_key}': no images in '{root}' (expected a dataset.json or "
            f"{list(IMAGE_SUFFIXES)} files)"
        )
    return sorted(cases, key=lambda case: case["case_id"])


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _is_phantom_dir(dataset_dir: str | Path, phantom: Mapping[str, Any] | None) -> bool:
    return phantom is not None and Path(str(phantom["dir"])).resolve() == Path(dataset_dir).resolve()


def ensure_slice_phantoms(dataset_dir: str | Path, phantom: Mapping[str, Any] | None) -> None:
    """Write the 2D phantoms when ``dataset_dir`` is ``phantom["dir"]`` and missing or empty (rank 0; all wait)."""
    from common.data.phantoms.slices import write_slice_phantoms

    root = Path(dataset_dir)
    if _is_phantom_dir(root, phantom) and _is_main_process() and (not root.exists() or not any(root.iterdir())):
        options = {k: v for k, v in phantom.items() if k not in ("dir", "kind")}
        logger.info(f"dataset_dir '{root}' is empty: writing {options.get('n', 32)} '{phantom['kind']}' phantoms")
        if root.exists():
            root.rmdir()
        write_slice_phantoms(phantom["kind"], root, **options)
    _barrier()


def _split_by_volume(
    slices: list[dict[str, Any]], val_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train / validation slices with every slice of a volume on one side (no volume in both)."""
    volumes = sorted({entry["volume_id"] for entry in slices})
    _, val = split_cases([{"case_id": volume} for volume in volumes], val_fraction, seed)
    held_out = {case["case_id"] for case in val}
    return [e for e in slices if e["volume_id"] not in held_out], [e for e in slices if e["volume_id"] in held_out]


def prepare_image_dataset(
    dataset_dir: str | Path,
    phantom: Mapping[str, Any] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    slicing: Mapping[str, Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "val": [...]}`` of a 2D image dataset, writing the phantoms first when it is the default.

    Args:
        dataset_dir: the ``dataset_dir`` config value.
        phantom: ``{"dir", "kind", "n", "size", "seed"}`` of the bundle's phantoms, or None.
        val_fraction: share of images (of volumes, when slicing) held out for validation (at least one when there
            are two or more).
        seed: seed of the split.
        slicing: ``{"slice_axis", "slice_range", "slice_step", "min_foreground", "foreground_threshold",
            "slice_cache_dir"}`` (:mod:`common.data.volume_slices`); None or a null ``slice_axis``: 2D files.

    Raises:
        FileNotFoundError, ValueError: see :func:`find_images`, :class:`SliceOptions` and :func:`slice_volumes`.
    """
    ensure_slice_phantoms(dataset_dir, phantom)
    options = None if slicing is None or _is_phantom_dir(dataset_dir, phantom) else SliceOptions.from_config(slicing)
    if options is None:
        train, val = split_cases(find_images(dataset_dir), val_fraction, seed)
        logger.info(f"dataset '{dataset_dir}': {len(train)} training and {len(val)} validation images")
        return {"train": train, "val": val}
    volumes = find_images(dataset_dir)
    cache_dir = slicing.get("slice_cache_dir")
    if not cache_dir:
        raise ValueError(
            f"config key 'slice_cache_dir': expected a folder for the slices of '{dataset_dir}', got {cache_dir!r}"
        )
    if _is_main_process():
        slice_volumes(volumes, cache_dir, options, dataset_dir)
    _barrier()
    slices = slice_volumes(volumes, cache_dir, options, dataset_dir, write=False)
    train, val = _split_by_volume(slices, val_fraction, seed)
    logger.info(
        f"dataset '{dataset_dir}': {len(train)} training and {len(val)} validation slices of {len(volumes)} volumes"
    )
    return {"train": train, "val": val}
