"""2D mammography phantoms for the ``mammo_guidance`` bundle (paper 003): the RSNA, INbreast and mini-DDSM stand-ins.

A case is one processed (for-presentation) mammogram, chest wall on the left, nipple to the right, intensities in
[0, 1] (brighter is denser), on a square grid over ``FIELD_OF_VIEW_MM``:

- view ``CC`` or ``MLO``: a breast outline (a half ellipse from the chest wall with a wavy skin line; MLO longer,
  tilted and with the pectoral muscle as a bright triangle in the upper left corner);
- thickness falloff: the compressed breast thins towards the skin line, so intensity falls there;
- fibroglandular texture: a smooth random field thresholded to the BI-RADS density category's glandular share
  (a fatty, b scattered, c heterogeneously dense, d extremely dense), concentrated behind the nipple;
- lesions with labels: a mass (an irregular, spiculated blob brighter than the glands) or a calcification cluster
  (a few very bright dots); an image with a lesion has ``cancer = 1`` (the per-image flag RSNA gives).

Labels: 0 background, 1 breast, 2 pectoral muscle, 3 mass, 4 calcification.

Streams (each from its own random stream, so they never share a case):

- the training set (RSNA stand-in): ``cancer_fraction`` of the cases have a lesion;
- pathology patches (INbreast stand-in): square crops centred on the lesion of a separately drawn case, a mass or
  a calcification cluster (``calcification_patch_fraction`` of them, default half), with the lesion mask and the
  kind (``lesion`` in ``dataset.json``), written under ``patches/``;
- a shifted test set (mini-DDSM stand-in): ``shifted=True`` draws denser breasts, lower contrast (a gamma of 1.4 on
  the image), stronger noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from common.io import atomic_folder, write_image_label_pair

__all__ = [
    "FIELD_OF_VIEW_MM",
    "MAMMOGRAPHY_LABELS",
    "DENSITY_CATEGORIES",
    "MammogramCase",
    "mammogram_phantom",
    "pathology_patch",
    "patch_lesion_kinds",
    "mammography_affine",
    "write_mammography_dataset",
    "PLANAR_PHANTOMS",
]

FIELD_OF_VIEW_MM = 240.0
"""Side of the square field of view (mm)."""

MAMMOGRAPHY_LABELS = {"0": "background", "1": "breast", "2": "pectoral muscle", "3": "mass", "4": "calcification"}
DENSITY_CATEGORIES = {"a": 0.1, "b": 0.3, "c": 0.55, "d": 0.8}
"""BI-RADS density category -> share of the breast that is fibroglandular."""

_PATCH_STREAM = 1
_SHIFTED_STREAM = 2
_MIN_SIZE = 32


@dataclass(frozen=True)
class MammogramCase:
    """One phantom mammogram: ``image`` (H, W) float32 in [0, 1], ``label`` (H, W) uint8 (``MAMMOGRAPHY_LABELS``),
    ``view`` "CC" / "MLO", ``density`` "a".."d", ``cancer`` 0/1, ``lesion`` "none" / "mass" / "calcification"."""

    image: np.ndarray
    label: np.ndarray
    view: str
    density: str
    cancer: int
    lesion: str


def _smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal((size, size)), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def _outline(size: int, rng: np.random.Generator, view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(breast mask, normalised radius r in [0, 1] inside, pectoral mask) of one breast on a size x size grid."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) / size
    centre = rng.uniform(0.45, 0.55) + (0.05 if view == "MLO" else 0.0)
    depth = rng.uniform(0.55, 0.7) if view == "CC" else rng.uniform(0.7, 0.85)
    height = rng.uniform(0.33, 0.42) if view == "CC" else rng.uniform(0.4, 0.47)
    tilt = 0.0 if view == "CC" else rng.uniform(0.15, 0.3)
    dy, dx = rows - centre - tilt * (cols - 0.0) * 0.5, cols
    angle = np.arctan2(dy / height, dx / depth)
    wobble = 1.0 + sum(rng.uniform(-0.04, 0.04) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    radius = np.sqrt((dy / height) ** 2 + (dx / depth) ** 2) / wobble
    breast = radius < 1.0
    pectoral = np.zeros_like(breast)
    if view == "MLO":
        width, length = rng.uniform(0.18, 0.3), rng.uniform(0.45, 0.65)
        pectoral = (cols / width + rows / length < 1.0) & breast
    return breast, np.clip(radius, 0.0, 1.0), pectoral


def _mass(size: int, rng: np.random.Generator, centre: tuple[float, float], radius_px: float) -> np.ndarray:
    """(H, W) mass profile in [0, 1]: an irregular spiculated blob around ``centre`` (row, col in pixels)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = rows - centre[0], cols - centre[1]
    angle = np.arctan2(dy, dx)
    spikes = int(rng.integers(5, 10))
    edge = radius_px * (1.0 + 0.25 * np.cos(spikes * angle + rng.uniform(0, 2 * np.pi)) + rng.uniform(-0.1, 0.1))
    distance = np.sqrt(dy**2 + dx**2)
    return np.clip(1.2 - distance / np.maximum(edge, 1e-6), 0.0, 1.0) ** 0.7


def _lesion_centre(rng: np.random.Generator, breast: np.ndarray, radius: np.ndarray, margin: float) -> tuple[int, int]:
    """A pixel well inside the breast (normalised radius below 0.75, ``margin`` pixels from the image edge)."""
    size = breast.shape[0]
    candidates = np.argwhere((radius < 0.75) & breast)
    candidates = candidates[(candidates.min(axis=1) >= margin) & (candidates.max(axis=1) < size - margin)]
    row, col = candidates[rng.integers(len(candidates))]
    return int(row), int(col)


def mammogram_phantom(
    size: int,
    rng: np.random.Generator,
    lesion: str | None = None,
    shifted: bool = False,
    view: str | None = None,
) -> MammogramCase:
    """One phantom mammogram on a ``size`` x ``size`` grid (see the module docstring).

    Args:
        size: pixels per side (>= 32); the field of view is ``FIELD_OF_VIEW_MM`` whatever the size.
        rng: the case's random stream.
        lesion: "none", "mass" or "calcification"; None draws "none" (no cancer) -- the writer decides the mix.
        shifted: the mini-DDSM-like domain shift (denser, lower contrast, noisier).
        view: "CC" or "MLO"; None draws one.
    """
    if int(size) < _MIN_SIZE:
        raise ValueError(f"config key 'phantom_size': expected >= {_MIN_SIZE} pixels, got {size}")
    size = int(size)
    view = view or str(rng.choice(["CC", "MLO"]))
    weights = [0.05, 0.15, 0.4, 0.4] if shifted else [0.15, 0.4, 0.35, 0.1]
    density = str(rng.choice(list(DENSITY_CATEGORIES), p=weights))
    breast, radius, pectoral = _outline(size, rng, view)
    thickness = np.sqrt(np.clip(1.0 - radius**2, 0.0, 1.0)) * breast
    behind_nipple = np.exp(-(((radius - 0.35) / 0.45) ** 2))
    texture = 0.6 * _smooth_field(rng, size, size / 40) + 0.4 * _smooth_field(rng, size, size / 14)
    texture += 1.2 * behind_nipple
    inside = texture[breast & ~pectoral]
    threshold = np.quantile(inside, 1.0 - DENSITY_CATEGORIES[density]) if inside.size else 0.0
    gland = np.clip((texture - threshold) * 2.0 + 0.5, 0.0, 1.0)
    image = thickness * (0.35 + 0.35 * gland)
    image = np.where(pectoral, 0.55 + 0.3 * thickness, image)
    label = np.where(breast, 1, 0).astype(np.uint8)
    label[pectoral] = 2
    pixel_mm = FIELD_OF_VIEW_MM / size
    kind = lesion or "none"
    if kind == "mass":
        radius_px = rng.uniform(7.0, 14.0) / pixel_mm
        centre = _lesion_centre(rng, breast & ~pectoral, radius, margin=radius_px + 2)
        profile = _mass(size, rng, centre, radius_px) * breast
        image = image + 0.35 * profile
        label[(profile > 0.3) & breast] = 3
    elif kind == "calcification":
        centre = _lesion_centre(rng, breast & ~pectoral, radius, margin=4)
        for _ in range(int(rng.integers(4, 9))):
            row = int(np.clip(centre[0] + rng.normal(0, 6.0 / pixel_mm + 0.5), 0, size - 1))
            col = int(np.clip(centre[1] + rng.normal(0, 6.0 / pixel_mm + 0.5), 0, size - 1))
            if breast[row, col]:
                image[row, col] += 0.45
                label[row, col] = 4
    elif kind != "none":
        raise ValueError(f"lesion must be 'none', 'mass' or 'calcification', got {lesion!r}")
    image = gaussian_filter(image, 0.5) + rng.normal(0.0, 0.03 if shifted else 0.015, image.shape) * breast
    image = np.clip(image, 0.0, 1.0)
    if shifted:
        image = image**1.4
    return MammogramCase(image.astype(np.float32), label, view, density, int(kind != "none"), kind)


_LESION_LABELS = {"mass": 3, "calcification": 4}
"""Lesion kind -> its value in the label map (``MAMMOGRAPHY_LABELS``)."""
_PATCH_DRAWS = 8


def pathology_patch(
    size: int, patch_size: int, rng: np.random.Generator, shifted: bool = False, lesion: str = "mass"
) -> tuple[np.ndarray, np.ndarray]:
    """A square crop (``patch_size`` pixels) centred on the lesion of a freshly drawn case: (image, lesion mask).

    Args:
        lesion: "mass" (the mask: the mass) or "calcification" (the mask: the cluster's specks; the crop is centred on
            their centroid). A calcification case whose specks all fell outside the crop (or the breast) is drawn
            again from the same stream.
    """
    if int(patch_size) > int(size) or int(patch_size) < 4:
        raise ValueError(f"config key 'patch_size': expected 4 <= patch_size <= {size}, got {patch_size}")
    if lesion not in _LESION_LABELS:
        raise ValueError(f"lesion: expected one of {list(_LESION_LABELS)}, got {lesion!r}")
    value = _LESION_LABELS[lesion]
    for _ in range(_PATCH_DRAWS):
        case = mammogram_phantom(size, rng, lesion=lesion, shifted=shifted)
        rows, cols = np.nonzero(case.label == value)
        if rows.size == 0:
            continue
        half = int(patch_size) // 2
        top = int(np.clip(int(round(rows.mean())) - half, 0, size - patch_size))
        left = int(np.clip(int(round(cols.mean())) - half, 0, size - patch_size))
        window = (slice(top, top + patch_size), slice(left, left + patch_size))
        mask = (case.label[window] == value).astype(np.uint8)
        if mask.any():
            return case.image[window].copy(), mask
    raise RuntimeError(
        f"no {lesion} patch with a lesion pixel in {_PATCH_DRAWS} draws (size {size}, patch {patch_size})"
    )


def patch_lesion_kinds(count: int, calcification_fraction: float) -> list[str]:
    """The lesion kind of patch ``0 .. count - 1``: patch ``j`` is a calcification cluster when
    ``floor((j + 1) f) > floor(j f)`` (f = ``calcification_fraction``), else a mass: the calcification patches are
    spread evenly, ``floor(count f)`` of the first ``count`` (0.5: mass, calcification, mass, ...)."""
    fraction = float(calcification_fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"config key 'calcification_patch_fraction': expected a share in [0, 1], got {fraction}")
    return [
        "calcification" if np.floor((j + 1) * fraction + 1e-9) > np.floor(j * fraction + 1e-9) else "mass"
        for j in range(int(count))
    ]


def mammography_affine(size: int) -> np.ndarray:
    """(4, 4) affine of a size x size mammogram over ``FIELD_OF_VIEW_MM``, centred on the origin (1 mm slice)."""
    spacing = FIELD_OF_VIEW_MM / int(size)
    affine = np.diag([spacing, spacing, 1.0, 1.0])
    affine[:2, 3] = -(int(size) - 1) / 2.0 * spacing
    return affine


def write_mammography_dataset(
    out_dir: str | Path,
    n: int = 32,
    size: int = 64,
    seed: int = 0,
    first: int = 0,
    cancer_fraction: float = 0.5,
    shifted: bool = False,
    patches: int = 6,
    patch_size: int = 16,
    calcification_patch_fraction: float = 0.5,
) -> Path:
    """Write ``n`` phantom mammograms and ``patches`` pathology patches as NIfTI plus a ``dataset.json``.

    Layout: ``imagesTr/mammo_000.nii.gz`` (float32 in [0, 1]), ``labelsTr/mammo_000.nii.gz`` (uint8 labels),
    ``patches/patch_000.nii.gz`` + ``patches/patch_000_mask.nii.gz``; ``dataset.json`` entries
    ``{"image", "label", "view", "density", "cancer", "lesion"}`` under ``training`` and ``{"image", "label",
    "lesion"}`` under ``patches`` (``lesion``: "mass" or "calcification"). Case ``i`` draws from ``(seed, i)`` (the
    shifted set from ``(seed, 2, i)``); patch ``j`` from ``(seed, 1, j)``. Case ``i`` has a lesion when ``i`` falls in
    the first ``cancer_fraction`` share of a cycle of 10 (10 % positives: 0.1), alternating mass / calcification;
    ``calcification_patch_fraction`` of the patches are calcification clusters, spread evenly
    (:func:`patch_lesion_kinds`), the rest masses. Written atomically (a staging folder renamed).

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty.
        ValueError: ``n`` < 1, ``patches`` < 0, ``cancer_fraction`` or ``calcification_patch_fraction`` outside
            [0, 1], bad sizes.
    """
    if int(n) < 1 or int(patches) < 0 or not 0.0 <= float(cancer_fraction) <= 1.0:
        raise ValueError(
            f"expected n >= 1, patches >= 0, 0 <= cancer_fraction <= 1, got {n}, {patches}, {cancer_fraction}"
        )
    patch_kinds = patch_lesion_kinds(int(patches), calcification_patch_fraction)
    affine = mammography_affine(size)
    with atomic_folder(out_dir) as staging:
        entries = []
        positives = round(float(cancer_fraction) * 10)
        for index in range(int(first), int(first) + int(n)):
            stream = (seed, _SHIFTED_STREAM, index) if shifted else (seed, index)
            lesion = ("mass", "calcification")[(index // 10) % 2] if index % 10 < positives else "none"
            case = mammogram_phantom(size, np.random.default_rng(stream), lesion=lesion, shifted=shifted)
            case_id = f"mammo_{index:03d}"
            names = f"imagesTr/{case_id}.nii.gz", f"labelsTr/{case_id}.nii.gz"
            entries.append(
                write_image_label_pair(staging, names, case.image, case.label, affine)
                | {"view": case.view, "density": case.density, "cancer": case.cancer, "lesion": case.lesion}
            )
        patch_entries = []
        for index, kind in enumerate(patch_kinds):
            stream = np.random.default_rng((seed, _PATCH_STREAM, index))
            image, mask = pathology_patch(size, patch_size, stream, lesion=kind)
            names = f"patches/patch_{index:03d}.nii.gz", f"patches/patch_{index:03d}_mask.nii.gz"
            patch_entries.append(write_image_label_pair(staging, names, image, mask, affine) | {"lesion": kind})
        description = {
            "name": "mammography_shifted" if shifted else "mammography",
            "description": "Digital phantom: 2D mammograms (CC/MLO) with masses and calcification clusters"
            + (", shifted domain (mini-DDSM stand-in)" if shifted else ""),
            "modality": {"0": "MG"},
            "labels": MAMMOGRAPHY_LABELS,
            "numTraining": len(entries),
            "training": entries,
            "patches": patch_entries,
        }
        (staging / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    return Path(out_dir)


def _thorax_slices(out_dir: str | Path, **options) -> Path:
    from common.data.phantoms.thorax_slices import write_thorax_slice_dataset

    return write_thorax_slice_dataset(out_dir, **options)


PLANAR_PHANTOMS = {
    "mammography": write_mammography_dataset,
    "mammography_shifted": partial(write_mammography_dataset, shifted=True),
    "thorax_ct_slices": _thorax_slices,
}
"""2D phantom kinds by name: ``(out_dir, **options) -> out_dir`` (``common.data.prepare`` writes them on first use)."""
