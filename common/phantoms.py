"""Digital phantoms that stand in for the real datasets, so every bundle trains and samples without data.

Two brain-MRI phantoms for the ``semantic_mri`` bundle (Med-DDPM, Dorjsembe et al. 2024):

- ``whole_head_mri``: a whole-head contrast-enhanced T1 (T1c) scan that is not skull-stripped, as in the paper's
  clinical radiosurgery dataset, with labels 0 background, 1 head, 2 tumour (enhancing rim + necrotic core).
- ``brats_mri``: a skull-stripped BraTS-style case with four co-registered modalities (T1, T1ce, T2, FLAIR) and the
  BraTS labels 0 background, 1 necrotic core (NCR), 2 oedema (ED), 4 enhancing tumour (ET).

The anatomy has a physical size in millimetres, so a coarse grid shows the same head at a lower resolution. Every
case is drawn from a ``numpy.random.Generator``: head size, shape and pose, cortical folding, ventricle size, and an
irregular ring-enhancing tumour placed inside the brain, clear of the skull. Tissue boundaries carry partial-volume
fractions; images get a smooth multiplicative bias field and noise.

``write_phantom_dataset`` writes a kind as NIfTI files plus a MONAI-decathlon-style ``dataset.json``. Kinds live in
the ``PHANTOM_KINDS`` registry (with ``PHANTOM_ALIASES`` for bundle names) so later bundles add their own anatomies.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.io import atomic_write_nifti

__all__ = [
    "BRATS_MODALITIES",
    "BRATS_TISSUES",
    "PHANTOM_ALIASES",
    "PHANTOM_KINDS",
    "WHOLE_HEAD_TISSUES",
    "PhantomCase",
    "PhantomKind",
    "brats_mri_case",
    "brats_mri_phantom",
    "get_phantom_kind",
    "phantom_affine",
    "phantom_grid",
    "whole_head_mri_case",
    "whole_head_mri_phantom",
    "write_phantom_dataset",
]

BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""BraTS modality names, in the order of the channels and of ``dataset.json`` image lists."""

MIN_GRID_SIZE = 8
"""Smallest number of voxels per axis a phantom grid may have."""

# Noise-free T1c signal per tissue of the whole-head phantom. The enhancing rim is the brightest tissue, well above
# scalp fat and white matter, so a fixed threshold reads the tumour back (see common.intensity_rules).
_WHOLE_HEAD_T1C = {
    "scalp": 0.54,
    "skull": 0.06,
    "diploe": 0.30,
    "csf": 0.12,
    "grey_matter": 0.32,
    "white_matter": 0.42,
    "ventricles": 0.10,
    "oedema": 0.29,
    "enhancing": 1.00,
    "necrosis": 0.16,
}

# Noise-free signal per tissue and BraTS modality. T1: WM > GM > CSF, tumour hypointense; T1ce: enhancing tumour
# brightest; T2: CSF brightest, oedema bright; FLAIR: CSF suppressed, oedema brightest.
_BRATS_SIGNAL = {
    "t1": {
        "csf": 0.18,
        "grey_matter": 0.55,
        "white_matter": 0.75,
        "ventricles": 0.16,
        "oedema": 0.42,
        "enhancing": 0.48,
        "necrosis": 0.22,
    },
    "t1ce": {
        "csf": 0.16,
        "grey_matter": 0.50,
        "white_matter": 0.66,
        "ventricles": 0.14,
        "oedema": 0.38,
        "enhancing": 1.00,
        "necrosis": 0.20,
    },
    "t2": {
        "csf": 1.00,
        "grey_matter": 0.52,
        "white_matter": 0.36,
        "ventricles": 1.00,
        "oedema": 0.80,
        "enhancing": 0.58,
        "necrosis": 0.90,
    },
    "flair": {
        "csf": 0.10,
        "grey_matter": 0.52,
        "white_matter": 0.40,
        "ventricles": 0.08,
        "oedema": 1.00,
        "enhancing": 0.72,
        "necrosis": 0.45,
    },
}

_BIAS_AMPLITUDE = 0.10  # multiplicative bias field spans 1 +- this
_NOISE_FRACTION_OF_WM = 0.02  # noise sigma relative to the white-matter signal


# --------------------------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Waves:
    """A smooth random function: mean of ``sin(frequency * (axis . p) + phase)`` over k waves, values in [-1, 1]."""

    axes: np.ndarray  # (k, 3) unit vectors along which each wave travels
    frequencies: np.ndarray  # (k,) radians per unit of p (per mm for positions)
    phases: np.ndarray  # (k,) radians

    @classmethod
    def sample(cls, rng: np.random.Generator, count: int, frequency_range: tuple[float, float]) -> _Waves:
        """``count`` waves with random directions, frequencies uniform in ``frequency_range`` and random phases."""
        axes = rng.normal(size=(count, 3))
        axes /= np.linalg.norm(axes, axis=1, keepdims=True)
        return cls(axes, rng.uniform(*frequency_range, size=count), rng.uniform(0.0, 2.0 * np.pi, size=count))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Evaluate at ``points`` of shape (3, ...): unit directions, or positions in mm; returns (...) float32."""
        total = np.zeros(points.shape[1:], dtype=np.float32)
        for axis, frequency, phase in zip(self.axes, self.frequencies, self.phases):
            projection = np.tensordot(axis.astype(np.float32), points, axes=1)
            total += np.sin(np.float32(frequency) * projection + np.float32(phase))
        return total / np.float32(len(self.frequencies))


def _rotation(angles: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix for rotations (radians) about x, then y, then z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    about_y = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    about_z = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return about_z @ about_y @ about_x


def _body_frame(shape: Sequence[int], spacing: Sequence[float], centre: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Voxel centres in the body frame ``u = R^T (p - centre)``: array (3, *shape) float32 in mm.

    World positions ``p`` of the voxel centres are centred on 0, as ``phantom_affine`` places them.
    """
    offsets = []
    for axis, (n, s) in enumerate(zip(shape, spacing)):
        world = ((np.arange(n) - (n - 1) / 2.0) * s - centre[axis]).astype(np.float32)
        offsets.append(world.reshape([n if k == axis else 1 for k in range(3)]))
    frame = np.empty((3, *shape), dtype=np.float32)
    for k in range(3):
        frame[k] = sum(np.float32(rotation[j, k]) * offsets[j] for j in range(3))
    return frame


def _norm(vectors: np.ndarray) -> np.ndarray:
    """Euclidean norm over the first axis of a (3, ...) array."""
    return np.sqrt(np.einsum("i...,i...->...", vectors, vectors))


def _directions(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split (3, ...) vectors into length (...) and unit direction (3, ...); the zero vector gets direction 0."""
    length = _norm(vectors)
    return length, vectors / np.maximum(length, np.float32(1e-6))


def _ellipsoid_distance(frame: np.ndarray, semi_axes: Sequence[float]) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipsoid centred at the frame origin.

    First-order estimate ``(r - 1) / |grad r|`` with ``r = |u / a|`` the normalised radius; exact for a sphere.
    """
    a = np.asarray(semi_axes, dtype=np.float32)
    scaled = frame / a[:, None, None, None]
    radius = _norm(scaled)
    gradient = _norm(scaled / a[:, None, None, None])
    gradient_per_radius = np.divide(gradient, radius, out=np.full_like(radius, 1.0 / a.min()), where=radius > 0)
    return (radius - 1.0) / gradient_per_radius


def _inside(signed_distance: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a voxel inside a surface: linear ramp over one voxel across ``distance = 0``."""
    return np.clip(0.5 - signed_distance / np.float32(voxel_mm), 0.0, 1.0).astype(np.float32)


def _composite(layers: Sequence[tuple[str, np.ndarray]], signal: Mapping[str, float]) -> np.ndarray:
    """Paint tissue layers (name, fraction) in order, later ones on top, with ``signal[name]``; background is 0."""
    image = np.zeros_like(layers[0][1])
    for name, fraction in layers:
        image += fraction * (np.float32(signal[name]) - image)
    return image


def _tissue_map(layers: Sequence[tuple[str, np.ndarray]], names: Sequence[str]) -> np.ndarray:
    """Index into ``names`` (0 = background) of the layer with the largest visible share of each voxel (uint8)."""
    remaining = np.ones_like(layers[0][1])  # share not yet covered by the layers above
    best_share = np.zeros_like(remaining)
    tissue = np.zeros(remaining.shape, dtype=np.uint8)
    for name, fraction in reversed(layers):
        share = fraction * remaining
        larger = share > best_share
        tissue[larger] = names.index(name)
        best_share = np.where(larger, share, best_share)
        remaining *= 1.0 - fraction
    tissue[remaining > best_share] = 0
    return tissue


def _bias_field(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative bias field within ``1 +- _BIAS_AMPLITUDE`` on (3, ...) coordinates in mm.

    The mean of three random plane waves with wavelengths of 384-768 mm (2-4 times a 192 mm field of view): a slow
    drift across the head.
    """
    waves = _Waves.sample(rng, count=3, frequency_range=(2.0 * np.pi / 768.0, 2.0 * np.pi / 384.0))
    return 1.0 + np.float32(_BIAS_AMPLITUDE) * waves(frame)


# --------------------------------------------------------------------------------------------------------------------
# shared brain anatomy
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Brain:
    """Random parameters of the intracranial anatomy, in the body frame (mm)."""

    intracranial_axes: np.ndarray  # (3,) semi-axes of the CSF-filled intracranial space
    csf_thickness: float
    cortex_thickness: float
    folds: _Waves
    sulcus_depth: float
    ventricle_scale: float
    tumour_centre: np.ndarray  # (3,)
    tumour_radius: float
    tumour_shape: _Waves
    rim_thickness: float
    oedema_margin: float
    oedema_shape: _Waves


# Sulci run along the zero lines of the random folding function g: the pial surface dips by the sulcus depth times
# exp(-(g / width)^2). White matter dips along a wider profile, so grey matter lines the sulcal walls.
_SULCUS_WIDTH = 0.12
_WHITE_MATTER_SULCUS_WIDTH = 0.25
_TUMOUR_IRREGULARITY = 0.12  # relative radius change of the tumour surface
_TUMOUR_CLEARANCE_MM = 3.0  # smallest gap between the tumour and the deepest sulcus floor
_PLACEMENT_CANDIDATES = 64  # random tumour centres tried per case


def _fibonacci_sphere(count: int) -> np.ndarray:
    """``count`` nearly evenly spread unit vectors, shape (count, 3)."""
    index = np.arange(count) + 0.5
    z = 1.0 - 2.0 * index / count
    azimuth = np.pi * (1.0 + 5.0**0.5) * index
    ring = np.sqrt(1.0 - z * z)
    return np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), z], axis=1)


_SURFACE_DIRECTIONS = _fibonacci_sphere(4000)  # surface samples, under 5 mm apart, for clearance checks


def _sample_brain(rng: np.random.Generator, intracranial_axes: np.ndarray) -> _Brain:
    """Draw cortex, ventricles and a ring-enhancing tumour that stays inside the brain (see ``_place_tumour``)."""
    csf_thickness = rng.uniform(2.0, 4.0)
    sulcus_depth = rng.uniform(5.0, 8.0)
    tumour_radius = rng.uniform(16.5, 25.0)
    # the tumour keeps its clearance from the deepest sulcus floor, not just from the outer brain surface
    reach = tumour_radius * (1.0 + _TUMOUR_IRREGULARITY) + sulcus_depth + _TUMOUR_CLEARANCE_MM
    return _Brain(
        intracranial_axes=intracranial_axes,
        csf_thickness=csf_thickness,
        cortex_thickness=rng.uniform(3.0, 4.0),
        folds=_Waves.sample(rng, count=6, frequency_range=(10.0, 16.0)),
        sulcus_depth=sulcus_depth,
        ventricle_scale=rng.uniform(0.7, 1.4),
        tumour_centre=_place_tumour(rng, intracranial_axes - csf_thickness, reach),
        tumour_radius=tumour_radius,
        tumour_shape=_Waves.sample(rng, count=4, frequency_range=(1.5, 3.5)),
        rim_thickness=rng.uniform(9.0, 12.0),
        oedema_margin=rng.uniform(6.0, 12.0),
        oedema_shape=_Waves.sample(rng, count=4, frequency_range=(1.5, 3.5)),
    )


def _place_tumour(rng: np.random.Generator, pial_axes: np.ndarray, reach: float) -> np.ndarray:
    """Random tumour centre (mm, body frame) at least ``reach`` mm from the pial ellipsoid's surface.

    Candidates are drawn uniformly inside the ellipsoid and the first one far enough from a dense set of surface
    points is kept; the ellipsoid's centre is the fallback (safe whenever ``reach`` is below its smallest semi-axis).
    """
    directions = rng.normal(size=(_PLACEMENT_CANDIDATES, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = rng.uniform(size=(_PLACEMENT_CANDIDATES, 1)) ** (1.0 / 3.0)
    candidates = np.concatenate([pial_axes * directions * radii, np.zeros((1, 3))])
    surface = pial_axes * _SURFACE_DIRECTIONS
    distance = np.sqrt(((candidates[:, None, :] - surface[None, :, :]) ** 2).sum(axis=-1)).min(axis=1)
    return candidates[np.argmax(distance >= reach)]


def _ventricle_distance(frame: np.ndarray, scale: float) -> np.ndarray:
    """Signed distance (mm) to the lateral ventricles: two elongated ellipsoids either side of the midline."""
    semi_axes = np.array([6.0, 24.0, 10.0]) * scale
    distances = []
    for side in (-1.0, 1.0):
        centre = np.array([side * (5.0 + 4.0 * scale), 4.0, 8.0], dtype=np.float32)
        splay = _rotation(np.array([0.0, 0.0, side * np.deg2rad(12.0)]))  # frontal horns diverge
        local = np.tensordot(splay.T.astype(np.float32), frame - centre[:, None, None, None], axes=1)
        distances.append(_ellipsoid_distance(local, semi_axes))
    return np.minimum(*distances)


def _brain_fractions(frame: np.ndarray, brain: _Brain, voxel_mm: float) -> dict[str, np.ndarray]:
    """Partial-volume fractions (float32, shape of the grid) of the nested brain structures.

    Keys: ``intracranial`` (CSF space and all inside), ``brain`` (inside the pial surface), ``white_matter``,
    ``ventricles``, ``oedema`` (only inside the brain), ``tumour`` (enhancing rim and core), ``necrosis`` (core).
    """
    _, directions = _directions(frame)
    folding = brain.folds(directions)
    intracranial = _ellipsoid_distance(frame, brain.intracranial_axes)
    pial = intracranial + brain.csf_thickness + brain.sulcus_depth * np.exp(-np.square(folding / _SULCUS_WIDTH))
    grey_white = (
        intracranial
        + brain.csf_thickness
        + brain.cortex_thickness
        + brain.sulcus_depth * np.exp(-np.square(folding / _WHITE_MATTER_SULCUS_WIDTH))
    )

    tumour_distance, tumour_directions = _directions(
        frame - brain.tumour_centre.astype(np.float32)[:, None, None, None]
    )
    radius = brain.tumour_radius * (1.0 + _TUMOUR_IRREGULARITY * brain.tumour_shape(tumour_directions))
    oedema_radius = radius + brain.oedema_margin * (1.0 + 0.5 * brain.oedema_shape(tumour_directions))
    in_brain = _inside(pial, voxel_mm)
    return {
        "intracranial": _inside(intracranial, voxel_mm),
        "brain": in_brain,
        "white_matter": _inside(grey_white, voxel_mm),
        "ventricles": _inside(_ventricle_distance(frame, brain.ventricle_scale), voxel_mm),
        "oedema": _inside(tumour_distance - oedema_radius, voxel_mm) * in_brain,
        "tumour": _inside(tumour_distance - radius, voxel_mm),
        "necrosis": _inside(tumour_distance - (radius - brain.rim_thickness), voxel_mm),
    }


def _brain_layers(fractions: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Intracranial tissue layers (tissue name, fraction) in painting order, from the CSF space to the necrotic core."""
    return [
        ("csf", fractions["intracranial"]),
        ("grey_matter", fractions["brain"]),
        ("white_matter", fractions["white_matter"]),
        ("ventricles", fractions["ventricles"]),
        ("oedema", fractions["oedema"]),
        ("enhancing", fractions["tumour"]),
        ("necrosis", fractions["necrosis"]),
    ]


def _random_pose(rng: np.random.Generator, max_shift_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre shift (mm) and rotation (up to 8 degrees about each axis) of a head in the field of view."""
    return rng.uniform(-max_shift_mm, max_shift_mm, size=3), _rotation(np.deg2rad(rng.uniform(-8.0, 8.0, size=3)))


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as 3 ints, each at least ``MIN_GRID_SIZE``; ``ValueError`` otherwise."""
    checked = tuple(int(n) for n in shape)
    if len(checked) != 3 or min(checked) < MIN_GRID_SIZE:
        raise ValueError(f"shape must be 3 voxel counts each >= {MIN_GRID_SIZE}, got {tuple(shape)}")
    return checked


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """``spacing`` as 3 positive floats (mm); ``ValueError`` otherwise."""
    checked = tuple(float(s) for s in spacing)
    if len(checked) != 3 or min(checked) <= 0:
        raise ValueError(f"spacing must be 3 positive voxel sizes in mm, got {tuple(spacing)}")
    return checked


# --------------------------------------------------------------------------------------------------------------------
# the two brain phantoms
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomCase:
    """One generated case.

    Attributes:
        images: modality name -> float32 volume (X, Y, Z).
        label: uint8 volume (X, Y, Z) with the kind's label values.
        tissues: uint8 volume (X, Y, Z): index into ``tissue_names`` of the tissue with the largest share of each
            voxel (0 = background); finer than ``label``, for checks of contrast and anatomy.
        tissue_names: tissue names, ``tissue_names[0] == "background"``.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    tissues: np.ndarray
    tissue_names: tuple[str, ...]


WHOLE_HEAD_TISSUES: tuple[str, ...] = ("background", *_WHOLE_HEAD_T1C)
"""Tissue names of ``whole_head_mri_phantom``'s tissue map."""

BRATS_TISSUES: tuple[str, ...] = ("background", *_BRATS_SIGNAL["t1"])
"""Tissue names of ``brats_mri_phantom``'s tissue map."""


def whole_head_mri_phantom(shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator) -> PhantomCase:
    """One whole-head T1c MRI (not skull-stripped) with a ring-enhancing tumour, as in Med-DDPM's clinical data.

    Tissues from outside in: scalp (bright fat), skull (dark tables around a medium diploe), subarachnoid CSF, folded
    grey-matter cortex, white matter (brighter than grey matter), lateral ventricles, and a tumour with a strongly
    enhancing rim (the brightest tissue), a dark necrotic core and hypointense oedema around it. The head (about
    150 x 175 x 160 mm) varies in size, shape and pose; ventricle size, tumour position, radius (about 30-55 mm
    diameter, irregular) and rim thickness (9-12 mm, a closed shell even at 6 mm voxels) vary too.

    Args:
        shape: grid size (X, Y, Z) in voxels; axes point right, anterior, superior (RAS).
        spacing: voxel size (mm) per axis; the grid is centred on the world origin.
        rng: source of all randomness of the case.

    Returns:
        ``PhantomCase`` with ``images["t1c"]`` float32, roughly in [0, 1.1], background near 0 (Rician noise of sigma
        2 % of white matter, smooth bias field within +-10 %); ``label`` uint8: 0 background, 1 head (every head
        tissue, oedema included), 2 tumour (enhancing rim and necrotic core); ``tissues`` over ``WHOLE_HEAD_TISSUES``.
    """
    shape, spacing = _check_shape(shape), _check_spacing(spacing)
    voxel_mm = float(np.mean(spacing))
    head_axes = np.array([74.0, 88.0, 80.0]) * rng.uniform(0.93, 1.03, size=3)
    scalp, skull = rng.uniform(5.0, 8.0), rng.uniform(6.0, 8.0)
    brain = _sample_brain(rng, head_axes - scalp - skull)
    centre, rotation = _random_pose(rng, max_shift_mm=2.0)
    frame = _body_frame(shape, spacing, centre, rotation)

    head = _inside(_ellipsoid_distance(frame, head_axes), voxel_mm)
    fractions = _brain_fractions(frame, brain, voxel_mm)
    layers = [("scalp", head)]
    # skull: dark outer table, fatty (medium) diploe, dark inner table, each a third of its thickness
    for depth, bone in ((scalp, "skull"), (scalp + skull / 3.0, "diploe"), (scalp + 2.0 * skull / 3.0, "skull")):
        layers.append((bone, _inside(_ellipsoid_distance(frame, head_axes - depth), voxel_mm)))
    layers += _brain_layers(fractions)
    signal = _composite(layers, _WHOLE_HEAD_T1C) * _bias_field(frame, rng)

    sigma = _NOISE_FRACTION_OF_WM * _WHOLE_HEAD_T1C["white_matter"]
    real = signal + rng.normal(0.0, sigma, size=shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, size=shape).astype(np.float32)
    image = np.sqrt(real * real + imaginary * imaginary)  # magnitude image: Rician noise, background near 0

    label = np.zeros(shape, dtype=np.uint8)
    label[head >= 0.5] = 1
    label[fractions["tumour"] >= 0.5] = 2
    return PhantomCase(
        {"t1c": image.astype(np.float32)}, label, _tissue_map(layers, WHOLE_HEAD_TISSUES), WHOLE_HEAD_TISSUES
    )


def whole_head_mri_case(
    shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(image, label)`` of ``whole_head_mri_phantom``: T1c float32 (X, Y, Z) and uint8 labels 0/1/2 (X, Y, Z)."""
    case = whole_head_mri_phantom(shape, spacing, rng)
    return case.images["t1c"], case.label


def brats_mri_phantom(shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator) -> PhantomCase:
    """One skull-stripped BraTS-style case: four co-registered modalities and a BraTS tumour segmentation.

    The brain (about 130 x 160 x 120 mm, subarachnoid CSF included) varies in size, shape and pose like the whole-head
    phantom, with the same cortex, ventricles and ring-enhancing tumour. Relative contrasts: T1 WM > GM > CSF with a
    hypointense tumour; T1ce a very bright enhancing rim; T2 CSF brightest and bright oedema; FLAIR dark CSF and the
    brightest oedema.

    Args:
        shape: grid size (X, Y, Z) in voxels (RAS axes); BraTS uses (size, size, 0.75 size) over 192 x 192 x 144 mm.
        spacing: voxel size (mm) per axis; the grid is centred on the world origin.
        rng: source of all randomness of the case.

    Returns:
        ``PhantomCase`` with ``images``: ``BRATS_MODALITIES`` name -> float32, exactly 0 outside the brain mask (no
        noise there), Gaussian noise of sigma 2 % of white matter and a +-10 % bias field inside; ``label`` uint8:
        0 background (healthy brain included, as in BraTS), 1 necrotic core (NCR), 2 oedema (ED), 4 enhancing tumour
        (ET); ``tissues`` over ``BRATS_TISSUES``.
    """
    shape, spacing = _check_shape(shape), _check_spacing(spacing)
    voxel_mm = float(np.mean(spacing))
    brain = _sample_brain(rng, np.array([66.0, 80.0, 60.0]) * rng.uniform(0.93, 1.03, size=3))
    centre, rotation = _random_pose(rng, max_shift_mm=2.0)
    frame = _body_frame(shape, spacing, centre, rotation)
    fractions = _brain_fractions(frame, brain, voxel_mm)
    layers = _brain_layers(fractions)
    in_mask = fractions["intracranial"] >= 0.5
    bias = _bias_field(frame, rng)

    images = {}
    for modality in BRATS_MODALITIES:
        signal = _BRATS_SIGNAL[modality]
        noise = rng.normal(0.0, _NOISE_FRACTION_OF_WM * signal["white_matter"], size=shape).astype(np.float32)
        noisy = _composite(layers, signal) * bias + noise
        images[modality] = np.where(in_mask, np.maximum(noisy, 0.0), 0.0).astype(np.float32)

    seg = np.zeros(shape, dtype=np.uint8)
    seg[in_mask & (fractions["oedema"] >= 0.5)] = 2
    seg[fractions["tumour"] >= 0.5] = 4
    seg[fractions["necrosis"] >= 0.5] = 1
    return PhantomCase(images, seg, _tissue_map(layers, BRATS_TISSUES), BRATS_TISSUES)


def brats_mri_case(
    shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``(images, seg)`` of ``brats_mri_phantom``: modality -> float32 (X, Y, Z), and uint8 BraTS labels (X, Y, Z)."""
    case = brats_mri_phantom(shape, spacing, rng)
    return case.images, case.label


# --------------------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomKind:
    """A registered phantom anatomy and how its dataset is laid out on disk.

    Attributes:
        name: registry key.
        description: one line for ``dataset.json``.
        generate: ``(shape, spacing, rng) -> PhantomCase``.
        field_of_view_mm: default field of view (mm) per axis; a grid of ``size`` voxels along the first axis spans it.
        modalities: image names, in channel order.
        labels: label value -> name, as in ``dataset.json``.
        case_id: format string for case ``i``, e.g. ``"head_{:03d}"``.
        case_files: ``case_id -> (image paths, label path)``, relative to the dataset folder, one image per modality.
    """

    name: str
    description: str
    generate: Callable[[Sequence[int], Sequence[float], np.random.Generator], PhantomCase]
    field_of_view_mm: tuple[float, float, float]
    modalities: tuple[str, ...]
    labels: dict[str, str]
    case_id: str
    case_files: Callable[[str], tuple[list[str], str]]


def _decathlon_files(case: str) -> tuple[list[str], str]:
    return [f"imagesTr/{case}.nii.gz"], f"labelsTr/{case}.nii.gz"


def _brats_files(case: str) -> tuple[list[str], str]:
    return [f"{case}/{case}_{modality}.nii.gz" for modality in BRATS_MODALITIES], f"{case}/{case}_seg.nii.gz"


PHANTOM_KINDS: dict[str, PhantomKind] = {
    "whole_head_mri": PhantomKind(
        name="whole_head_mri",
        description="Digital phantom: whole-head T1c MRI (not skull-stripped) with a ring-enhancing tumour",
        generate=whole_head_mri_phantom,
        field_of_view_mm=(192.0, 192.0, 192.0),
        modalities=("t1c",),
        labels={"0": "background", "1": "head", "2": "tumour"},
        case_id="head_{:03d}",
        case_files=_decathlon_files,
    ),
    "brats_mri": PhantomKind(
        name="brats_mri",
        description="Digital phantom: skull-stripped BraTS-style brain MRI (T1, T1ce, T2, FLAIR) with a glioma",
        generate=brats_mri_phantom,
        field_of_view_mm=(192.0, 192.0, 144.0),
        modalities=BRATS_MODALITIES,
        labels={
            "0": "background",
            "1": "necrotic tumour core (NCR)",
            "2": "peritumoral oedema (ED)",
            "4": "enhancing tumour (ET)",
        },
        case_id="BraTS_phantom_{:05d}",
        case_files=_brats_files,
    ),
}
"""Registered phantom kinds by name; bundles add theirs here."""

PHANTOM_ALIASES: dict[str, str] = {"semantic_mri": "whole_head_mri", "semantic_mri_brats": "brats_mri"}
"""Bundle (variant) names that select a registered kind."""


def get_phantom_kind(kind: str) -> PhantomKind:
    """The registered ``PhantomKind`` for a kind name or alias; ``ValueError`` listing the known ones otherwise."""
    name = PHANTOM_ALIASES.get(kind, kind)
    if name not in PHANTOM_KINDS:
        known = sorted([*PHANTOM_KINDS, *PHANTOM_ALIASES])
        raise ValueError(f"kind must be one of {known}, got {kind!r}")
    return PHANTOM_KINDS[name]


def phantom_grid(
    kind: str, size: int = 64, shape: Sequence[int] | None = None, spacing: Sequence[float] | None = None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Grid (shape in voxels, spacing in mm) of a kind.

    By default the first axis has ``size`` voxels and the others keep the kind's field-of-view proportions
    (whole head: ``size``^3 over 192 mm; BraTS: ``(size, size, round(0.75 size))`` over 192 x 192 x 144 mm).
    An explicit ``shape`` replaces that; an explicit ``spacing`` replaces ``field of view / shape``.
    """
    field_of_view = get_phantom_kind(kind).field_of_view_mm
    if shape is None:
        if int(size) < MIN_GRID_SIZE:
            raise ValueError(f"size must be >= {MIN_GRID_SIZE} voxels, got {size}")
        shape = [round(int(size) * fov / field_of_view[0]) for fov in field_of_view]
    shape = _check_shape(shape)
    if spacing is None:
        spacing = [fov / n for fov, n in zip(field_of_view, shape)]
    return shape, _check_spacing(spacing)


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """4x4 RAS affine: ``spacing`` (mm) on the diagonal, origin placing the volume's centre at world (0, 0, 0)."""
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
    return affine


def _write_cases(phantom: PhantomKind, folder: Path, n: int, grid: tuple, seed: int) -> list[dict]:
    """Generate and save cases 0..n-1 into ``folder``; case ``i`` draws from ``default_rng((seed, i))``."""
    affine = phantom_affine(*grid)
    entries = []
    for index in range(n):
        case_id = phantom.case_id.format(index)
        case = phantom.generate(*grid, np.random.default_rng((seed, index)))
        image_files, label_file = phantom.case_files(case_id)
        for modality, image_file in zip(phantom.modalities, image_files):
            atomic_write_nifti(case.images[modality][None], affine, folder / image_file)
        atomic_write_nifti(case.label[None], affine, folder / label_file)
        entries.append({"image": image_files if len(image_files) > 1 else image_files[0], "label": label_file})
    return entries


def write_phantom_dataset(
    kind: str,
    out_dir: str | Path,
    n: int = 8,
    size: int = 64,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``n`` phantom cases of ``kind`` as NIfTI (float32 images, uint8 labels) plus a decathlon ``dataset.json``.

    Layout: whole head ``imagesTr/head_000.nii.gz`` + ``labelsTr/head_000.nii.gz``; BraTS
    ``BraTS_phantom_00000/BraTS_phantom_00000_{t1,t1ce,t2,flair,seg}.nii.gz``. Case ``i`` uses the random stream
    ``(seed, i)``, so it does not depend on ``n``. Files carry a RAS affine centred on the origin (see
    ``phantom_affine``); the grid comes from ``phantom_grid(kind, size, shape, spacing)``.

    Writing is atomic: everything goes to a temporary sibling folder that is renamed to ``out_dir`` at the end.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty (it is left untouched).
        ValueError: unknown ``kind``, ``n`` < 1, or a bad grid.
    """
    phantom = get_phantom_kind(kind)
    if int(n) < 1:
        raise ValueError(f"n must be >= 1 case, got {n}")
    grid = phantom_grid(kind, size, shape, spacing)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"out_dir {str(out_dir)!r} exists and is not empty; choose a new or empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        entries = _write_cases(phantom, staging, int(n), grid, int(seed))
        description = {
            "name": phantom.name,
            "description": phantom.description,
            "modality": {str(i): name for i, name in enumerate(phantom.modalities)},
            "labels": phantom.labels,
            "numTraining": len(entries),
            "training": entries,
        }
        (staging / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
        staging.replace(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
