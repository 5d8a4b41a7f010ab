"""Thorax CT phantoms with lung tumours and RTSTRUCT-like structure masks (NSCLC-Radiomics-like)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.data.phantoms.geometry import (
    _AIR_HU,
    _CT_MIN_HU,
    _PLACEMENT_CANDIDATES,
    PhantomCase,
    _body_frame,
    _capsule_distance,
    _check_shape,
    _check_spacing,
    _composite,
    _directions,
    _ellipse_distance,
    _ellipsoid_distance,
    _fibonacci_sphere,
    _inside,
    _linear,
    _path_distance,
    _rotation,
    _tissue_map,
    _Tube,
    _wave_sum,
    _Waves,
)

__all__ = ["THORAX_STRUCTURES", "THORAX_TISSUES", "thorax_ct_phantom"]


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
