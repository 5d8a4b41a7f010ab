"""Tests of common/io.py: atomic NIfTI/PNG/text writing, montages, outlines, central slices and previews."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common import io
from common.io import (
    atomic_path,
    atomic_write_nifti,
    atomic_write_text,
    central_slices,
    encode_png,
    montage,
    overlay_outline,
    read_json_object,
    save_preview_png,
    window_uint8,
    write_png,
)

AFFINE = np.array(
    [[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
)


def decode_png(payload: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """Independent minimal PNG reader for unfiltered 8-bit grey/RGB images: (pixels, tEXt entries)."""
    assert payload[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, []
    while offset < len(payload):
        (length,) = struct.unpack(">I", payload[offset : offset + 4])
        kind, data = payload[offset + 4 : offset + 8], payload[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", payload[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF
        chunks.append((kind, data))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, compression, filtering, interlace) == (8, 0, 0, 0) and colour in (0, 2)
    channels = 1 if colour == 0 else 3
    raw = np.frombuffer(zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT")), np.uint8)
    rows = raw.reshape(height, 1 + width * channels)
    assert np.all(rows[:, 0] == 0)
    pixels = rows[:, 1:].reshape((height, width) if channels == 1 else (height, width, 3))
    text = dict(d.decode("latin-1").split("\0", 1) for k, d in chunks if k == b"tEXt")
    return pixels, text


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------------------- atomic files


def test_atomic_write_text_and_refusal(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    assert atomic_write_text(target, "one") == target
    with pytest.raises(FileExistsError, match="a.txt"):
        atomic_write_text(target, "two")
    atomic_write_text(target, "three", overwrite=True)
    assert target.read_text() == "three"
    assert listing(target.parent) == ["a.txt"]


def test_atomic_path_removes_temporary_file_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert listing(tmp_path) == []


# ------------------------------------------------------------------------------------------------------------ NIfTI


def test_nifti_round_trip_3d(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(1, 4, 5, 6)).astype(np.float32)
    path = atomic_write_nifti(data, AFFINE, tmp_path / "x.nii.gz")
    image = nib.load(path)
    assert image.shape == (4, 5, 6)
    assert image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(image.dataobj), data[0])
    np.testing.assert_allclose(image.affine, AFFINE)
    np.testing.assert_allclose(image.header.get_zooms(), (1.5, 2.0, 2.5))
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(image.header.get_qform(), AFFINE, atol=1e-6)
    assert image.header.get_xyzt_units()[0] == "mm"
    assert listing(tmp_path) == ["x.nii.gz"]


def test_nifti_multichannel_goes_to_fourth_axis(tmp_path: Path) -> None:
    data = torch.arange(3 * 4 * 5 * 6, dtype=torch.float32).reshape(3, 4, 5, 6)
    image = nib.load(atomic_write_nifti(data, AFFINE, tmp_path / "x.nii.gz"))
    assert image.shape == (4, 5, 6, 3)
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.moveaxis(data.numpy(), 0, -1))
    np.testing.assert_allclose(image.header.get_zooms(), (1.5, 2.0, 2.5, 1.0))


def test_nifti_2d_single_and_multichannel(tmp_path: Path) -> None:
    affine_2d = np.array([[0.5, 0.0, 1.0], [0.0, 0.7, 2.0], [0.0, 0.0, 1.0]])
    single = nib.load(atomic_write_nifti(np.ones((1, 4, 5), np.float32), affine_2d, tmp_path / "s.nii.gz"))
    assert single.shape == (4, 5)
    np.testing.assert_allclose(single.header.get_zooms(), (0.5, 0.7))
    np.testing.assert_allclose(single.affine[:2, 3], (1.0, 2.0))
    multi = nib.load(atomic_write_nifti(np.ones((2, 4, 5), np.float32), affine_2d, tmp_path / "m.nii"))
    assert multi.shape == (4, 5, 1, 2)


def test_nifti_takes_metatensor_affine(tmp_path: Path) -> None:
    data = MetaTensor(torch.zeros(1, 3, 3, 3), affine=torch.as_tensor(AFFINE))
    image = nib.load(atomic_write_nifti(data, None, tmp_path / "m.nii.gz"))
    np.testing.assert_allclose(image.affine, AFFINE)


@pytest.mark.parametrize(
    ("data", "dtype", "stored"),
    [
        (np.ones((1, 2, 2, 2), bool), None, np.uint8),
        (np.ones((1, 2, 2, 2), np.int64), None, np.int32),
        (np.ones((1, 2, 2, 2), np.float16), None, np.float32),
        (np.full((1, 2, 2, 2), 3.0), np.int16, np.int16),
    ],
)
def test_nifti_dtypes(tmp_path: Path, data: np.ndarray, dtype: type | None, stored: type) -> None:
    image = nib.load(atomic_write_nifti(data, AFFINE, tmp_path / "d.nii.gz", dtype=dtype))
    assert image.get_data_dtype() == stored
    np.testing.assert_array_equal(np.asarray(image.dataobj), data[0].astype(stored))


def test_nifti_refuses_to_overwrite(tmp_path: Path) -> None:
    path = atomic_write_nifti(np.zeros((1, 2, 2, 2), np.float32), AFFINE, tmp_path / "x.nii.gz")
    with pytest.raises(FileExistsError, match="x.nii.gz"):
        atomic_write_nifti(np.ones((1, 2, 2, 2), np.float32), AFFINE, path)
    assert np.asarray(nib.load(path).dataobj).max() == 0
    atomic_write_nifti(np.ones((1, 2, 2, 2), np.float32), AFFINE, path, overwrite=True)
    assert np.asarray(nib.load(path).dataobj).min() == 1


def test_nifti_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_save(image: nib.Nifti1Image, filename: Path) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_nifti(np.zeros((1, 2, 2, 2), np.float32), AFFINE, tmp_path / "x.nii.gz")
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("data", "affine", "name", "message"),
    [
        (np.zeros((1, 2, 2, 2)), AFFINE, "x.png", "must end with"),
        (np.zeros((2, 2)), AFFINE, "x.nii.gz", "channel-first"),
        (np.zeros((1, 1, 2, 2, 2)), AFFINE, "x.nii.gz", "channel-first"),
        (np.zeros((1, 2, 2, 2)), None, "x.nii.gz", "affine is None"),
        (np.zeros((1, 2, 2, 2)), np.eye(5), "x.nii.gz", "affine must have shape"),
        (np.zeros((1, 2, 2, 2)), np.full((4, 4), np.nan), "x.nii.gz", "finite"),
        (np.zeros((1, 2, 2, 2)), np.ones((4, 4)), "x.nii.gz", "last row"),
        (np.full((1, 2, 2, 2), 2**40, np.int64), AFFINE, "x.nii.gz", "outside int32"),
    ],
)
def test_nifti_rejects_bad_input(
    tmp_path: Path, data: np.ndarray, affine: np.ndarray | None, name: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        atomic_write_nifti(data, affine, tmp_path / name)
    assert listing(tmp_path) == []


# -------------------------------------------------------------------------------------------------------------- PNG


def test_png_greyscale_decodes(tmp_path: Path) -> None:
    pixels = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5) * 17
    path = write_png(tmp_path / "g.png", pixels, text={"Description": "rows: a"})
    decoded, text = decode_png(path.read_bytes())
    np.testing.assert_array_equal(decoded, pixels)
    assert text == {"Description": "rows: a"}
    header = path.read_bytes()[8:33]
    assert header[4:8] == b"IHDR" and struct.unpack(">II", header[8:16]) == (5, 3)


def test_png_rgb_decodes_and_refuses_overwrite(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    path = write_png(tmp_path / "c.png", pixels)
    np.testing.assert_array_equal(decode_png(path.read_bytes())[0], pixels)
    with pytest.raises(FileExistsError, match="c.png"):
        write_png(path, pixels)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 2), np.float32), "must be uint8"),
        (np.zeros((2, 2, 4), np.uint8), "greyscale"),
        (np.zeros((0, 2), np.uint8), "non-empty"),
    ],
)
def test_png_rejects_bad_input(array: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_png(array)


# ------------------------------------------------------------------------------------------ windowing and montages


def test_window_uint8() -> None:
    np.testing.assert_array_equal(window_uint8(np.array([-1.0, 0.0, 1.0, 3.0]), (-1.0, 1.0)), [0, 128, 255, 255])
    np.testing.assert_array_equal(window_uint8(np.array([2.0, 4.0])), [0, 255])
    np.testing.assert_array_equal(window_uint8(np.full(3, 7.0)), [0, 0, 0])
    with pytest.raises(ValueError, match="value_range"):
        window_uint8(np.zeros(3), (1.0, 0.0))


def test_montage_shapes_and_windowing() -> None:
    a, b, c = np.zeros((4, 5)), np.ones((3, 5)), np.linspace(0, 1, 20).reshape(4, 5)
    grey = montage([[a, b], [c]], value_range=(0.0, 1.0), pad=2)
    assert grey.shape == (2 * (4 + 2) + 2, 2 * (5 + 2) + 2) and grey.dtype == np.uint8
    assert np.all(grey[2:5, 9:14] == 255) and np.all(grey[:2] == 0)
    assert grey[8, 2] == 0 and grey[11, 6] == 255
    rgb = montage([[a, np.full((4, 5, 3), 9, np.uint8)]], pad=0)
    assert rgb.shape == (4, 10, 3) and np.all(rgb[:, 5:] == 9)


@pytest.mark.parametrize(
    ("rows", "pad", "message"),
    [
        ([], 2, "non-empty"),
        ([[]], 2, "non-empty"),
        ([[np.zeros((2, 2))]], -1, "pad"),
        ([[np.zeros((2, 2, 2))]], 2, "montage images"),
    ],
)
def test_montage_rejects_bad_input(rows: list, pad: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        montage(rows, pad=pad)


def test_overlay_outline_of_square() -> None:
    gray = np.full((9, 9), 50, np.uint8)
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    rgb = overlay_outline(gray, mask)
    red = np.all(rgb == (255, 0, 0), axis=2)
    expected = mask.copy()
    expected[3:6, 3:6] = False
    np.testing.assert_array_equal(red, expected)
    assert red.sum() == 16
    assert np.all(rgb[~red] == 50)


def test_overlay_outline_at_image_border() -> None:
    red = np.all(overlay_outline(np.zeros((3, 3), np.uint8), np.ones((3, 3), bool)) == (255, 0, 0), axis=2)
    assert red.sum() == 8 and not red[1, 1]


@pytest.mark.parametrize(
    ("gray", "mask", "message"),
    [
        (np.zeros((3, 3), np.float32), np.zeros((3, 3), bool), "uint8"),
        (np.zeros((3, 3), np.uint8), np.zeros((3, 4), bool), "mask must have the shape"),
    ],
)
def test_overlay_outline_rejects_bad_input(gray: np.ndarray, mask: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        overlay_outline(gray, mask)


# --------------------------------------------------------------------------------------------- slices and previews


def test_central_slices_orientation() -> None:
    volume = np.zeros((4, 6, 8))
    volume[:, -1, :] = 1.0  # most anterior plane
    volume[:, :, -1] += 2.0  # most superior plane
    axial, coronal, sagittal = central_slices(volume)
    assert axial.shape == (6, 4) and coronal.shape == (8, 4) and sagittal.shape == (8, 6)
    assert np.all(axial[0] == 1.0) and np.all(axial[1:] == 0.0)
    assert np.all(coronal[0] == 2.0) and np.all(coronal[1:] == 0.0)
    assert np.all(sagittal[0, :-1] == 2.0) and np.all(sagittal[1:, -1] == 1.0)
    image = np.ones((3, 4))
    assert central_slices(torch.as_tensor(image))[0].shape == (3, 4)
    with pytest.raises(ValueError, match="volume must be"):
        central_slices(np.zeros((2, 2, 2, 2)))


def test_save_preview_png_3d(tmp_path: Path) -> None:
    volume = np.random.default_rng(2).normal(size=(1, 8, 8, 8))
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    path = save_preview_png(
        tmp_path / "p.png", [("real", volume), ("fake", torch.as_tensor(volume))], [mask, None], min_cell_size=1
    )
    pixels, text = decode_png(path.read_bytes())
    assert pixels.shape == (2 * (8 + 2) + 2, 3 * (8 + 2) + 2, 3)
    assert text["Description"] == "rows: real, fake"
    assert np.all(pixels[2:10, 2:10] == (255, 0, 0), axis=2).sum() == 12
    assert not np.any(np.all(pixels[12:20] == (255, 0, 0), axis=2))
    assert listing(tmp_path) == ["p.png"]


def test_save_preview_png_2d(tmp_path: Path) -> None:
    path = save_preview_png(
        tmp_path / "p.png", [("a", np.ones((1, 6, 5)))], spatial_dims=2, value_range=(0.0, 1.0), min_cell_size=1
    )
    pixels, _ = decode_png(path.read_bytes())
    assert pixels.shape == (6 + 4, 5 + 4, 3) and np.all(pixels[2:8, 2:7] == 255)


@pytest.mark.parametrize(
    ("volumes", "masks", "spatial_dims", "message"),
    [
        ([("a", np.zeros((4, 4, 4)))], None, 4, "spatial_dims"),
        ([], None, 3, "at least one"),
        ([("a", np.zeros((4, 4, 4)))], [None, None], 3, "one entry per volume"),
        ([("a", np.zeros((2, 4, 4, 4)))], None, 3, "pass each channel"),
        ([("a", np.zeros((4, 4, 4)))], [np.zeros((4, 4, 5), bool)], 3, "mask of a"),
    ],
)
def test_save_preview_png_rejects_bad_input(
    tmp_path: Path, volumes: list, masks: list | None, spatial_dims: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        save_preview_png(tmp_path / "p.png", volumes, masks, spatial_dims=spatial_dims)
    assert listing(tmp_path) == []


def test_save_preview_png_enlarges_small_volumes(tmp_path: Path) -> None:
    volume = np.random.default_rng(3).normal(size=(8, 8, 8))
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    path = save_preview_png(tmp_path / "p.png", [("v", volume)], [mask], min_cell_size=20)
    pixels, _ = decode_png(path.read_bytes())
    # factor ceil(20 / 8) = 3: cells of 24 px, outline drawn after enlarging (one pixel wide)
    assert pixels.shape == (24 + 4, 3 * (24 + 2) + 2, 3)
    red = (pixels[..., 0] == 255) & (pixels[..., 1] == 0)
    assert red[2:26, 2:26].sum() == 4 * 12 - 4


def test_enlargement_helpers():
    from common.io import enlarge_nearest, enlargement_factor

    assert enlargement_factor((32, 20), 160) == 5 and enlargement_factor((200, 10), 160) == 1
    image = np.arange(4).reshape(2, 2)
    np.testing.assert_array_equal(enlarge_nearest(image, 2), [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


def test_read_json_object(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"x": [1, 2]}')
    assert read_json_object(path, "config key 'k'") == {"x": [1, 2]}
    path.write_text("[1]")
    with pytest.raises(ValueError, match=r"^config key 'k': '.*a.json' holds a JSON list, not an object"):
        read_json_object(path, "config key 'k'")
    path.write_text("{broken")
    with pytest.raises(ValueError, match=r"^--meta_file: '.*a.json' is not readable JSON"):
        read_json_object(path, "--meta_file")
    with pytest.raises(ValueError, match=r"'.*absent.json' is not readable JSON"):
        read_json_object(tmp_path / "absent.json", "--meta_file")
