"""Brain MRI phantoms: whole-head T1c (Med-DDPM's data) and BraTS-like four-modality volumes with tumours."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.data.phantoms.geometry import (
    _PLACEMENT_CANDIDATES,
    PhantomCase,
    _bias_field,
    _body_frame,
    _check_shape,
    _check_spacing,
    _composite,
    _directions,
    _ellipsoid_distance,
    _fibonacci_sphere,
    _inside,
    _random_pose,
    _rotation,
    _tissue_map,
    _Waves,
)

__all__ = [
    "BRATS_MODALITIES",
    "WHOLE_HEAD_TISSUES",
    "BRATS_TISSUES",
    "whole_head_mri_phantom",
    "brats_mri_phantom",
]


BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""BraTS modality names, in the order of the channels and of ``dataset.json`` image lists."""


# Noise-free T1c signal per tissue of the whole-head phantom. The enhancing rim is the brightest tissue, well above
# scalp fat and white matter, so a fixed threshold reads the tumour back (see common.metrics.read_back).
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


_NOISE_FRACTION_OF_WM = 0.02  # noise sigma relative to the white-matter signal


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
