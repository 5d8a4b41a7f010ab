"""Safe output writing shared by every bundle: atomic NIfTI/PNG/text files and slice previews (and reading back a
JSON object with an error that names its source).

Every writer goes through :func:`atomic_path`: the data is written to a hidden temporary file in the destination
folder and moved into place with ``os.replace``, so an interrupted run never leaves a half-written sample, preview or
report behind (bundle contract, "Bad input: a clear error, nothing lost"). Existing files are kept unless the caller
asks to overwrite them, because inference must never overwrite a previous sample.

The PNG encoder only needs ``zlib`` and ``struct`` (no PIL), so previews work in the bare bundle environment.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

__all__ = [
    "to_numpy",
    "atomic_path",
    "atomic_folder",
    "write_image_label_pair",
    "atomic_write_text",
    "read_json_object",
    "atomic_write_nifti",
    "read_nifti",
    "encode_png",
    "write_png",
    "window_uint8",
    "overlay_outline",
    "gray_to_rgb",
    "montage",
    "central_slices",
    "save_preview_png",
]


NIFTI_SUFFIXES = (".nii", ".nii.gz")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


OUTLINE_RED = (255, 0, 0)


# NIfTI has no boolean / half / 64-bit integer voxel types that every reader supports: store these instead.
_NIFTI_DTYPE_SUBSTITUTES = {np.dtype(bool): np.uint8, np.dtype(np.float16): np.float32}


_NIFTI_XFORM_SCANNER = 1


def to_numpy(data: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return ``data`` as a numpy array (torch tensors, MONAI MetaTensors included, are detached and moved to CPU)."""
    if isinstance(data, torch.Tensor):
        return data.detach().cpu().numpy()
    return np.asarray(data)


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``, on any error delete it.

    The temporary name is hidden (leading dot), unique, and ends with the full name of ``path`` so that writers which
    choose the format from the extension (``.nii.gz``) behave as for the final name. The parent folder is created.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (pass overwrite=True to replace it).")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden staging folder next to ``out_dir``; on success rename it to ``out_dir``, on any error delete it.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty (it is left untouched).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"out_dir {str(out_dir)!r} exists and is not empty; choose a new or empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        staging.replace(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`) and return the path."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def read_json_object(path: str | os.PathLike, source: str) -> dict:
    """The JSON object in ``path``; ``source`` (e.g. ``"config key 'x'"``) starts every error message.

    Raises:
        ValueError: the file cannot be read or parsed, or holds JSON that is not an object.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{source}: '{path}' is not readable JSON ({e})") from e
    if not isinstance(content, dict):
        raise ValueError(f"{source}: '{path}' holds a JSON {type(content).__name__}, not an object")
    return content


def _affine_4x4(affine: np.ndarray | torch.Tensor) -> np.ndarray:
    """Validate a (4, 4) or 2D (3, 3) homogeneous affine and return it as a float64 (4, 4) array."""
    affine = to_numpy(affine).astype(np.float64)
    if affine.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"affine must have shape (4, 4) (or (3, 3) for 2D), got {affine.shape}.")
    if not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be finite, got\n{affine}.")
    n = affine.shape[0] - 1
    if not np.allclose(affine[n], np.eye(n + 1)[n]):
        raise ValueError(f"affine's last row must be {np.eye(n + 1)[n].tolist()}, got {affine[n].tolist()}.")
    if n == 3:
        return affine
    full = np.eye(4)
    full[:2, :2], full[:2, 3] = affine[:2, :2], affine[:2, 2]
    return full


def _channel_first_to_nifti(array: np.ndarray) -> np.ndarray:
    """Map a channel-first (C, H, W) or (C, H, W, D) array to NIfTI axis order.

    One channel is squeezed: (H, W) or (H, W, D). Several channels go to the 4th NIfTI axis: (H, W, D, C), with a
    singleton third axis inserted for 2D, (H, W, 1, C), so that the 4th axis always holds the channels.
    """
    if array.ndim not in (3, 4):
        raise ValueError(
            f"array must be channel-first (C, H, W) or (C, H, W, D), got shape {array.shape} ({array.ndim} dims)."
        )
    if array.shape[0] == 1:
        return array[0]
    spatial_last = np.moveaxis(array, 0, -1)
    return spatial_last[:, :, None, :] if array.ndim == 3 else spatial_last


def _nifti_ready(array: np.ndarray, dtype: np.dtype | type | str | None) -> np.ndarray:
    """Cast ``array`` to ``dtype`` (or a NIfTI-storable equivalent of its own dtype); 64-bit integers must fit int32."""
    if dtype is not None:
        return array.astype(dtype)
    if array.dtype in _NIFTI_DTYPE_SUBSTITUTES:
        return array.astype(_NIFTI_DTYPE_SUBSTITUTES[array.dtype])
    if array.dtype in (np.int64, np.uint64):
        info = np.iinfo(np.int32)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(
                f"array of dtype {array.dtype} has values in [{array.min()}, {array.max()}], outside int32; "
                "pass dtype= explicitly (e.g. float32)."
            )
        return array.astype(np.int32)
    return array


def atomic_write_nifti(
    data: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor | None,
    path: str | os.PathLike,
    dtype: np.dtype | type | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a channel-first image to ``path`` (``.nii`` or ``.nii.gz``) atomically through nibabel.

    Args:
        data: channel-first array (C, H, W) or (C, H, W, D), numpy or torch (MONAI ``MetaTensor`` included). One
            channel is stored as a 2D/3D image, several channels on the 4th NIfTI axis: (H, W, D, C) or (H, W, 1, C).
        affine: voxel-to-world (RAS, mm) affine, (4, 4) or (3, 3) for 2D. ``None`` takes ``data.affine`` (MetaTensor).
        path: destination file; its folder is created.
        dtype: voxel type stored (numpy ``astype``, no scaling). Default: the data's own type, with bool -> uint8,
            float16 -> float32 and 64-bit integers -> int32 (if the values fit).
        overwrite: replace an existing file; by default an existing file is an error (inference never overwrites).

    The header's qform and sform both hold ``affine`` with code 1 (scanner), and the voxel spacing (pixdim) is the
    column norms of its 3x3 part, in mm; the 4th (channel) axis gets spacing 1.

    Returns:
        The path written.

    Raises:
        ValueError: bad shape, non-finite affine, missing affine, non-NIfTI file name, 64-bit values beyond int32.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"path must end with one of {NIFTI_SUFFIXES}, got {path}.")
    if affine is None:
        affine = getattr(data, "affine", None)
        if affine is None:
            raise ValueError("affine is None and data has no .affine (not a MetaTensor); pass a (4, 4) affine.")
    affine = _affine_4x4(affine)
    array = _nifti_ready(_channel_first_to_nifti(to_numpy(data)), dtype)
    image = nib.Nifti1Image(array, affine, dtype=array.dtype)
    image.set_qform(affine, code=_NIFTI_XFORM_SCANNER)
    image.set_sform(affine, code=_NIFTI_XFORM_SCANNER)
    image.header.set_xyzt_units(xyz="mm")
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(image, tmp)
    return path


def read_nifti(path: str | os.PathLike) -> torch.Tensor:
    """The voxels of a NIfTI file as float32, in the file's axis order (a one-channel image written by
    :func:`atomic_write_nifti` reads back as its spatial array)."""
    return torch.from_numpy(np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32)))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload and the CRC-32 of type + payload."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def encode_png(array: np.ndarray, text: Mapping[str, str] | None = None) -> bytes:
    """Encode an 8-bit greyscale (H, W) or RGB (H, W, 3) ``uint8`` array as PNG bytes (no filtering, no interlace).

    ``text`` entries become ``tEXt`` chunks (Latin-1 keywords of 1-79 characters), e.g. a description of the rows.
    """
    if array.dtype != np.uint8:
        raise ValueError(f"array must be uint8, got {array.dtype}; window it first (window_uint8).")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or 0 in array.shape:
        raise ValueError(f"array must be a non-empty (H, W) greyscale or (H, W, 3) RGB image, got {array.shape}.")
    height, width = array.shape[:2]
    colour_type = 0 if array.ndim == 2 else 2
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    rows = np.ascontiguousarray(array).reshape(height, -1)
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 per row
    chunks = [_png_chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        chunks.append(_png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace")))
    chunks += [_png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)), _png_chunk(b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(chunks)


def write_png(
    path: str | os.PathLike, array: np.ndarray, text: Mapping[str, str] | None = None, overwrite: bool = False
) -> Path:
    """Write a uint8 greyscale (H, W) or RGB (H, W, 3) image as PNG atomically; see :func:`encode_png`."""
    payload = encode_png(np.asarray(array), text)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def window_uint8(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Map ``image`` linearly to uint8: ``value_range`` (lo, hi) -> (0, 255), clipped; ``None`` uses its min/max.

    A constant image (or lo == hi) maps to 0. Non-finite values map to 0.
    """
    image = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(image.min()), float(image.max())) if value_range is None else map(float, value_range)
    if hi < lo:
        raise ValueError(f"value_range must be (low, high) with low <= high, got {value_range}.")
    if hi == lo:
        return np.zeros(image.shape, np.uint8)
    return np.round(np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def _mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of a 2D boolean mask: mask pixels with a 4-neighbour outside the mask (or the image)."""
    padded = np.pad(mask, 1, constant_values=False)
    eroded = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~eroded


def overlay_outline(gray: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = OUTLINE_RED) -> np.ndarray:
    """Draw the boundary of a boolean mask in ``colour`` on a uint8 greyscale image.

    Args:
        gray: (H, W) uint8 image.
        mask: (H, W) boolean mask (any non-zero value counts as inside).
        colour: RGB colour of the outline (red by default).

    Returns:
        (H, W, 3) uint8 image: ``gray`` in all channels, outline pixels (mask pixels with a 4-connected neighbour
        outside the mask) set to ``colour``.
    """
    gray, mask = np.asarray(gray), np.asarray(mask).astype(bool)
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"gray must be a (H, W) uint8 image, got shape {gray.shape} and dtype {gray.dtype}.")
    if mask.shape != gray.shape:
        raise ValueError(f"mask must have the shape of gray {gray.shape}, got {mask.shape}.")
    rgb = gray_to_rgb(gray)
    rgb[_mask_boundary(mask)] = colour
    return rgb


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Repeat a (H, W) image into the three channels of an (H, W, 3) image of the same dtype."""
    return np.repeat(np.asarray(gray)[..., None], 3, axis=2)


def _as_cell(image: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """A montage cell as (H, W, 3) uint8: 2D images are windowed, RGB images must already be uint8."""
    image = to_numpy(image)
    if image.ndim == 2:
        return gray_to_rgb(window_uint8(image, value_range))
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    raise ValueError(f"montage images must be 2D (H, W) or uint8 RGB (H, W, 3), got {image.shape} {image.dtype}.")


def montage(
    rows: Sequence[Sequence[np.ndarray]], value_range: tuple[float, float] | None = None, pad: int = 2
) -> np.ndarray:
    """Tile rows of 2D images into one uint8 image.

    Args:
        rows: list of rows, each a list of images; a 2D (H, W) image is windowed to uint8 (per image when
            ``value_range`` is None, else with the shared ``value_range``); an (H, W, 3) uint8 image (e.g. from
            :func:`overlay_outline`) is used as it is. Rows may have different lengths and images different sizes.
        value_range: shared (low, high) intensity window, or None for each image's own min/max.
        pad: black pixels between cells and around the border.

    Returns:
        (H_total, W_total) greyscale uint8 when no cell is RGB, else (H_total, W_total, 3). Every cell has the largest
        height and width of all images (images top-left aligned); H_total = n_rows * (cell_h + pad) + pad and
        W_total = n_columns * (cell_w + pad) + pad.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}.")
    if not rows or not all(len(row) for row in rows):
        raise ValueError(f"rows must be a non-empty list of non-empty rows, got row lengths {[len(r) for r in rows]}.")
    cells = [[_as_cell(image, value_range) for image in row] for row in rows]
    any_rgb = any(to_numpy(image).ndim == 3 for row in rows for image in row)
    cell_h = max(cell.shape[0] for row in cells for cell in row)
    cell_w = max(cell.shape[1] for row in cells for cell in row)
    n_cols = max(len(row) for row in cells)
    canvas = np.zeros((len(cells) * (cell_h + pad) + pad, n_cols * (cell_w + pad) + pad, 3), np.uint8)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            top, left = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
            canvas[top : top + cell.shape[0], left : left + cell.shape[1]] = cell
    return canvas if any_rgb else canvas[..., 0]


def central_slices(volume: np.ndarray | torch.Tensor) -> tuple[np.ndarray, ...]:
    """Central slices of a RAS-oriented 3D volume (X, Y, Z), rotated for display; a 2D image is returned as is.

    Returns:
        For 3D: (axial (Y, X), coronal (Z, X), sagittal (Z, Y)). Axial is the plane normal to the last axis with
        anterior at the top; coronal and sagittal have superior at the top. Columns run along increasing X
        (patient left on the image left, neurological convention) or increasing Y (anterior on the right).
        For 2D: ``(image,)``.
    """
    volume = to_numpy(volume)
    if volume.ndim == 2:
        return (volume,)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 2D (H, W) or 3D (X, Y, Z), got shape {volume.shape}.")
    x, y, z = (size // 2 for size in volume.shape)
    return np.rot90(volume[:, :, z]), np.rot90(volume[:, y, :]), np.rot90(volume[x, :, :])


def _spatial(array: np.ndarray | torch.Tensor, spatial_dims: int, name: str) -> np.ndarray:
    """Drop leading singleton (batch/channel) axes so that exactly ``spatial_dims`` axes remain."""
    array = to_numpy(array)
    while array.ndim > spatial_dims and array.shape[0] == 1:
        array = array[0]
    if array.ndim != spatial_dims:
        raise ValueError(
            f"{name} must have {spatial_dims} spatial axes after dropping leading singleton axes, got shape "
            f"{array.shape}; pass each channel as its own entry."
        )
    return array


def enlargement_factor(shape: Sequence[int], min_cell_size: int) -> int:
    """Smallest integer factor (>= 1) that makes the longest side of ``shape`` at least ``min_cell_size`` pixels."""
    return max(1, -(-int(min_cell_size) // max(shape)))


def enlarge_nearest(image: np.ndarray, factor: int) -> np.ndarray:
    """Repeat every pixel of a 2D (or (H, W, C)) image ``factor`` times along both image axes."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _preview_row(
    name: str,
    volume: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None,
    spatial_dims: int,
    value_range: tuple[float, float] | None,
    min_cell_size: int = 1,
) -> list[np.ndarray]:
    """RGB uint8 central slices of one volume, windowed here (montage must not window again), outlined if masked.

    Slices are enlarged by an integer nearest-neighbour factor until their longer side reaches ``min_cell_size``
    (small volumes such as 32^3 phantoms stay readable); the outline is drawn after enlarging, so it stays thin.
    """
    volume = _spatial(volume, spatial_dims, name)
    factor = enlargement_factor(volume.shape, min_cell_size)

    def enlarge(image: np.ndarray) -> np.ndarray:
        return enlarge_nearest(image, factor)

    slices = [enlarge(window_uint8(s, value_range)) for s in central_slices(volume)]
    if mask is None:
        return [gray_to_rgb(s) for s in slices]
    mask = _spatial(mask, spatial_dims, f"mask of {name}").astype(bool)
    if mask.shape != volume.shape:
        raise ValueError(f"mask of {name} must have the volume's spatial shape {volume.shape}, got {mask.shape}.")
    return [overlay_outline(s, enlarge(m)) for s, m in zip(slices, central_slices(mask))]


def save_preview_png(
    path: str | os.PathLike,
    volumes: Sequence[tuple[str, np.ndarray | torch.Tensor]],
    masks: Sequence[np.ndarray | torch.Tensor | None] | None = None,
    spatial_dims: int = 3,
    value_range: tuple[float, float] | None = None,
    overwrite: bool = False,
    min_cell_size: int = 160,
) -> Path:
    """Write a PNG montage of central slices: one row per volume, columns axial / coronal / sagittal (3D).

    Args:
        path: destination ``.png``.
        volumes: (name, array) pairs; arrays are (X, Y, Z) or (H, W), optionally with leading singleton axes such as
            a channel (1, X, Y, Z). The names are stored in the PNG's ``Description`` text chunk, one per row.
        masks: optional list aligned with ``volumes``; each entry a boolean mask of that volume's spatial shape (its
            outline is drawn in red on every slice) or None.
        spatial_dims: 3 for volumes, 2 for images (one column).
        value_range: shared intensity window (low, high); None windows every slice by its own min/max.
        overwrite: replace an existing file.
        min_cell_size: small slices are enlarged (integer nearest-neighbour factor) to at least this many pixels
            on their longer side.

    Returns:
        The path written.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if not volumes:
        raise ValueError("volumes must hold at least one (name, array) pair, got none.")
    masks = [None] * len(volumes) if masks is None else list(masks)
    if len(masks) != len(volumes):
        raise ValueError(f"masks must have one entry per volume ({len(volumes)}), got {len(masks)}.")
    rows = [
        _preview_row(name, volume, mask, spatial_dims, value_range, min_cell_size)
        for (name, volume), mask in zip(volumes, masks)
    ]
    description = "rows: " + ", ".join(name for name, _ in volumes)
    return write_png(path, montage(rows), text={"Description": description}, overwrite=overwrite)


def write_image_label_pair(
    folder: str | os.PathLike,
    names: tuple[str, str],
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
) -> dict[str, str]:
    """Write a 2D/3D ``image`` and its ``label`` (no channel axis) as NIfTI under ``folder`` at the relative ``names``
    (image, label) with one ``affine``; returns the datalist entry ``{"image": names[0], "label": names[1]}``."""
    atomic_write_nifti(image[None], affine, Path(folder) / names[0])
    atomic_write_nifti(label[None], affine, Path(folder) / names[1])
    return {"image": names[0], "label": names[1]}
