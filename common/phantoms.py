"""Digital phantoms that stand in for the real datasets, so every bundle trains and samples without data.

Two brain-MRI phantoms for the ``semantic_mri`` bundle (Med-DDPM, Dorjsembe et al. 2024):

- ``whole_head_mri``: a whole-head contrast-enhanced T1 (T1c) scan that is not skull-stripped, as in the paper's
  clinical radiosurgery dataset, with labels 0 background, 1 head, 2 tumour (enhancing rim + necrotic core).
- ``brats_mri``: a skull-stripped BraTS-style case with four co-registered modalities (T1, T1ce, T2, FLAIR) and the
  BraTS labels 0 background, 1 necrotic core (NCR), 2 oedema (ED), 4 enhancing tumour (ET).

One head-and-neck PET-CT phantom for the ``paired_petct`` bundle (paired CT / PET / tumour-mask generation):

- ``head_neck_petct``: a HECKTOR 2022-style case from the lower neck up to the lower brain: CT in Hounsfield units,
  FDG PET in SUV and the primary tumour (GTVp) as label 1. As on real scanners, the PET lies on its own coarser grid
  with a shifted origin and a smaller field of view, so a loader must resample it onto the CT grid by the affines.

One chest CT phantom for the ``latent_ct`` bundle (latent diffusion of lung CT with tumours):

- ``thorax_ct``: an NSCLC-Radiomics-style chest CT in Hounsfield units, the patient lying on the couch, with one
  binary mask per structure as an RTSTRUCT export gives them: the primary tumour GTV-1, in some cases nodules GTV-2
  and GTV-3, both lungs, heart, oesophagus and spinal cord. The couch lies outside the body, across an air gap, so a
  body-isolation step can remove it.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.io import atomic_write_nifti

__all__ = [
    "BRATS_MODALITIES",
    "BRATS_TISSUES",
    "HEAD_NECK_TISSUES",
    "HECKTOR_MODALITIES",
    "PHANTOM_ALIASES",
    "PHANTOM_KINDS",
    "WHOLE_HEAD_TISSUES",
    "PhantomCase",
    "PETCT_MODALITIES",
    "PhantomKind",
    "THORAX_STRUCTURES",
    "THORAX_TISSUES",
    "brats_mri_case",
    "brats_mri_phantom",
    "get_phantom_kind",
    "head_neck_petct_phantom",
    "phantom_affine",
    "phantom_grid",
    "thorax_ct_phantom",
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


def _ellipsoid_distance(frame: np.ndarray, semi_axes: Sequence[float] | np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipsoid centred at the frame origin.

    First-order estimate ``(r - 1) / |grad r|`` with ``r = |u / a|`` the normalised radius; exact for a sphere.
    ``frame`` is (D, ...) with D coordinates (D = 2 gives an ellipse); ``semi_axes`` is (D,), or (D, ...) for
    semi-axes that change from point to point (a tube whose cross-section varies along its length).
    """
    a = np.asarray(semi_axes, dtype=np.float32)
    a = a.reshape(a.shape + (1,) * (frame.ndim - a.ndim))
    scaled = frame / a
    radius = _norm(scaled)
    gradient = _norm(scaled / a)
    at_centre = np.empty_like(radius)
    at_centre[...] = 1.0 / a.min(axis=0)
    gradient_per_radius = np.divide(gradient, radius, out=at_centre, where=radius > 0)
    return (radius - 1.0) / gradient_per_radius


def _inside(signed_distance: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a voxel inside a surface: linear ramp over one voxel across ``distance = 0``."""
    return np.clip(0.5 - signed_distance / np.float32(voxel_mm), 0.0, 1.0).astype(np.float32)


def _composite(layers: Sequence[tuple[str, np.ndarray]], signal: Mapping[str, float | np.ndarray]) -> np.ndarray:
    """Paint tissue layers (name, fraction) in order, later ones on top, with ``signal[name]``; background is 0.

    A signal is a number, or an array of the grid's shape for a tissue with texture.
    """
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
        images: modality name -> float32 volume, (X, Y, Z) of the label grid unless ``affines`` gives the modality
            a grid of its own (then any shape).
        label: uint8 volume (X, Y, Z) with the kind's label values.
        tissues: uint8 volume (X, Y, Z): index into ``tissue_names`` of the tissue with the largest share of each
            voxel (0 = background); finer than ``label``, for checks of contrast and anatomy.
        tissue_names: tissue names, ``tissue_names[0] == "background"``.
        affines: modality name -> 4x4 RAS voxel-to-world affine (mm) of a modality on its own grid, e.g. a PET
            reconstructed coarser than the CT. Modalities not listed, and the label and tissues, share the grid the
            case was generated on, whose affine is ``phantom_affine(shape, spacing)``. Default: none.
        masks: structure name -> uint8 (X, Y, Z) binary mask on the label grid, for kinds that store one file per
            structure (RTSTRUCT-style, possibly overlapping) rather than a label map. Default: none.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    tissues: np.ndarray
    tissue_names: tuple[str, ...]
    affines: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)


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
# head-and-neck PET-CT phantom
# --------------------------------------------------------------------------------------------------------------------

PETCT_MODALITIES: tuple[str, ...] = ("ct", "pet")
"""Modalities of ``head_neck_petct_phantom``, in channel order: CT (HU, on the label grid) and FDG PET (SUV)."""

HECKTOR_MODALITIES: tuple[str, ...] = ("CT", "PT")
"""HECKTOR 2022 names of ``PETCT_MODALITIES``: file suffixes (``<case>__CT.nii.gz``) and ``dataset.json`` names."""

# CT numbers (HU) per tissue, in painting order (later tissues on top). The tumour is soft tissue barely denser than
# muscle, as on real CT: only the PET shows it clearly.
_AIR_HU = -1000.0
_HEAD_NECK_HU = {
    "fat": -100.0,  # subcutaneous fat (skin included)
    "muscle": 40.0,  # muscle and other soft tissue
    "parotid": 0.0,  # fatty glandular tissue
    "submandibular": 35.0,
    "airway": _AIR_HU,
    "vertebra": 700.0,  # cancellous bone in a thin cortex, averaged
    "mandible": 1150.0,  # mostly cortical bone
    "skull": 1100.0,
    "csf": 10.0,
    "brain": 35.0,
    "tumour": 50.0,
    "tumour_core": 35.0,  # hypodense (necrotic) centre
}

# FDG uptake (SUV) per tissue: each case draws its value uniformly from the range. The brain is the hottest normal
# tissue; below it the tumour is the hottest region, far above the salivary glands. The tumour core takes a fraction
# (``_TUMOUR_CORE_UPTAKE``) of the tumour's value.
_HEAD_NECK_SUV = {
    "fat": (0.3, 0.5),
    "muscle": (0.8, 1.2),
    "parotid": (2.0, 3.5),
    "submandibular": (2.5, 4.0),
    "airway": (0.0, 0.0),
    "vertebra": (1.2, 1.8),  # red marrow
    "mandible": (0.5, 0.8),
    "skull": (0.5, 0.8),
    "csf": (0.3, 0.5),
    "brain": (7.0, 10.0),
    "tumour": (8.0, 15.0),
}
_TUMOUR_CORE_UPTAKE = (0.6, 0.8)
_TUMOUR_UPTAKE_VARIATION = 0.2  # relative, smooth heterogeneity of the tumour's uptake

HEAD_NECK_TISSUES: tuple[str, ...] = ("background", *_HEAD_NECK_HU)
"""Tissue names of ``head_neck_petct_phantom``'s tissue map (on the CT grid)."""

_CT_NOISE_HU = 15.0
_CT_MIN_HU = -1024.0  # the lowest CT number scanners store
_PET_FWHM_MM = 7.0  # scanner resolution: Gaussian point-spread function
_PET_NOISE = 0.15  # noise sigma = this * sqrt(SUV): Poisson-like, none where there is no activity
_PET_VOXEL_FACTOR = (2.0, 2.0, 1.5)  # PET voxel size / CT voxel size per axis
_PET_FIELD_OF_VIEW_FACTOR = (0.96, 0.96, 0.9)  # PET field of view / CT field of view per axis
_PET_MAX_OFFSET_MM = 4.0  # the PET grid's centre is shifted by up to this from the CT grid's, per axis
_MIN_PET_GRID_SIZE = 4


@dataclass(frozen=True)
class _Tube:
    """A tube along z with elliptic cross-sections: centre y and semi-axes (mm) given at heights z, linear between.

    Beyond the first and last height the cross-section stays as it is there.
    """

    z: tuple[float, ...]
    centre_y: tuple[float, ...]
    semi_x: tuple[float, ...]
    semi_y: tuple[float, ...]

    def distance(self, points: np.ndarray, scale: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
        """Approximate signed distance (mm, negative inside) from (3, ...) points to the wall, in the axial plane.

        ``scale`` multiplies the semi-axes x and y.
        """
        z = points[2]
        semi_axes = np.stack(
            [np.interp(z, self.z, self.semi_x) * scale[0], np.interp(z, self.z, self.semi_y) * scale[1]]
        )
        centre_y = np.interp(z, self.z, self.centre_y).astype(np.float32)
        return _ellipsoid_distance(np.stack([points[0], points[1] - centre_y]), semi_axes)


# Template anatomy in mm: x right, y anterior, z superior, z = 0 at the jaw; each case scales it per axis. The neck
# (about 112 x 110 mm) widens into the jaw and the head (about 144 x 164 mm), which is cut in the lower brain.
_BODY = _Tube(
    z=(-80.0, -40.0, -20.0, 0.0, 20.0, 35.0, 80.0),
    centre_y=(-2.0, -2.0, 4.0, 8.0, 10.0, 6.0, 6.0),
    semi_x=(62.0, 56.0, 58.0, 64.0, 68.0, 72.0, 72.0),
    semi_y=(58.0, 55.0, 66.0, 74.0, 80.0, 82.0, 82.0),
)
# Trachea, larynx, oropharynx (widest from side to side) and nasopharynx, which ends below the skull base.
_AIRWAY = _Tube(
    z=(-80.0, -40.0, -25.0, -10.0, 15.0, 30.0),
    centre_y=(28.0, 26.0, 20.0, 12.0, 14.0, 18.0),
    semi_x=(9.0, 9.0, 10.0, 13.0, 14.0, 11.0),
    semi_y=(8.0, 8.0, 8.0, 8.0, 8.0, 9.0),
)
_AIRWAY_TOP_Z = 30.0
# Centre line (y at heights z) of the vertebral bodies, bent forward in the mid neck (cervical lordosis); the dens of
# C2 ends at _SPINE_TOP_Z.
_SPINE_Z, _SPINE_Y = (-80.0, -30.0, 28.0), (-14.0, -10.0, -13.0)
_SPINE_TOP_Z = 28.0
_DISC_MM = 5.0
# Mandible: a parabolic arch from the chin (midline, y = chin_y) back to the angles at x = +-_JAW_ANGLE_X,
# y = _JAW_ANGLE_Y, where the rami rise towards the skull base.
_JAW_ANGLE_X, _JAW_ANGLE_Y = 46.0, 2.0
# Skull: an ellipsoid whose floor (the skull base) is at z = 35, centred in the head's cross-section.
_SKULL_CENTRE = (0.0, 6.0, 95.0)
_SKULL_HEIGHT = 60.0
_SCALP_MUSCLE_MM = 3.0  # temporal muscle between the scalp fat and the skull
_CSF_MM = 2.0

_NECK_TUMOUR_IRREGULARITY = 0.15  # surface bumps, relative to the mean semi-axis
_NECK_TUMOUR_CLEARANCE_MM = 2.0  # smallest gap to the fat layer, the spine and the mandible
_TUMOUR_AIR_MARGIN_MM = 3.0  # the tumour pushes the airway wall back this far: tumour voxels never hold air
_NECK_TUMOUR_DIRECTIONS = _fibonacci_sphere(256)  # surface samples, under 4 mm apart, for clearance checks


@dataclass(frozen=True)
class _HeadNeck:
    """Random parameters of the head-and-neck anatomy around the template (mm)."""

    scale: np.ndarray  # (3,) size factors of the whole template per axis
    fat: float  # subcutaneous fat thickness
    airway_scale: np.ndarray  # (2,) factors on the airway's semi-axes x, y
    vertebra_height: float  # one level, disc included
    vertebra_phase: float  # a height z where two levels meet
    chin_y: float  # y of the mandible's midline
    jaw_z: float  # height of the mandible body's centre
    skull: float  # skull thickness
    gland_scale: np.ndarray  # (2,) size factors of the parotid and submandibular glands


@dataclass(frozen=True)
class _NeckTumour:
    """Random primary tumour (GTVp) of the head-and-neck phantom, in template mm."""

    centre: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3), tumour axes to template axes
    semi_axes: np.ndarray  # (3,) 7.5-17.5 mm: about 15-35 mm across
    shape: _Waves  # surface bumps, on directions
    core_depth: float  # the colder core lies deeper than this below the surface
    uptake: _Waves  # heterogeneity of the tracer uptake, on positions


def _sample_head_neck(rng: np.random.Generator) -> _HeadNeck:
    """Draw the normal anatomy of one case."""
    return _HeadNeck(
        scale=rng.uniform(0.92, 1.05, size=3),
        fat=rng.uniform(4.0, 8.0),
        airway_scale=rng.uniform(0.85, 1.15, size=2),
        vertebra_height=rng.uniform(16.0, 19.0),
        vertebra_phase=rng.uniform(0.0, 19.0),
        chin_y=rng.uniform(61.0, 67.0),
        jaw_z=rng.uniform(-3.0, 3.0),
        skull=rng.uniform(5.0, 8.0),
        gland_scale=rng.uniform(0.85, 1.15, size=2),
    )


def _sample_neck_tumour(rng: np.random.Generator, anatomy: _HeadNeck) -> _NeckTumour:
    """Draw an irregular ellipsoidal tumour with a colder core and place it beside the oropharynx."""
    semi_axes = rng.uniform(7.5, 17.5, size=3)
    rotation = _rotation(rng.uniform(-np.pi, np.pi, size=3))
    return _NeckTumour(
        centre=_place_neck_tumour(rng, anatomy, rotation, semi_axes),
        rotation=rotation,
        semi_axes=semi_axes,
        shape=_Waves.sample(rng, count=4, frequency_range=(1.5, 3.5)),
        core_depth=rng.uniform(0.45, 0.6) * semi_axes.min(),
        uptake=_Waves.sample(rng, count=3, frequency_range=(2.0 * np.pi / 20.0, 2.0 * np.pi / 10.0)),
    )


def _place_neck_tumour(
    rng: np.random.Generator, anatomy: _HeadNeck, rotation: np.ndarray, semi_axes: np.ndarray
) -> np.ndarray:
    """Tumour centre (template mm) on one random side of the oropharynx, the whole tumour deep in the soft tissue.

    Candidates are drawn beside and in front of the pharynx; the first whose surface (the ellipsoid grown by the
    largest bump, sampled densely) keeps ``_NECK_TUMOUR_CLEARANCE_MM`` from the fat layer, the spine and the mandible
    is kept; the candidate with the largest clearance is the fallback. The airway is no constraint: the tumour
    displaces it (see ``_head_neck_layers``).
    """
    count = _PLACEMENT_CANDIDATES
    side = rng.choice((-1.0, 1.0))
    z = rng.uniform(-25.0, 12.0, size=count)
    x = side * rng.uniform(10.0, 30.0, size=count)
    y = np.interp(z, _AIRWAY.z, _AIRWAY.centre_y) + rng.uniform(-4.0, 22.0, size=count)
    centres = np.stack([x, y, z], axis=1)
    reach = semi_axes + _NECK_TUMOUR_IRREGULARITY * semi_axes.mean()
    surface = (_NECK_TUMOUR_DIRECTIONS * reach) @ rotation.T
    points = np.moveaxis(centres[:, None, :] + surface[None, :, :], -1, 0).astype(np.float32)  # (3, count, samples)
    clearance = np.minimum.reduce(
        [-_BODY.distance(points) - anatomy.fat, _spine_distance(points, anatomy), _mandible_distance(points, anatomy)]
    ).min(axis=1)
    fits = clearance >= _NECK_TUMOUR_CLEARANCE_MM
    return centres[np.argmax(fits) if fits.any() else np.argmax(clearance)]


def _spine_distance(points: np.ndarray, anatomy: _HeadNeck) -> np.ndarray:
    """Signed distance (mm) from (3, ...) points to the cervical vertebrae: bodies, neural arches, spinous processes.

    Each level is one vertebra with a disc (soft tissue) below and above; the arch rings the spinal canal.
    """
    x, y, z = points
    height = anatomy.vertebra_height
    level_z = anatomy.vertebra_phase + (np.floor((z - anatomy.vertebra_phase) / height) + 0.5) * height
    along = z - level_z
    body_y = y - np.interp(level_z, _SPINE_Z, _SPINE_Y).astype(np.float32)
    canal_y = body_y + 15.0
    body = _ellipsoid_distance(np.stack([x, body_y, along]), (11.0, 8.0, height / 2.0 - _DISC_MM / 2.0))
    arch = np.maximum(
        _ellipsoid_distance(np.stack([x, canal_y, along]), (15.0, 11.0, height / 2.0 - 4.0)),
        -_ellipsoid_distance(np.stack([x, canal_y]), (10.0, 7.0)),
    )
    spinous = _ellipsoid_distance(np.stack([x, canal_y + 14.0, along]), (3.0, 6.0, 4.0))
    return np.maximum(np.minimum(np.minimum(body, arch), spinous), z - _SPINE_TOP_Z)


def _mandible_distance(points: np.ndarray, anatomy: _HeadNeck) -> np.ndarray:
    """Approximate signed distance (mm) from (3, ...) points to the mandible: a U-shaped body and two rami."""
    x, y, z = points
    curvature = (anatomy.chin_y - _JAW_ANGLE_Y) / _JAW_ANGLE_X**2
    # distance to the arch y = chin_y - curvature x^2 in the axial plane, to first order
    across = (y - (anatomy.chin_y - curvature * x * x)) / np.sqrt(1.0 + np.square(2.0 * curvature * x))
    body = np.maximum(_ellipsoid_distance(np.stack([across, z - anatomy.jaw_z]), (5.0, 11.0)), np.abs(x) - _JAW_ANGLE_X)
    ramus = np.maximum.reduce(
        [
            np.abs(np.abs(x) - _JAW_ANGLE_X) - 4.0,
            np.abs(y - (_JAW_ANGLE_Y + 8.0)) - 12.0,
            np.abs(z - (anatomy.jaw_z + 16.5)) - 16.5,
        ]
    )
    return np.minimum(body, ramus)


def _gland_distances(points: np.ndarray, anatomy: _HeadNeck) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances (mm) from (3, ...) points to the parotid and to the submandibular glands (left and right)."""
    x, y, z = points
    lateral = np.abs(x)  # the glands are mirror images
    parotid = _ellipsoid_distance(
        np.stack([lateral - 49.0, y + 14.0, z - 16.0]), np.array([6.0, 12.0, 14.0]) * anatomy.gland_scale[0]
    )
    submandibular = _ellipsoid_distance(
        np.stack([lateral - 28.0, y - 34.0, z + 20.0]), np.array([8.0, 12.0, 8.0]) * anatomy.gland_scale[1]
    )
    return parotid, submandibular


def _neck_tumour_distance(points: np.ndarray, tumour: _NeckTumour) -> np.ndarray:
    """Approximate signed distance (mm) from (3, ...) points to the tumour's irregular surface."""
    centre = tumour.centre.astype(np.float32).reshape((3,) + (1,) * (points.ndim - 1))
    local = np.tensordot(tumour.rotation.T.astype(np.float32), points - centre, axes=1)
    _, directions = _directions(local)
    bumps = np.float32(_NECK_TUMOUR_IRREGULARITY * tumour.semi_axes.mean()) * tumour.shape(directions)
    return _ellipsoid_distance(local, tumour.semi_axes) - bumps


def _head_neck_layers(
    frame: np.ndarray, anatomy: _HeadNeck, tumour: _NeckTumour, voxel_mm: float
) -> list[tuple[str, np.ndarray]]:
    """Tissue layers (name of ``_HEAD_NECK_HU``, partial-volume fraction) in painting order, on template coordinates.

    The tumour is painted last over the soft tissue; it pushes the airway back by ``_TUMOUR_AIR_MARGIN_MM``.
    """
    body = _BODY.distance(frame)
    tumour_distance = _neck_tumour_distance(frame, tumour)
    airway = np.maximum.reduce(
        [
            _AIRWAY.distance(frame, anatomy.airway_scale),
            frame[2] - _AIRWAY_TOP_Z,
            _TUMOUR_AIR_MARGIN_MM - tumour_distance,
        ]
    )
    parotid, submandibular = _gland_distances(frame, anatomy)
    skull_centre = np.asarray(_SKULL_CENTRE, dtype=np.float32)[:, None, None, None]
    skull_axes = (_BODY.semi_x[-1] - anatomy.fat - _SCALP_MUSCLE_MM, _BODY.semi_y[-1] - anatomy.fat - _SCALP_MUSCLE_MM)
    skull = _ellipsoid_distance(frame - skull_centre, (*skull_axes, _SKULL_HEIGHT))
    distances = [
        ("fat", body),
        ("muscle", body + anatomy.fat),
        ("parotid", parotid),
        ("submandibular", submandibular),
        ("airway", airway),
        ("vertebra", _spine_distance(frame, anatomy)),
        ("mandible", _mandible_distance(frame, anatomy)),
        ("skull", skull),
        ("csf", skull + anatomy.skull),
        ("brain", skull + anatomy.skull + _CSF_MM),
        ("tumour", tumour_distance),
        ("tumour_core", tumour_distance + tumour.core_depth),
    ]
    return [(name, _inside(distance, voxel_mm)) for name, distance in distances]


def _pet_grid(
    shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator
) -> tuple[tuple[int, ...], tuple[float, ...], np.ndarray]:
    """PET grid of a case on the CT grid ``(shape, spacing)``: shape, spacing (mm) and its centre in world (mm).

    Voxels ``_PET_VOXEL_FACTOR`` times the CT's, a field of view ``_PET_FIELD_OF_VIEW_FACTOR`` times the CT's (at
    least ``_MIN_PET_GRID_SIZE`` voxels per axis), centred up to ``_PET_MAX_OFFSET_MM`` away from the CT's centre.
    """
    pet_spacing = tuple(s * factor for s, factor in zip(spacing, _PET_VOXEL_FACTOR))
    pet_shape = tuple(
        max(_MIN_PET_GRID_SIZE, round(n * s * fov / p))
        for n, s, fov, p in zip(shape, spacing, _PET_FIELD_OF_VIEW_FACTOR, pet_spacing)
    )
    return pet_shape, pet_spacing, rng.uniform(-_PET_MAX_OFFSET_MM, _PET_MAX_OFFSET_MM, size=3)


def _gaussian_blur(volume: np.ndarray, sigma_voxels: Sequence[float]) -> np.ndarray:
    """Separable Gaussian blur of a 3D float32 volume (sigma in voxels per axis, > 0); the border voxels repeat."""
    blurred = volume
    for axis, sigma in enumerate(sigma_voxels):
        radius = int(np.ceil(3.0 * sigma))
        taps = np.exp(-0.5 * np.square(np.arange(-radius, radius + 1) / sigma))
        taps = (taps / taps.sum()).astype(np.float32)
        padded = np.pad(blurred, [(radius, radius) if k == axis else (0, 0) for k in range(3)], mode="edge")
        length = blurred.shape[axis]
        blurred = sum(
            weight * padded[(slice(None),) * axis + (slice(offset, offset + length),)]
            for offset, weight in enumerate(taps)
        )
    return blurred


def head_neck_petct_phantom(shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator) -> PhantomCase:
    """One HECKTOR 2022-style head-and-neck FDG PET-CT case with its primary tumour (GTVp), for ``paired_petct``.

    The anatomy spans the lower neck up to the lower brain: an elliptic body contour that widens from the neck into
    the jaw and head, subcutaneous fat over muscle, the airway (trachea up to the nasopharynx), cervical vertebrae
    (bodies, arches, spinous processes), the mandible, parotid and submandibular glands (left and right), and the
    lower brain in CSF inside the skull. Size (+-5-8 % per axis), pose (up to 3 mm, 4 degrees), fat, airway, spine,
    jaw and glands vary per case. The tumour, an irregular ellipsoid about 15-35 mm across with a colder core, sits
    on one side of the oropharynx, deep in the soft tissue, clear of bone; it displaces the airway and never holds air.

    CT (HU): air -1000, fat -100, muscle 40, brain 35, parotid 0, vertebrae 700, mandible 1150, skull 1100,
    tumour 50 (core 35), so the tumour barely shows; Gaussian noise of sigma 15 HU, clipped at -1024.
    PET (SUV, drawn per case): air 0, fat 0.3-0.5, muscle 0.8-1.2, salivary glands 2-4, vertebral marrow 1.2-1.8,
    brain 7-10, tumour 8-15 with a +-20 % smooth heterogeneity and a core at 60-80 % of it: the tumour is the hottest
    region below the brain. PET is evaluated on its own grid (see below), blurred by a 7 mm FWHM Gaussian and gets
    Poisson-like noise of sigma 0.15 sqrt(SUV), clipped at 0 (air stays 0).

    Args:
        shape: CT and label grid size (X, Y, Z) in voxels; axes point right, anterior, superior (RAS). The default
            grid (``phantom_grid("head_neck_petct", size)``) spans 200 x 200 x 160 mm.
        spacing: CT voxel size (mm) per axis; the grid is centred on the world origin (``phantom_affine``).
        rng: source of all randomness of the case.

    Returns:
        ``PhantomCase`` with ``images["ct"]`` float32 (X, Y, Z) in HU; ``images["pet"]`` float32 SUV >= 0 on the PET
        grid: voxels (2, 2, 1.5) times the CT's, a field of view (0.96, 0.96, 0.9) times the CT's, centred up to 4 mm
        off the CT's centre, its affine in ``affines["pet"]`` (resample it onto the CT grid through the affines);
        ``label`` uint8 on the CT grid: 0 background, 1 GTVp; ``tissues`` over ``HEAD_NECK_TISSUES``.

    Raises:
        ValueError: ``shape`` is not 3 voxel counts of at least ``MIN_GRID_SIZE`` or ``spacing`` not 3 positive sizes.
    """
    shape, spacing = _check_shape(shape), _check_spacing(spacing)
    anatomy = _sample_head_neck(rng)
    tumour = _sample_neck_tumour(rng, anatomy)
    centre = rng.uniform(-3.0, 3.0, size=3)
    rotation = _rotation(np.deg2rad(rng.uniform(-4.0, 4.0, size=3)))
    pet_shape, pet_spacing, pet_offset = _pet_grid(shape, spacing, rng)
    uptake = {name: rng.uniform(low, high) for name, (low, high) in _HEAD_NECK_SUV.items()}
    uptake["tumour_core"] = uptake["tumour"] * rng.uniform(*_TUMOUR_CORE_UPTAKE)
    to_template = anatomy.scale.astype(np.float32)[:, None, None, None]
    template_mm = float(np.mean(anatomy.scale))  # one template mm in mm

    frame = _body_frame(shape, spacing, centre, rotation) / to_template
    layers = _head_neck_layers(frame, anatomy, tumour, float(np.mean(spacing)) / template_mm)
    ct = _composite(layers, {name: hu - _AIR_HU for name, hu in _HEAD_NECK_HU.items()}) + np.float32(_AIR_HU)
    ct = np.maximum(ct + rng.normal(0.0, _CT_NOISE_HU, size=shape).astype(np.float32), np.float32(_CT_MIN_HU))

    pet_frame = _body_frame(pet_shape, pet_spacing, centre - pet_offset, rotation) / to_template
    pet_layers = _head_neck_layers(pet_frame, anatomy, tumour, float(np.mean(pet_spacing)) / template_mm)
    heterogeneity = np.float32(_TUMOUR_UPTAKE_VARIATION) * tumour.uptake(pet_frame) * dict(pet_layers)["tumour"]
    activity = _composite(pet_layers, uptake) * (1.0 + heterogeneity)
    sigma_mm = _PET_FWHM_MM / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    activity = _gaussian_blur(activity, [sigma_mm / s for s in pet_spacing])
    noise = np.float32(_PET_NOISE) * np.sqrt(activity) * rng.normal(size=pet_shape).astype(np.float32)
    pet = np.maximum(activity + noise, 0.0).astype(np.float32)
    pet_affine = phantom_affine(pet_shape, pet_spacing)
    pet_affine[:3, 3] += pet_offset

    label = (dict(layers)["tumour"] >= 0.5).astype(np.uint8)
    tissues = _tissue_map(layers, HEAD_NECK_TISSUES)
    return PhantomCase({"ct": ct, "pet": pet}, label, tissues, HEAD_NECK_TISSUES, affines={"pet": pet_affine})


# --------------------------------------------------------------------------------------------------------------------
# thorax CT phantom
# --------------------------------------------------------------------------------------------------------------------

THORAX_STRUCTURES: tuple[str, ...] = (
    "GTV-1",
    "GTV-2",
    "GTV-3",
    "Lung-Left",
    "Lung-Right",
    "Heart",
    "Esophagus",
    "Spinal-Cord",
)
"""Structure masks of ``thorax_ct_phantom`` (NSCLC-Radiomics names) in file order; GTV-2, GTV-3 only in some cases."""

# CT numbers (HU) per tissue in painting order (later tissues on top); each case draws each value uniformly from its
# range. Air is the background.
_THORAX_HU = {
    "table": (100.0, 300.0),  # carbon-fibre couch and its base
    "fat": (-110.0, -80.0),  # subcutaneous fat
    "muscle": (35.0, 50.0),  # chest-wall and back muscles
    "rib": (500.0, 750.0),
    "sternum": (350.0, 500.0),
    "mediastinum": (-100.0, -70.0),  # mediastinal fat around the heart, vessels, airway and oesophagus
    "abdomen": (50.0, 60.0),  # liver and upper abdomen below the diaphragm
    "lung": (-870.0, -820.0),  # mean of the parenchyma; a smooth texture and a posterior gradient come on top
    "heart": (35.0, 50.0),  # blood and myocardium, no contrast agent
    "aorta": (35.0, 50.0),
    "oesophagus": (30.0, 45.0),
    "oesophagus_lumen": (_AIR_HU, _AIR_HU),
    "airway_wall": (35.0, 50.0),
    "airway": (_AIR_HU, _AIR_HU),
    "vertebra": (400.0, 650.0),  # cancellous bone in a thin cortex, averaged
    "canal": (5.0, 15.0),  # cerebrospinal fluid
    "spinal_cord": (25.0, 35.0),
    "tumour": (30.0, 50.0),
    "nodule": (20.0, 45.0),
}

THORAX_TISSUES: tuple[str, ...] = ("background", *_THORAX_HU)
"""Tissue names of ``thorax_ct_phantom``'s tissue map."""

_THORAX_NOISE_HU = (15.0, 20.0)  # CT noise sigma per case
_LUNG_TEXTURE_HU = 35.0  # amplitude of the smooth parenchymal texture
_LUNG_GRADIENT_HU = 40.0  # dependent lung: denser towards the back of a supine patient
_TUMOUR_TEXTURE_HU = 8.0
_THORAX_IRREGULARITY = 0.15  # tumour surface bumps, relative to the mean semi-axis
_LUNG_CLEARANCE_MM = 5.0  # a tumour's surface stays this far inside its lung
_AIRWAY_CLEARANCE_MM = 3.0  # and this far from the bronchi
_NODULE_GAP_MM = 8.0  # smallest gap between two tumours
_NODULE_PROBABILITY = 0.4  # share of cases with secondary nodules (GTV-2, GTV-3)
_TABLE_GAP_MM = (18.0, 35.0)  # air between the patient's back and the couch (no pad modelled)
_LUNG_TUMOUR_DIRECTIONS = _fibonacci_sphere(256)

# Template thorax in mm: x right, y anterior, z superior, the torso's centre at 0. The torso (about 316 x 224 mm) is
# narrower and flatter towards the thoracic inlet.
_TORSO = _Tube(
    z=(-150.0, -50.0, 50.0, 120.0, 160.0),
    centre_y=(0.0, 0.0, 0.0, -4.0, -8.0),
    semi_x=(158.0, 158.0, 152.0, 140.0, 128.0),
    semi_y=(112.0, 112.0, 108.0, 100.0, 92.0),
)
_THORAX_SPINE_Y = -45.0  # centre of the vertebral bodies where the thoracic kyphosis adds nothing
_THORAX_TRACHEA_Y = -3.0
_HEART_CENTRE = (-22.0, 12.0, -50.0)  # left of the midline, in front
_HEART_AXES = (56.0, 44.0, 50.0)
_AORTA_PATH = (
    (10.0, 30.0, -15.0),
    (8.0, 28.0, 55.0),
    (-24.0, 22.0, 64.0),
    (-30.0, -39.0, 55.0),
    (-20.0, -40.0, -200.0),
)
_OESOPHAGUS_PATH = ((-3.0, -21.0, 250.0), (-8.0, -19.0, -40.0), (-30.0, 7.0, -200.0))


def _linear(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix`` (k, 3) applied to (3, ...) points: (k, ...) float32, by ``einsum`` (far faster than BLAS here)."""
    return np.einsum("ij,j...->i...", np.asarray(matrix, dtype=np.float32), points)


def _wave_sum(waves: _Waves, points: np.ndarray) -> np.ndarray:
    """``waves(points)`` computed through :func:`_linear`."""
    projections = _linear(waves.axes, points)
    total = np.zeros(points.shape[1:], dtype=np.float32)
    for projection, frequency, phase in zip(projections, waves.frequencies, waves.phases):
        total += np.sin(np.float32(frequency) * projection + np.float32(phase))
    return total / np.float32(len(waves.frequencies))


@dataclass(frozen=True)
class _Thorax:
    """Random parameters of the thoracic anatomy around the template (mm)."""

    scale: np.ndarray  # (3,) size factors of the template per axis
    fat: float  # subcutaneous fat thickness
    muscle: float  # chest-wall muscle thickness
    rib_thickness: float
    rib_height: float
    rib_period: float  # distance between two ribs along z
    rib_phase: float
    rib_slope: float  # dz/dy of a rib: ribs run down towards the front
    kyphosis: float  # the mid-thoracic spine lies this much further back
    level_height: float  # one vertebral level, disc included
    level_phase: float
    cord_scale: float
    heart_centre: np.ndarray  # (3,)
    heart_axes: np.ndarray  # (3,)
    heart_rotation: np.ndarray  # (3, 3)
    aorta_radius: float
    oesophagus_radius: float
    oesophagus_lumen: float  # radius of an air lumen, 0 for a collapsed oesophagus
    trachea_radius: float
    carina_z: float
    diaphragm_z: float  # height of the costophrenic recesses
    dome_height: float  # the diaphragm's domes rise this much above them
    right_dome_extra: float  # the right dome lies higher (liver)
    apex_z: float  # lung apices
    lung_texture: _Waves  # on positions


@dataclass(frozen=True)
class _LungTumour:
    """An irregular ellipsoidal tumour in one lung, in template mm."""

    side: str  # "Lung-Left" or "Lung-Right"
    centre: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3), tumour axes to template axes
    semi_axes: np.ndarray  # (3,)
    shape: _Waves  # surface bumps, on directions

    @property
    def reach(self) -> np.ndarray:
        """Semi-axes grown by the largest bump: the tumour lies within this ellipsoid (to first order)."""
        return self.semi_axes + _THORAX_IRREGULARITY * self.semi_axes.mean()

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm) from (3, ...) points to the tumour's surface."""
        centre = self.centre.astype(np.float32).reshape((3,) + (1,) * (points.ndim - 1))
        local = _linear(self.rotation.T, points - centre)
        _, directions = _directions(local)
        bumps = np.float32(_THORAX_IRREGULARITY * self.semi_axes.mean()) * _wave_sum(self.shape, directions)
        return _ellipsoid_distance(local, self.semi_axes) - bumps


def _sample_thorax(rng: np.random.Generator) -> _Thorax:
    """Draw the normal anatomy of one case."""
    return _Thorax(
        scale=np.array([rng.uniform(0.88, 1.05), rng.uniform(0.9, 1.05), rng.uniform(0.92, 1.05)]),
        fat=rng.uniform(8.0, 20.0),
        muscle=rng.uniform(10.0, 16.0),
        rib_thickness=rng.uniform(7.0, 10.0),
        rib_height=rng.uniform(9.0, 12.0),
        rib_period=rng.uniform(24.0, 29.0),
        rib_phase=rng.uniform(0.0, 29.0),
        rib_slope=rng.uniform(0.5, 0.8),
        kyphosis=rng.uniform(2.0, 8.0),
        level_height=rng.uniform(24.0, 28.0),
        level_phase=rng.uniform(0.0, 28.0),
        cord_scale=rng.uniform(0.9, 1.1),
        heart_centre=np.asarray(_HEART_CENTRE) + rng.uniform(-6.0, 6.0, size=3),
        heart_axes=np.asarray(_HEART_AXES) * rng.uniform(0.9, 1.1, size=3),
        heart_rotation=_rotation(
            np.deg2rad([rng.uniform(5.0, 15.0), rng.uniform(-20.0, -10.0), rng.uniform(-43.0, -27.0)])
        ),
        aorta_radius=rng.uniform(11.0, 14.0),
        oesophagus_radius=rng.uniform(6.0, 8.0),
        oesophagus_lumen=rng.uniform(2.0, 3.0) if rng.uniform() < 0.5 else 0.0,
        trachea_radius=rng.uniform(8.0, 11.0),
        carina_z=rng.uniform(35.0, 55.0),
        diaphragm_z=rng.uniform(-140.0, -115.0),
        dome_height=rng.uniform(40.0, 65.0),
        right_dome_extra=rng.uniform(8.0, 20.0),
        apex_z=rng.uniform(120.0, 140.0),
        lung_texture=_Waves.sample(rng, count=4, frequency_range=(2.0 * np.pi / 40.0, 2.0 * np.pi / 12.0)),
    )


def _capsule_distance(points: np.ndarray, start: Sequence[float], end: Sequence[float], radius: float) -> np.ndarray:
    """Signed distance (mm) from (3, ...) points to a round-capped cylinder of ``radius`` around a segment."""
    shape = (3,) + (1,) * (points.ndim - 1)
    a = np.asarray(start, dtype=np.float32).reshape(shape)
    axis = np.asarray(end, dtype=np.float32).reshape(shape) - a
    relative = points - a
    t = np.clip(np.einsum("i...,i...->...", relative, axis) / np.float32(np.sum(axis * axis)), 0.0, 1.0)
    return _norm(relative - t * axis) - np.float32(radius)


def _path_distance(points: np.ndarray, path: Sequence[Sequence[float]], radius: float) -> np.ndarray:
    """Signed distance (mm) from (3, ...) points to a tube of ``radius`` along a polyline."""
    return np.minimum.reduce([_capsule_distance(points, a, b, radius) for a, b in zip(path[:-1], path[1:])])


def _ellipse_distance(x: np.ndarray, y: np.ndarray, semi_x: float, semi_y: float) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipse centred at the origin of the axial plane."""
    return _ellipsoid_distance(np.stack([x, y]), (semi_x, semi_y))


def _dome(x: np.ndarray, y: np.ndarray, anatomy: _Thorax, side: float) -> np.ndarray:
    """Height z (mm) of the diaphragm's dome under the lung on ``side`` (+1 right, -1 left)."""
    bump = np.exp(-(np.square(side * x - 62.0) + np.square(y - 5.0)) / np.float32(2.0 * 60.0**2))
    height = anatomy.dome_height + (anatomy.right_dome_extra if side > 0 else 0.0)
    return np.float32(anatomy.diaphragm_z) + np.float32(height) * bump


def _thorax_distances(points: np.ndarray, anatomy: _Thorax) -> dict[str, np.ndarray]:
    """Signed distances (mm, negative inside) from (3, ...) template points to every structure of the thorax.

    Keys: the tissues of ``_THORAX_HU`` except the table and the tumours, plus ``Lung-Left`` and ``Lung-Right`` (each
    lung alone; ``lung`` is both), ``cavity`` (inside the ribs) and ``diaphragm`` (negative below it).
    """
    x, y, z = points
    body = _TORSO.distance(points)
    wall = anatomy.fat + anatomy.muscle
    cavity = body + np.float32(wall + anatomy.rib_thickness + 2.0)

    # ribs: a band inside the chest-wall muscle, cut into ribs that run down towards the front; cartilage in front
    ring = np.abs(body + np.float32(wall + anatomy.rib_thickness / 2.0)) - np.float32(anatomy.rib_thickness / 2.0)
    along = np.mod(
        z + np.float32(anatomy.rib_slope) * (y - _THORAX_SPINE_Y) - np.float32(anatomy.rib_phase), anatomy.rib_period
    )
    level = np.minimum(along, anatomy.rib_period - along) - np.float32(anatomy.rib_height / 2.0)
    ribs = np.maximum.reduce([ring, level, np.minimum(30.0 - np.abs(x), y - 20.0)])
    front = np.interp(z, _TORSO.z, np.add(_TORSO.centre_y, _TORSO.semi_y)).astype(np.float32)
    sternum_y = front - np.float32(wall + anatomy.rib_thickness / 2.0)
    sternum = np.maximum.reduce([_ellipse_distance(x, y - sternum_y, 16.0, 6.0), z - 110.0, -70.0 - z])

    # spine: vertebral bodies (cylinders with discs between), arches round the canal, spinous processes; the cord
    spine_y = np.float32(_THORAX_SPINE_Y) - np.float32(anatomy.kyphosis) * np.clip(1.0 - np.square(z / 150.0), 0.0, 1.0)
    height = anatomy.level_height
    level_z = anatomy.level_phase + (np.floor((z - anatomy.level_phase) / height) + 0.5) * height
    along_spine = np.abs(z - level_z.astype(np.float32))
    canal_y = spine_y - 25.0
    canal = _ellipse_distance(x, y - canal_y, 9.0, 8.0)
    vertebral_body = np.maximum(
        _ellipse_distance(x, y - spine_y, 18.0, 15.0), along_spine - np.float32(height / 2.0 - 2.5)
    )
    arch = np.maximum.reduce(
        [_ellipse_distance(x, y - canal_y, 15.0, 14.0), -canal, along_spine - np.float32(height / 2.0 - 5.0)]
    )
    spinous = _ellipsoid_distance(np.stack([x, y - (canal_y - 20.0), along_spine]), (4.0, 8.0, 7.0))
    vertebra = np.minimum.reduce([vertebral_body, arch, spinous])
    cord = _ellipse_distance(x, y - canal_y, 6.0 * anatomy.cord_scale, 5.0 * anatomy.cord_scale)
    spine_zone = np.minimum(
        _ellipse_distance(x, y - spine_y, 26.0, 23.0), np.maximum(np.abs(x) - 30.0, y - spine_y)
    )  # the lungs keep clear of it

    # mediastinum: heart (resting on the diaphragm), aorta, oesophagus, airway
    dome_left, dome_right = _dome(x, y, anatomy, -1.0), _dome(x, y, anatomy, 1.0)
    diaphragm = z - np.maximum(dome_left, dome_right)
    heart_centre = anatomy.heart_centre.astype(np.float32).reshape((3,) + (1,) * (points.ndim - 1))
    heart_local = _linear(anatomy.heart_rotation.T, points - heart_centre)
    heart = np.maximum(_ellipsoid_distance(heart_local, anatomy.heart_axes), dome_left - z)
    aorta = _path_distance(points, _AORTA_PATH, anatomy.aorta_radius)
    oesophagus = _path_distance(points, _OESOPHAGUS_PATH, anatomy.oesophagus_radius)
    carina = (0.0, _THORAX_TRACHEA_Y, anatomy.carina_z)
    r = anatomy.trachea_radius
    right_main = (34.0, _THORAX_TRACHEA_Y - 6.0, anatomy.carina_z - 22.0)
    left_main = (-44.0, _THORAX_TRACHEA_Y - 10.0, anatomy.carina_z - 36.0)
    central_airway = np.minimum.reduce(
        [
            _capsule_distance(points, (0.0, _THORAX_TRACHEA_Y, 250.0), carina, r),
            _capsule_distance(points, carina, right_main, 0.7 * r),
            _capsule_distance(points, carina, left_main, 0.62 * r),
        ]
    )
    airway = np.minimum.reduce(
        [
            central_airway,
            _capsule_distance(points, right_main, (58.0, _THORAX_TRACHEA_Y - 16.0, anatomy.carina_z - 70.0), 0.45 * r),
            _capsule_distance(points, left_main, (-66.0, _THORAX_TRACHEA_Y - 20.0, anatomy.carina_z - 80.0), 0.42 * r),
        ]
    )

    # lungs: the cavity above the diaphragm, below the apices, clear of the mediastinum and the spine
    keep_out = -np.minimum.reduce([heart - 4.0, aorta - 3.0, oesophagus - 3.0, central_airway - 3.0, spine_zone])
    lungs = {}
    for name, side, dome in (("Lung-Right", 1.0, dome_right), ("Lung-Left", -1.0, dome_left)):
        apex = np.float32(anatomy.apex_z) - 0.006 * (np.square(side * x - 55.0) + np.square(y + 5.0))
        lungs[name] = np.maximum.reduce([cavity + 2.0, 12.0 - side * x, dome - z, z - apex, keep_out])
    return {
        "fat": body,
        "muscle": body + np.float32(anatomy.fat),
        "rib": ribs,
        "sternum": sternum,
        "cavity": cavity,
        "mediastinum": cavity,
        "abdomen": np.maximum(cavity, diaphragm),
        "diaphragm": diaphragm,
        "lung": np.minimum(lungs["Lung-Left"], lungs["Lung-Right"]),
        **lungs,
        "heart": heart,
        "aorta": aorta,
        "oesophagus": oesophagus,
        "oesophagus_lumen": _path_distance(points, _OESOPHAGUS_PATH, anatomy.oesophagus_lumen)
        if anatomy.oesophagus_lumen > 0
        else np.full_like(body, np.inf),
        "airway_wall": airway - 2.0,
        "airway": airway,
        "vertebra": vertebra,
        "canal": canal,
        "spinal_cord": cord,
    }


def _place_lung_tumour(
    rng: np.random.Generator,
    anatomy: _Thorax,
    side: str,
    semi_axes: np.ndarray,
    others: Sequence[_LungTumour],
) -> _LungTumour:
    """An irregular tumour in lung ``side``, its whole surface ``_LUNG_CLEARANCE_MM`` inside that lung.

    Candidates are drawn in the lung's half of the chest; the first whose surface (the ellipsoid grown by the largest
    bump, sampled densely) keeps clear of the lung's boundary, the bronchi and the tumours in ``others`` is kept. When
    none fits, the tumour shrinks by 20 % and the search repeats; after five rounds the candidate with the largest
    clearance is taken.
    """
    sign = 1.0 if side == "Lung-Right" else -1.0
    rotation = _rotation(rng.uniform(-np.pi, np.pi, size=3))
    shape = _Waves.sample(rng, count=4, frequency_range=(1.5, 3.5))
    best, best_clearance = None, -np.inf
    for _ in range(5):
        tumour = _LungTumour(side, np.zeros(3), rotation, semi_axes, shape)
        count = _PLACEMENT_CANDIDATES
        centres = np.stack(
            [sign * rng.uniform(30.0, 100.0, count), rng.uniform(-55.0, 60.0, count), rng.uniform(-60.0, 110.0, count)],
            axis=1,
        )
        surface = (_LUNG_TUMOUR_DIRECTIONS * tumour.reach) @ rotation.T
        points = np.moveaxis(centres[:, None, :] + surface[None, :, :], -1, 0).astype(np.float32)
        distances = _thorax_distances(points, anatomy)
        margins = [-distances[side] - _LUNG_CLEARANCE_MM, distances["airway"] - _AIRWAY_CLEARANCE_MM]
        clearance = np.minimum.reduce(margins).min(axis=1)
        for other in others:
            gap = np.linalg.norm(centres - other.centre, axis=1) - other.reach.max() - tumour.reach.max()
            clearance = np.minimum(clearance, gap - _NODULE_GAP_MM)
        index = int(np.argmax(clearance))
        if clearance[index] > best_clearance:
            best, best_clearance = _LungTumour(side, centres[index], rotation, semi_axes, shape), clearance[index]
        fits = clearance >= 0.0
        if fits.any():
            return _LungTumour(side, centres[np.argmax(fits)], rotation, semi_axes, shape)
        semi_axes = semi_axes * 0.8
    return best


def _sample_lung_tumours(rng: np.random.Generator, anatomy: _Thorax) -> list[_LungTumour]:
    """The primary tumour (GTV-1, 15-50 mm across) and, in some cases, one or two nodules (GTV-2, GTV-3, 10-20 mm)."""
    sides = ("Lung-Left", "Lung-Right")
    radius = rng.uniform(7.5, 25.0) / (1.0 + _THORAX_IRREGULARITY)
    primary = _place_lung_tumour(
        rng, anatomy, sides[int(rng.uniform() < 0.55)], radius * rng.uniform(0.8, 1.2, size=3), []
    )
    tumours = [primary]
    if rng.uniform() < _NODULE_PROBABILITY:
        for _ in range(int(rng.integers(1, 3))):
            semi_axes = rng.uniform(5.0, 10.0) * rng.uniform(0.85, 1.15, size=3)
            tumours.append(_place_lung_tumour(rng, anatomy, sides[int(rng.integers(2))], semi_axes, tumours))
    return tumours


def _posterior_extent(anatomy: _Thorax, centre: np.ndarray, rotation: np.ndarray, z_half_mm: float) -> float:
    """Lowest world y (mm) of the torso's surface within ``|z| <= z_half_mm``: where the patient's back rests."""
    angles = np.linspace(0.0, 2.0 * np.pi, 180, endpoint=False)
    heights = np.linspace(-250.0, 250.0, 101)
    z, angle = np.meshgrid(heights, angles, indexing="ij")
    template = np.stack(
        [
            np.interp(z, _TORSO.z, _TORSO.semi_x) * np.cos(angle),
            np.interp(z, _TORSO.z, _TORSO.centre_y) + np.interp(z, _TORSO.z, _TORSO.semi_y) * np.sin(angle),
            z,
        ]
    ).reshape(3, -1)
    world = rotation @ (anatomy.scale[:, None] * template) + centre[:, None]
    within = np.abs(world[2]) <= z_half_mm
    return float(world[1][within].min() if within.any() else world[1].min())


def _table_distance(
    shape: Sequence[int], spacing: Sequence[float], top_y: float, rng: np.random.Generator
) -> np.ndarray:
    """Signed distance (mm) to the patient couch in world coordinates, (X, Y, 1): constant along z.

    A slab curved up at the sides (a cradle) with its top at ``top_y`` in the middle, and below it a flat base on
    two thin supports; the base may lie outside the field of view.
    """
    x = ((np.arange(shape[0]) - (shape[0] - 1) / 2.0) * spacing[0]).astype(np.float32)[:, None, None]
    y = ((np.arange(shape[1]) - (shape[1] - 1) / 2.0) * spacing[1]).astype(np.float32)[None, :, None]
    curvature, thickness = rng.uniform(0.0, 0.001), rng.uniform(8.0, 14.0)
    drop, base_thickness = rng.uniform(30.0, 50.0), rng.uniform(10.0, 16.0)
    top = np.float32(top_y) + np.float32(curvature) * x * x
    slab = np.maximum(y - top, top - np.float32(thickness) - y)
    base_top = top_y - thickness - drop
    base = np.maximum(np.abs(y - (base_top - base_thickness / 2.0)) - base_thickness / 2.0, np.abs(x) - 150.0)
    along = np.maximum(np.float32(base_top) - y, y - (top - np.float32(thickness - 1.0)))  # base up into the slab
    supports = np.maximum(np.abs(np.abs(x) - 100.0) - 5.0, along)
    return np.minimum.reduce([slab, base, supports])


def _structure_mask(fraction: np.ndarray) -> np.ndarray:
    """Voxels at least half inside a structure (uint8); a structure thinner than that keeps its fullest voxel."""
    mask = fraction >= 0.5
    if not mask.any() and fraction.max() > 0.0:
        mask.flat[int(np.argmax(fraction))] = True
    return mask.astype(np.uint8)


def thorax_ct_phantom(shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator) -> PhantomCase:
    """One NSCLC-Radiomics-style chest CT with lung tumour(s) and organ masks, for the ``latent_ct`` bundle.

    A supine patient on the couch: an elliptic torso (about 316 x 224 mm) of subcutaneous fat over muscle, ribs that
    run down towards the front, the sternum, the thoracic spine (vertebral bodies with discs, arches, spinous
    processes, the canal and the spinal cord), both lungs with a smooth texture and denser at the back, the heart
    left of the midline resting on the diaphragm, the aorta (ascending, arch, descending), the oesophagus behind the
    trachea, the trachea and bronchi, mediastinal fat, and the liver and upper abdomen below the diaphragm's domes (the
    right one higher). The primary tumour (GTV-1), an irregular ellipsoid 15-50 mm across, lies inside one lung, at
    least 5 mm from its boundary and 3 mm from the bronchi; 40 % of cases add one or two nodules (GTV-2, GTV-3, about
    10-20 mm) in either lung. Below the patient, across an air gap of 18-35 mm, lies the couch: a slab curved up at
    the sides and a base on thin supports, constant along z, at a height that follows the patient's size and pose.
    Size (-12 to +5 % per axis), pose (up to 10 mm across, 10-35 mm up, 15 mm along z; 2-4 degrees), fat, muscle,
    ribs, spine, heart, airway, diaphragm, lung apices and all HU values vary per case.

    CT (HU, each drawn per case): air -1000, couch 100-300, fat -110 to -80, muscle 35-50, ribs 500-750, vertebrae
    400-650, spinal canal 5-15, cord 25-35, lung -870 to -820 (texture +-35, up to +40 at the back), heart and aorta
    35-50, mediastinal fat -100 to -70, abdomen 50-60, tumour 30-50 (texture +-8), nodules 20-45; Gaussian noise of
    sigma 15-20 HU, clipped at -1024.

    Args:
        shape: grid size (X, Y, Z) in voxels; axes point right, anterior, superior (RAS), Z runs along the axial
            slices. The default grid (``phantom_grid("thorax_ct", size)``) spans 350 x 350 x 300 mm.
        spacing: voxel size (mm) per axis; the grid is centred on the world origin (``phantom_affine``).
        rng: source of all randomness of the case.

    Returns:
        ``PhantomCase`` with ``images["ct"]`` float32 (X, Y, Z) in HU; ``masks``: uint8 (X, Y, Z) per structure of
        ``THORAX_STRUCTURES`` (GTV-2, GTV-3 only when the case has nodules): voxels at least half inside, and a
        structure smaller than that keeps its fullest voxel. Each lung's mask includes the tumours inside it; the
        masks may overlap. ``label`` uint8: 0 background, 1 GTV-1, 2 nodules; ``tissues`` over ``THORAX_TISSUES``.

    Raises:
        ValueError: ``shape`` is not 3 voxel counts of at least ``MIN_GRID_SIZE`` or ``spacing`` not 3 positive sizes.
    """
    shape, spacing = _check_shape(shape), _check_spacing(spacing)
    anatomy = _sample_thorax(rng)
    tumours = _sample_lung_tumours(rng, anatomy)
    hu = {name: rng.uniform(low, high) for name, (low, high) in _THORAX_HU.items()}
    centre = np.array([rng.uniform(-10.0, 10.0), rng.uniform(10.0, 35.0), rng.uniform(-15.0, 15.0)])
    rotation = _rotation(np.deg2rad([rng.uniform(-2.0, 2.0), rng.uniform(-2.0, 2.0), rng.uniform(-4.0, 4.0)]))
    z_half = shape[2] * spacing[2] / 2.0
    table_top = _posterior_extent(anatomy, centre, rotation, z_half) - rng.uniform(*_TABLE_GAP_MM)
    table = _table_distance(shape, spacing, table_top, rng)
    texture = _Waves.sample(rng, count=3, frequency_range=(2.0 * np.pi / 20.0, 2.0 * np.pi / 10.0))
    noise_hu = rng.uniform(*_THORAX_NOISE_HU)

    template_mm = float(np.mean(anatomy.scale))
    frame = _body_frame(shape, spacing, centre, rotation) / anatomy.scale.astype(np.float32)[:, None, None, None]
    voxel_mm = float(np.mean(spacing)) / template_mm
    distances = _thorax_distances(frame, anatomy)
    fractions = {name: _inside(distance, voxel_mm) for name, distance in distances.items()}
    tumour_fractions = [_inside(tumour.distance(frame), voxel_mm) for tumour in tumours]

    layers = [("table", np.ascontiguousarray(np.broadcast_to(_inside(table, float(np.mean(spacing))), shape)))]
    layers += [(name, fractions[name]) for name in _THORAX_HU if name in fractions]
    layers += [("tumour", tumour_fractions[0])] + [("nodule", fraction) for fraction in tumour_fractions[1:]]
    signal = {name: np.float32(value - _AIR_HU) for name, value in hu.items()}
    dependent = np.clip(-(frame[1] - 60.0) / 120.0, 0.0, 1.0)  # 0 at the front of the lungs, 1 at the back
    lung_texture = _LUNG_TEXTURE_HU * _wave_sum(anatomy.lung_texture, frame)
    signal["lung"] = signal["lung"] + lung_texture + _LUNG_GRADIENT_HU * dependent
    signal["tumour"] = signal["tumour"] + _TUMOUR_TEXTURE_HU * _wave_sum(texture, frame)
    ct = _composite(layers, signal) + np.float32(_AIR_HU)
    ct = np.maximum(ct + rng.normal(0.0, noise_hu, size=shape).astype(np.float32), np.float32(_CT_MIN_HU))

    masks = {f"GTV-{i + 1}": _structure_mask(fraction) for i, fraction in enumerate(tumour_fractions)}
    for side in ("Lung-Left", "Lung-Right"):
        inside = [masks[f"GTV-{i + 1}"] for i, tumour in enumerate(tumours) if tumour.side == side]
        masks[side] = np.maximum.reduce([_structure_mask(fractions[side]), *inside])
    masks["Heart"] = _structure_mask(fractions["heart"])
    masks["Esophagus"] = _structure_mask(fractions["oesophagus"])
    masks["Spinal-Cord"] = _structure_mask(fractions["spinal_cord"])
    label = np.zeros(shape, dtype=np.uint8)
    for name in [f"GTV-{i}" for i in range(len(tumours), 1, -1)]:
        label[masks[name] > 0] = 2
    label[masks["GTV-1"] > 0] = 1
    return PhantomCase(
        {"ct": ct.astype(np.float32)},
        label,
        _tissue_map(layers, THORAX_TISSUES),
        THORAX_TISSUES,
        masks={name: masks[name] for name in THORAX_STRUCTURES if name in masks},
    )


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
            Needed unless ``write_case`` is given.
        modality_names: the modalities' names in ``dataset.json`` (e.g. ``"CT"``, ``"PT"``), in channel order.
            Default ``None``: the ``modalities`` themselves.
        write_case: ``(case, case_id, folder, affine) -> dataset.json entry``: writes one case's files under
            ``folder`` itself, for layouts that ``case_files`` cannot describe (one mask file per structure).
            Default ``None``: images from ``case_files`` and one label map.
        structures: structure names the cases' ``masks`` may hold, listed in ``dataset.json``. Default: none.
    """

    name: str
    description: str
    generate: Callable[[Sequence[int], Sequence[float], np.random.Generator], PhantomCase]
    field_of_view_mm: tuple[float, float, float]
    modalities: tuple[str, ...]
    labels: dict[str, str]
    case_id: str
    case_files: Callable[[str], tuple[list[str], str]] | None = None
    modality_names: tuple[str, ...] | None = None
    write_case: Callable[[PhantomCase, str, Path, np.ndarray], dict] | None = None
    structures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.case_files is None and self.write_case is None:
            raise ValueError(f"phantom kind '{self.name}' needs case_files or write_case to lay out its files")


def _decathlon_files(case: str) -> tuple[list[str], str]:
    return [f"imagesTr/{case}.nii.gz"], f"labelsTr/{case}.nii.gz"


def _brats_files(case: str) -> tuple[list[str], str]:
    return [f"{case}/{case}_{modality}.nii.gz" for modality in BRATS_MODALITIES], f"{case}/{case}_seg.nii.gz"


def _hecktor_files(case: str) -> tuple[list[str], str]:
    return [f"imagesTr/{case}__{modality}.nii.gz" for modality in HECKTOR_MODALITIES], f"labelsTr/{case}.nii.gz"


def _structure_files(case: PhantomCase, case_id: str, folder: Path, affine: np.ndarray) -> dict:
    """Write ``<case_id>/ct.nii.gz`` and ``<case_id>/masks/<structure>.nii.gz``; return the ``dataset.json`` entry."""
    image = f"{case_id}/ct.nii.gz"
    atomic_write_nifti(case.images["ct"][None], affine, folder / image)
    masks = {}
    for name, mask in case.masks.items():
        masks[name] = f"{case_id}/masks/{name}.nii.gz"
        atomic_write_nifti(mask[None].astype(np.uint8), affine, folder / masks[name])
    return {"case_id": case_id, "image": image, "masks": masks}


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
    "head_neck_petct": PhantomKind(
        name="head_neck_petct",
        description="Digital phantom: HECKTOR-style head-and-neck FDG PET-CT (PET on its own coarser grid) with a GTVp",
        generate=head_neck_petct_phantom,
        field_of_view_mm=(200.0, 200.0, 160.0),
        modalities=PETCT_MODALITIES,
        labels={"0": "background", "1": "GTV (primary tumour)"},
        case_id="HN_phantom_{:03d}",
        case_files=_hecktor_files,
        modality_names=HECKTOR_MODALITIES,
    ),
    "thorax_ct": PhantomKind(
        name="thorax_ct",
        description="Digital phantom: NSCLC-Radiomics-style chest CT (HU, with couch), lung tumour(s), organ masks",
        generate=thorax_ct_phantom,
        field_of_view_mm=(350.0, 350.0, 300.0),
        modalities=("ct",),
        labels={},
        case_id="LUNG_phantom_{:03d}",
        modality_names=("CT",),
        write_case=_structure_files,
        structures=THORAX_STRUCTURES,
    ),
}
"""Registered phantom kinds by name; bundles add theirs here."""

PHANTOM_ALIASES: dict[str, str] = {
    "semantic_mri": "whole_head_mri",
    "semantic_mri_brats": "brats_mri",
    "paired_petct": "head_neck_petct",
    "latent_ct": "thorax_ct",
}
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
    (whole head: ``size``^3 over 192 mm; BraTS: ``(size, size, round(0.75 size))`` over 192 x 192 x 144 mm;
    head-and-neck PET-CT: ``(size, size, round(0.8 size))`` over 200 x 200 x 160 mm, the CT and label grid; thorax
    CT: ``(size, size, round(6 size / 7))`` over 350 x 350 x 300 mm).
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
    """Generate and save cases 0..n-1 into ``folder``; case ``i`` draws from ``default_rng((seed, i))``.

    Images take their affine from ``PhantomCase.affines`` where the case gives one, else the grid's. A kind with a
    ``write_case`` writes its cases itself.
    """
    affine = phantom_affine(*grid)
    entries = []
    for index in range(n):
        case_id = phantom.case_id.format(index)
        case = phantom.generate(*grid, np.random.default_rng((seed, index)))
        if phantom.write_case is not None:
            entries.append(phantom.write_case(case, case_id, folder, affine))
            continue
        image_files, label_file = phantom.case_files(case_id)
        for modality, image_file in zip(phantom.modalities, image_files):
            atomic_write_nifti(case.images[modality][None], case.affines.get(modality, affine), folder / image_file)
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
    ``BraTS_phantom_00000/BraTS_phantom_00000_{t1,t1ce,t2,flair,seg}.nii.gz``; head-and-neck PET-CT (HECKTOR 2022)
    ``imagesTr/HN_phantom_000__{CT,PT}.nii.gz`` + ``labelsTr/HN_phantom_000.nii.gz``; thorax CT
    ``LUNG_phantom_000/ct.nii.gz`` + ``LUNG_phantom_000/masks/<structure>.nii.gz`` (uint8, one per structure of the
    case), its ``dataset.json`` entries ``{"case_id", "image", "masks": {structure: path}}`` and a ``structures``
    list instead of ``labels``. Case ``i`` uses the random
    stream ``(seed, i)``, so it does not depend on ``n``. Files carry a RAS affine centred on the origin (see
    ``phantom_affine``) on the grid from ``phantom_grid(kind, size, shape, spacing)``, except images on a grid of
    their own (the PET of ``head_neck_petct``), which carry the case's affine for them (``PhantomCase.affines``).

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
            "modality": {str(i): name for i, name in enumerate(phantom.modality_names or phantom.modalities)},
            **({"labels": phantom.labels} if phantom.labels else {}),
            **({"structures": list(phantom.structures)} if phantom.structures else {}),
            "numTraining": len(entries),
            "training": entries,
        }
        (staging / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
        staging.replace(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
