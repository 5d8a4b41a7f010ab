"""2D slices of 3D NIfTI volumes, cut once into a cache folder, for the 2D image datasets (the ``swin_ddpm`` bundle).

MT-DDPM (paper 002) trains on 2D slices of 3D scans (ACDC short-axis stacks, BTCV and pelvic CT axial slices). With
``slice_axis`` set, every volume that :func:`common.data.images2d.find_images` lists is cut along that array axis and
each kept slice is written to ``slice_cache_dir``:

    <slice_cache_dir>/dataset.json    ``training``: ``[{"case_id": "<case>_<k>", "volume_id", "slice_index", "image"}]``
    <slice_cache_dir>/slicing.json    the options and the inputs (path, size, modification time) it was cut from
    <slice_cache_dir>/images/<case>_<k>.nii.gz

A slice's rows and columns are the volume's two other array axes, in order, and its voxel values are exactly
``volume.take(k, axis)`` (as nibabel reads them, scaling applied; 64-bit floats stored as 32-bit). Its affine is
diagonal: the in-plane voxel sizes, the slice thickness as the third and the slice's distance from slice 0 as the
third translation; the oblique orientation of the volume is not kept, because the 2D transforms read only the
in-plane part of an affine (MONAI's ``Spacingd`` would otherwise see the wrong pixel size on a short-axis plane).

The cache is written atomically (:func:`common.io.atomic_folder`) and reused while ``slicing.json`` matches the
current inputs and options; any change re-cuts it. Keys of the ``slicing`` mapping are the bundle's config keys:

- ``slice_axis``: array axis to cut along (0, 1, 2 or -3 .. -1); null: the files are already 2D (no slicing).
- ``slice_range``: ``[start, stop]`` of the slice indices along the axis (Python slice rules, either may be null).
- ``slice_step``: keep every n-th slice of the range.
- ``min_foreground``: keep a slice only if at least this share of its pixels is foreground (0: keep all).
- ``foreground_threshold``: a pixel is foreground above this value (image units, e.g. -500 HU); null: above the
  volume's minimum.
- ``slice_cache_dir``: the cache folder (not inside ``dataset_dir``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.data.datalist import read_datalist
from common.io import atomic_folder, atomic_write_nifti

__all__ = ["SLICING_MANIFEST", "SliceOptions", "slice_volumes"]

logger = logging.getLogger(__name__)

SLICING_MANIFEST = "slicing.json"
_MANIFEST_VERSION = 1


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SliceOptions:
    """How volumes are cut into 2D slices: ``axis``, ``start``/``stop`` and ``step`` are the config keys
    ``slice_axis``, ``slice_range`` and ``slice_step``; the other fields have the names of their keys."""

    axis: int
    start: int | None = None
    stop: int | None = None
    step: int = 1
    min_foreground: float = 0.0
    foreground_threshold: float | None = None

    @classmethod
    def from_config(cls, slicing: Mapping[str, Any]) -> SliceOptions | None:
        """Options from the config keys (module docstring); None when ``slice_axis`` is null.

        Raises:
            ValueError: a key of the wrong type or out of its range (the key, the expected and the found value).
        """
        axis = slicing.get("slice_axis")
        if axis is None:
            return None
        if not _is_int(axis) or not -3 <= axis <= 2:
            raise ValueError(
                f"config key 'slice_axis': expected null or an axis of a 3D volume (0, 1, 2 or -3 .. -1), got {axis!r}"
            )
        bounds = slicing.get("slice_range")
        bounds = [None, None] if bounds is None else bounds
        if not isinstance(bounds, Sequence) or len(bounds) != 2 or not all(b is None or _is_int(b) for b in bounds):
            raise ValueError(
                f"config key 'slice_range': expected null or [start, stop] (integers or null), got {bounds!r}"
            )
        step = slicing.get("slice_step", 1)
        if not _is_int(step) or step < 1:
            raise ValueError(f"config key 'slice_step': expected an integer >= 1, got {step!r}")
        share = slicing.get("min_foreground", 0.0)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise ValueError(f"config key 'min_foreground': expected a share in [0, 1], got {share!r}")
        threshold = slicing.get("foreground_threshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise ValueError(f"config key 'foreground_threshold': expected null or a number, got {threshold!r}")
        return cls(
            axis=int(axis),
            start=None if bounds[0] is None else int(bounds[0]),
            stop=None if bounds[1] is None else int(bounds[1]),
            step=int(step),
            min_foreground=float(share),
            foreground_threshold=None if threshold is None else float(threshold),
        )


def _why_not_cuttable(shape: tuple[int, ...], axis: int) -> str | None:
    """What keeps an image of ``shape`` from being cut into 2D slices along ``axis``; None when nothing does."""
    if len(shape) != 3:
        return f"a {len(shape)}D image of shape {shape}"
    in_plane = tuple(n for a, n in enumerate(shape) if a != axis % 3)
    if min(in_plane) < 2:
        return f"shape {shape}, whose slices along axis {axis} would be {in_plane}"
    return None


def _load_volume(path: Path, options: SliceOptions) -> nib.Nifti1Image:
    """The NIfTI image at ``path`` (trailing singleton axes beyond the third dropped), checked to be a 3D volume
    that ``options.axis`` cuts into 2D slices."""
    if path.name.lower().endswith(".png"):
        problem = "a 2D image (PNG)"
    else:
        try:
            image = nib.load(path)
        except Exception as error:  # nibabel raises several types for a corrupt or foreign file
            raise ValueError(f"'{path}': cannot be read as a NIfTI volume ({type(error).__name__}: {error})") from error
        shape = tuple(image.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        problem = _why_not_cuttable(shape, options.axis)
        if problem is None:
            return image if image.ndim == 3 else image.slicer[(slice(None),) * 3 + (0,) * (image.ndim - 3)]
    raise ValueError(
        f"'{path}': config key 'slice_axis' = {options.axis} expects a 3D volume to cut into 2D slices, found "
        f"{problem} (slice_axis null reads 2D images)"
    )


def _kept_indices(volume: np.ndarray, options: SliceOptions) -> list[int]:
    """Slice indices in ``slice_range`` / ``slice_step`` whose foreground share reaches ``min_foreground``."""
    axis = options.axis % 3
    indices = range(volume.shape[axis])[options.start : options.stop : options.step]
    if options.min_foreground <= 0.0:
        return list(indices)
    threshold = np.nanmin(volume) if options.foreground_threshold is None else options.foreground_threshold
    other = tuple(a for a in range(3) if a != axis)
    share = (volume > threshold).mean(axis=other)
    return [k for k in indices if share[k] >= options.min_foreground]


def _slice_affine(image: nib.Nifti1Image, axis: int, index: int) -> np.ndarray:
    """Diagonal affine of slice ``index``: in-plane voxel sizes, the thickness, the offset along the axis."""
    sizes = nib.affines.voxel_sizes(image.affine)
    in_plane = [sizes[a] for a in range(3) if a != axis]
    affine = np.diag([*in_plane, sizes[axis], 1.0])
    affine[2, 3] = index * sizes[axis]
    return affine


def _manifest(cases: Sequence[Mapping[str, Any]], options: SliceOptions) -> dict[str, Any]:
    inputs = []
    for case in cases:
        path = Path(case["image"]).resolve()
        stat = path.stat()
        inputs.append(
            {"case_id": case["case_id"], "path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        )
    return {"version": _MANIFEST_VERSION, "options": asdict(options), "inputs": inputs}


def _read_manifest(cache_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((cache_dir / SLICING_MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _cut(cases: Sequence[Mapping[str, Any]], options: SliceOptions, staging: Path) -> list[dict[str, Any]]:
    """Write the kept slices of every case under ``staging/images``; their datalist entries."""
    axis = options.axis % 3
    entries = []
    for case in cases:
        image = _load_volume(Path(case["image"]), options)
        volume = np.asanyarray(image.dataobj)
        if volume.dtype == np.float64:
            volume = volume.astype(np.float32)
        kept = _kept_indices(volume, options)
        width = max(3, len(str(volume.shape[axis] - 1)))
        for index in kept:
            slice_id = f"{case['case_id']}_{index:0{width}d}"
            name = f"images/{slice_id}.nii.gz"
            atomic_write_nifti(volume.take(index, axis=axis)[None], _slice_affine(image, axis, index), staging / name)
            entries.append({"case_id": slice_id, "volume_id": case["case_id"], "slice_index": index, "image": name})
    return entries


def slice_volumes(
    cases: Sequence[Mapping[str, Any]],
    cache_dir: str | Path,
    options: SliceOptions,
    dataset_dir: str | Path = "",
    write: bool = True,
) -> list[dict[str, Any]]:
    """The 2D slices of ``cases`` (``[{"case_id", "image"}]`` of 3D volumes), cut into ``cache_dir`` unless a cache
    of the same inputs and options is there (module docstring).

    Args:
        cases: the volumes, e.g. :func:`common.data.images2d.find_images` of ``dataset_dir``.
        cache_dir: the ``slice_cache_dir`` config value.
        options: how to cut.
        dataset_dir: the folder the cases come from (for messages, and the cache may not lie inside it).
        write: cut when the cache is missing or stale (the main process); False only reads the cache (other ranks,
            after the main process wrote it).

    Returns:
        ``[{"case_id", "volume_id", "slice_index", "image"}]`` of the cached slices, image paths absolute.

    Raises:
        ValueError: a volume that is not 3D or cannot be cut along ``slice_axis`` (the file is named), no slice
            left after ``slice_range`` / ``slice_step`` / ``min_foreground``, a cache folder inside ``dataset_dir``
            or an existing non-empty folder that is not a slice cache.
    """
    cache_dir = Path(cache_dir)
    if dataset_dir and cache_dir.resolve().is_relative_to(Path(dataset_dir).resolve()):
        raise ValueError(
            f"config key 'slice_cache_dir': expected a folder outside dataset_dir '{dataset_dir}' (its slices would be "
            f"read as input next time), got '{cache_dir}'"
        )
    expected = _manifest(cases, options)
    if write and _read_manifest(cache_dir) != expected:
        if cache_dir.exists() and any(cache_dir.iterdir()):
            if not (cache_dir / SLICING_MANIFEST).is_file():
                raise ValueError(
                    f"config key 'slice_cache_dir': expected a new or empty folder or a slice cache (with "
                    f"{SLICING_MANIFEST}), found '{cache_dir}' holding other files"
                )
            logger.info(f"slice cache '{cache_dir}' was cut from other inputs or options: cutting it again")
            shutil.rmtree(cache_dir)
        with atomic_folder(cache_dir) as staging:
            entries = _cut(cases, options, staging)
            if not entries:
                raise ValueError(
                    f"dataset_dir '{dataset_dir}': no slice left of {len(cases)} volume(s) after config keys "
                    f"slice_range = {[options.start, options.stop]}, slice_step = {options.step}, min_foreground = "
                    f"{options.min_foreground} (foreground_threshold = {options.foreground_threshold}); expected at "
                    "least one"
                )
            content = {"name": "slices", "numTraining": len(entries), "training": entries}
            (staging / "dataset.json").write_text(json.dumps(content, indent=2) + "\n")
            (staging / SLICING_MANIFEST).write_text(json.dumps(expected, indent=2) + "\n")
        logger.info(f"cut {len(entries)} slices of {len(cases)} volume(s) along axis {options.axis} into '{cache_dir}'")
    elif _read_manifest(cache_dir) != expected:
        raise FileNotFoundError(f"config key 'slice_cache_dir': no slice cache of the current inputs in '{cache_dir}'")
    return read_datalist(cache_dir / "dataset.json", ["image"], check_files=True)
