"""Head-and-neck PET-CT phantoms with neck tumours (HECKTOR-like), on separate CT and PET grids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from common.data.phantoms.geometry import (
    _AIR_HU,
    _CT_MIN_HU,
    PhantomCase,
    _body_frame,
    _check_shape,
    _check_spacing,
    _composite,
    _directions,
    _ellipsoid_distance,
    _fibonacci_sphere,
    _inside,
    _rotation,
    _tissue_map,
    _Tube,
    _Waves,
    phantom_affine,
)
from common.data.phantoms.mri import _PLACEMENT_CANDIDATES

__all__ = ["PETCT_MODALITIES", "HECKTOR_MODALITIES", "HEAD_NECK_TISSUES", "head_neck_petct_phantom"]


# --------------------------------------------------------------------------------------------------------------------
# head-and-neck PET-CT phantom
# --------------------------------------------------------------------------------------------------------------------

PETCT_MODALITIES: tuple[str, ...] = ("ct", "pet")
"""Modalities of ``head_neck_petct_phantom``, in channel order: CT (HU, on the label grid) and FDG PET (SUV)."""


HECKTOR_MODALITIES: tuple[str, ...] = ("CT", "PT")
"""HECKTOR 2022 names of ``PETCT_MODALITIES``: file suffixes (``<case>__CT.nii.gz``) and ``dataset.json`` names."""


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


_PET_FWHM_MM = 7.0  # scanner resolution: Gaussian point-spread function


_PET_NOISE = 0.15  # noise sigma = this * sqrt(SUV): Poisson-like, none where there is no activity


_PET_VOXEL_FACTOR = (2.0, 2.0, 1.5)  # PET voxel size / CT voxel size per axis


_PET_FIELD_OF_VIEW_FACTOR = (0.96, 0.96, 0.9)  # PET field of view / CT field of view per axis


_PET_MAX_OFFSET_MM = 4.0  # the PET grid's centre is shifted by up to this from the CT grid's, per axis


_MIN_PET_GRID_SIZE = 4


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
    # edge voxels repeat (the activity does not drop at the grid border); kernel cut at 3 sigma
    activity = ndimage.gaussian_filter(activity, [sigma_mm / s for s in pet_spacing], mode="nearest", truncate=3.0)
    noise = np.float32(_PET_NOISE) * np.sqrt(activity) * rng.normal(size=pet_shape).astype(np.float32)
    pet = np.maximum(activity + noise, 0.0).astype(np.float32)
    pet_affine = phantom_affine(pet_shape, pet_spacing)
    pet_affine[:3, 3] += pet_offset

    label = (dict(layers)["tumour"] >= 0.5).astype(np.uint8)
    tissues = _tissue_map(layers, HEAD_NECK_TISSUES)
    return PhantomCase({"ct": ct, "pet": pet}, label, tissues, HEAD_NECK_TISSUES, affines={"pet": pet_affine})
