"""2D phantoms for the ``swin_ddpm`` bundle (MT-DDPM, paper 002): one kind per kind of image the paper synthesises.

- ``chest_xray``: a posterior-anterior chest radiograph, the digitally reconstructed radiograph (DRR) of the
  project's thorax CT phantom (:func:`common.data.phantoms.thorax.thorax_ct_phantom`): CT numbers become linear
  attenuation ``mu = mu_water * max(1 + HU / 1000, 0)`` (``mu_water`` 0.02 / mm, about 70 keV), integrated along the
  anterior-posterior axis; the line integral is displayed (dense = bright) as an 8-bit PNG, as NIH ChestX-ray14
  stores its images. Rows run from the head down, columns across the patient.
- ``cardiac_mri``: an ACDC-style short-axis cine MRI slice (bSSFP-like contrast, arbitrary units): torso with
  subcutaneous fat over muscle, both lungs, the heart left of the midline (left-ventricular blood pool inside a
  myocardial ring, the right ventricle as a crescent beside it), descending aorta and spine; partial volumes by
  supersampling, a smooth bias field and Rician noise. Written as a 2D NIfTI at 2 mm by default.
- ``axial_ct``: an axial CT slice in Hounsfield units, cut from the thorax CT phantom at a random height between
  the mid-chest and the upper abdomen (liver below the diaphragm). The project has no abdominal CT phantom below it:
  the slices stand in for the abdominal CT dataset (BTCV) in shape, HU range and noise, not in anatomy.
- ``pelvic_ct``: an axial pelvic CT slice in HU (:func:`common.data.phantoms.pelvis.pelvic_ct_slice`): body outline,
  subcutaneous and pelvic fat, muscle, iliac wings and sacrum or femoral heads in their acetabula and the coccyx
  (cortex around cancellous bone), the bladder and the rectum with some gas; 400 mm field of view.

``write_slice_phantoms`` writes one kind as files plus a ``dataset.json`` (``training``: ``[{"case_id", "image"}]``)
atomically; case ``i`` draws from ``numpy.random.default_rng((seed, i))``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from common.data.phantoms.geometry import phantom_affine
from common.data.phantoms.pelvis import pelvic_ct_slice
from common.data.phantoms.thorax import thorax_ct_phantom
from common.io import atomic_folder, atomic_write_nifti, write_png

__all__ = [
    "SLICE_PHANTOM_KINDS",
    "chest_radiograph_drr",
    "cardiac_mri_slice",
    "axial_ct_slice",
    "write_slice_phantoms",
]

_MU_WATER_PER_MM = 0.02
_DRR_FULL_SCALE = 8.0  # line integral shown as white (about 400 mm of water)
_THORAX_FOV_MM = (350.0, 350.0, 300.0)
_MIN_SIZE = 8


def _thorax_ct(size: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A thorax CT phantom on a cube of ``min(size, 64)`` voxels over 350 x 350 x 300 mm (finer adds no anatomy)."""
    n = max(min(int(size), 64), 16)
    spacing = tuple(fov / n for fov in _THORAX_FOV_MM)
    return thorax_ct_phantom((n, n, n), spacing, rng).images["ct"], spacing


def _to_size(image: np.ndarray, size: int) -> np.ndarray:
    return zoom(image, (size / image.shape[0], size / image.shape[1]), order=1, grid_mode=True, mode="nearest")


def chest_radiograph_drr(size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) uint8 PA chest radiograph: the DRR of one thorax CT phantom (module docstring)."""
    ct, spacing = _thorax_ct(size, rng)
    attenuation = _MU_WATER_PER_MM * np.maximum(1.0 + ct / 1000.0, 0.0)
    line_integral = attenuation.sum(axis=1) * spacing[1]  # (X, Z): along anterior-posterior
    radiograph = np.flipud(line_integral.T)  # rows from the head down
    radiograph = _to_size(radiograph, size) / _DRR_FULL_SCALE
    radiograph = radiograph + rng.normal(0.0, 0.01, radiograph.shape)
    return np.round(255.0 * np.clip(radiograph, 0.0, 1.0)).astype(np.uint8)


def axial_ct_slice(size: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float]]:
    """A (size, size) float32 axial CT slice in HU and its pixel size (mm) (module docstring)."""
    ct, _ = _thorax_ct(size, rng)
    height = int(rng.integers(int(0.15 * ct.shape[2]), int(0.55 * ct.shape[2]) + 1))
    image = _to_size(ct[:, :, height], size).astype(np.float32)
    return image, (_THORAX_FOV_MM[0] / size, _THORAX_FOV_MM[1] / size)


def _ellipse(x: np.ndarray, y: np.ndarray, centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 <= 1.0


def cardiac_mri_slice(size: int, rng: np.random.Generator, spacing_mm: float = 2.0) -> np.ndarray:
    """A (size, size) float32 short-axis cardiac MRI slice at ``spacing_mm`` (module docstring).

    The torso (about 340 x 230 mm) is centred; a field of view smaller than the torso crops it, a larger one pads
    with background (ACDC slices are boundary-padded to 256 x 256 at 2 mm in the paper).
    """
    supersample = 2
    fine = size * supersample
    coordinates = (np.arange(fine) - (fine - 1) / 2.0) * spacing_mm / supersample
    x, y = np.meshgrid(coordinates, -coordinates, indexing="xy")  # x to the patient's left, y anterior
    scale = rng.uniform(0.9, 1.1, size=2)
    body_axes = (170.0 * scale[0], 115.0 * scale[1])
    fat = rng.uniform(8.0, 16.0)
    signal = np.zeros_like(x)
    signal[_ellipse(x, y, (0.0, 0.0), body_axes)] = rng.uniform(0.7, 0.85)  # subcutaneous fat
    signal[_ellipse(x, y, (0.0, 0.0), (body_axes[0] - fat, body_axes[1] - fat))] = rng.uniform(0.3, 0.4)  # muscle
    for side in (-1.0, 1.0):
        lung = _ellipse(x, y, (side * 0.45 * body_axes[0], 5.0), (0.33 * body_axes[0], 0.62 * body_axes[1]))
        signal[lung] = rng.uniform(0.03, 0.08)
    heart = np.array([rng.uniform(10.0, 30.0), rng.uniform(10.0, 30.0)])
    lv_radius = rng.uniform(17.0, 27.0)
    wall = rng.uniform(7.0, 11.0)
    rv_centre = heart + np.array([-(lv_radius + wall) * rng.uniform(0.8, 1.0), rng.uniform(-2.0, 8.0)])
    rv_axes = (lv_radius * rng.uniform(1.1, 1.4), lv_radius * rng.uniform(0.9, 1.2))
    signal[_ellipse(x, y, tuple(rv_centre), (rv_axes[0] + 3.0, rv_axes[1] + 3.0))] = rng.uniform(0.25, 0.35)
    signal[_ellipse(x, y, tuple(rv_centre), rv_axes)] = rng.uniform(0.8, 0.95)  # right-ventricular blood
    signal[_ellipse(x, y, tuple(heart), (lv_radius + wall, lv_radius + wall))] = rng.uniform(0.25, 0.35)  # myocardium
    signal[_ellipse(x, y, tuple(heart), (lv_radius, lv_radius))] = rng.uniform(0.85, 1.0)  # left-ventricular blood
    spine = (0.0, -0.72 * body_axes[1])
    signal[_ellipse(x, y, spine, (16.0, 14.0))] = rng.uniform(0.45, 0.55)  # marrow
    signal[_ellipse(x, y, (spine[0] - 18.0, spine[1] + 22.0), (10.0, 10.0))] = rng.uniform(0.75, 0.9)  # aorta
    image = signal.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    bias = 1.0 + 0.1 * gaussian_filter(rng.normal(size=image.shape), sigma=size / 6.0, mode="wrap") * size / 6.0
    image = image * np.clip(bias, 0.8, 1.2)
    noise = rng.uniform(0.015, 0.03)
    image = np.hypot(image + rng.normal(0.0, noise, image.shape), rng.normal(0.0, noise, image.shape))
    return (1000.0 * image).astype(np.float32)


@dataclass(frozen=True)
class _SliceKind:
    description: str
    suffix: str
    write: Callable[[Path, int, np.random.Generator], None]


def _slice_affine(size: int, spacing: tuple[float, float]) -> np.ndarray:
    """RAS affine of a (size, size) slice centred on the origin, 1 mm thick."""
    return phantom_affine((size, size, 1), (*spacing, 1.0))


def _write_chest_xray(path: Path, size: int, rng: np.random.Generator) -> None:
    write_png(path, chest_radiograph_drr(size, rng))


def _write_cardiac_mri(path: Path, size: int, rng: np.random.Generator) -> None:
    spacing = 2.0 * 256 / size  # the paper's 256 px at 2 mm: a smaller grid keeps the field of view
    atomic_write_nifti(cardiac_mri_slice(size, rng, spacing)[None], _slice_affine(size, (spacing, spacing)), path)


def _write_axial_ct(path: Path, size: int, rng: np.random.Generator) -> None:
    image, spacing = axial_ct_slice(size, rng)
    atomic_write_nifti(np.round(image)[None], _slice_affine(size, spacing), path, dtype="int16")


def _write_pelvic_ct(path: Path, size: int, rng: np.random.Generator) -> None:
    phantom = pelvic_ct_slice(size, rng)
    atomic_write_nifti(np.round(phantom.image)[None], _slice_affine(size, phantom.spacing), path, dtype="int16")


SLICE_PHANTOM_KINDS: dict[str, _SliceKind] = {
    "chest_xray": _SliceKind("DRR chest radiographs of the thorax CT phantom (8-bit PNG)", ".png", _write_chest_xray),
    "cardiac_mri": _SliceKind("ACDC-style short-axis cardiac MRI slices", ".nii.gz", _write_cardiac_mri),
    "axial_ct": _SliceKind("axial CT slices of the thorax CT phantom (HU)", ".nii.gz", _write_axial_ct),
    "pelvic_ct": _SliceKind("axial pelvic CT slices (HU)", ".nii.gz", _write_pelvic_ct),
}
"""Kind name -> how its cases are drawn and written."""


def write_slice_phantoms(kind: str, out_dir: str | Path, n: int = 32, size: int = 256, seed: int = 0) -> Path:
    """Write ``n`` 2D phantom images of ``kind`` under ``out_dir/images/`` plus ``out_dir/dataset.json``, atomically.

    Raises:
        ValueError: unknown ``kind``, ``n`` < 1 or ``size`` < 8.
        FileExistsError: ``out_dir`` exists and is not empty.
    """
    if kind not in SLICE_PHANTOM_KINDS:
        raise ValueError(
            f"phantom kind (config key 'phantom_kind') must be one of {sorted(SLICE_PHANTOM_KINDS)}, got {kind!r}"
        )
    if int(n) < 1 or int(size) < _MIN_SIZE:
        raise ValueError(f"phantoms need n >= 1 and size >= {_MIN_SIZE}, got n={n}, size={size}")
    spec = SLICE_PHANTOM_KINDS[kind]
    with atomic_folder(out_dir) as staging:
        (staging / "images").mkdir()
        entries = []
        for index in range(int(n)):
            case_id = f"{kind}_{index:04d}"
            spec.write(staging / "images" / f"{case_id}{spec.suffix}", int(size), np.random.default_rng((seed, index)))
            entries.append({"case_id": case_id, "image": f"images/{case_id}{spec.suffix}"})
        description = {"name": kind, "description": spec.description, "numTraining": len(entries)}
        (staging / "dataset.json").write_text(json.dumps({**description, "training": entries}, indent=2) + "\n")
    return Path(out_dir)
