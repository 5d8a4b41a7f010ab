"""Geometry shared by the digital phantoms: body frames, signed distances, smooth waves, tissue maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PhantomCase", "phantom_affine"]


MIN_GRID_SIZE = 8
"""Smallest number of voxels per axis a phantom grid may have."""


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


def _fibonacci_sphere(count: int) -> np.ndarray:
    """``count`` nearly evenly spread unit vectors, shape (count, 3)."""
    index = np.arange(count) + 0.5
    z = 1.0 - 2.0 * index / count
    azimuth = np.pi * (1.0 + 5.0**0.5) * index
    ring = np.sqrt(1.0 - z * z)
    return np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), z], axis=1)


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


_BIAS_AMPLITUDE = 0.10  # multiplicative bias field spans 1 +- this

_PLACEMENT_CANDIDATES = 64  # random tumour centres tried per case


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """4x4 RAS affine: ``spacing`` (mm) on the diagonal, origin placing the volume's centre at world (0, 0, 0)."""
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
    return affine


# CT numbers (HU) per tissue, in painting order (later tissues on top). The tumour is soft tissue barely denser than
# muscle, as on real CT: only the PET shows it clearly.
_AIR_HU = -1000.0

_CT_MIN_HU = -1024.0  # the lowest CT number scanners store
