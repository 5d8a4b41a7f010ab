"""An axial pelvic CT slice phantom in Hounsfield units (the ``pelvic_ct`` kind of :mod:`common.data.phantoms.slices`).

One slice at a randomly drawn level of the pelvis, seen from the feet (the patient's left on the image's right,
anterior at the top), at ``field_of_view_mm / size`` mm per pixel:

- ``iliac``: the iliac wings as bone plates from the sacroiliac joints out to the anterior iliac spines, the sacrum
  posteriorly (its canal filled with fat), the psoas muscles beside it, bowel loops (fluid or gas) in the front of
  the pelvis and the dome of the bladder when it is full.
- ``acetabular``: both femoral heads in their acetabula (a cartilage gap between them), the coccyx posteriorly, the
  bladder in front and the rectum behind it, holding some gas.

Both levels have the body outline with subcutaneous fat over muscle and fat inside the pelvis. Every bone is a cortex
2.5-5 mm thick (``scipy.ndimage.binary_erosion``) around cancellous bone. Shapes are masks on a twice finer grid,
averaged into partial volumes; CT numbers are drawn per case within each tissue's band
(:data:`PELVIC_HU_BANDS`), then mildly correlated Gaussian noise is added and the image clipped at -1024 HU. Sizes,
positions, bladder filling, rectal gas and bowel loops vary with the random generator, and one generator state gives
one image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_erosion, gaussian_filter

__all__ = ["PELVIC_LEVELS", "PELVIC_TISSUES", "PELVIC_HU_BANDS", "PelvicCtSlice", "pelvic_ct_slice"]

PELVIC_LEVELS = ("iliac", "acetabular")

PELVIC_TISSUES = (
    "air",
    "fat",
    "muscle",
    "soft_tissue",  # bowel and rectal walls, joint cartilage
    "urine",  # bladder content, water
    "fluid",  # bowel content
    "gas",
    "cortical_bone",
    "cancellous_bone",
)
"""Tissue names in label order (label = index)."""

PELVIC_HU_BANDS: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "fat": (-115.0, -85.0),
    "muscle": (35.0, 55.0),
    "soft_tissue": (25.0, 45.0),
    "urine": (0.0, 15.0),
    "fluid": (10.0, 30.0),
    "gas": (-990.0, -900.0),
    "cortical_bone": (750.0, 950.0),
    "cancellous_bone": (200.0, 300.0),
}
"""CT number band (HU) of each tissue; a case draws one value per tissue uniformly within its band."""

_CT_MIN_HU = -1024.0
_SUPERSAMPLE = 2
_LABEL = {name: index for index, name in enumerate(PELVIC_TISSUES)}


@dataclass(frozen=True)
class PelvicCtSlice:
    """One phantom slice: ``image`` (size, size) float32 HU, ``spacing`` (mm per pixel, rows and columns), the
    ``level`` drawn and ``tissues``: per tissue name, the pixels wholly of that tissue (no partial volume)."""

    image: np.ndarray
    spacing: tuple[float, float]
    level: str
    tissues: dict[str, np.ndarray]


class _Canvas:
    """A label map on the fine grid, drawn in mm: x to the patient's left (columns), y anterior (rows upwards)."""

    def __init__(self, n: int, pixel_mm: float) -> None:
        self.labels = np.zeros((n, n), dtype=np.uint8)
        self.pixel_mm = pixel_mm
        coordinates = (np.arange(n) - (n - 1) / 2.0) * pixel_mm
        self.x, self.y = np.meshgrid(coordinates, -coordinates, indexing="xy")

    def ellipse(self, centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
        """Mask of an axis-aligned ellipse: ``radii`` (mm) along x and y."""
        return ((self.x - centre[0]) / radii[0]) ** 2 + ((self.y - centre[1]) / radii[1]) ** 2 <= 1.0

    def plate(self, start: np.ndarray, end: np.ndarray, start_half_width: float, end_half_width: float) -> np.ndarray:
        """Mask of a plate seen edge-on: points near the segment ``start``-``end`` (mm), its half-width tapering
        linearly from ``start_half_width`` to ``end_half_width``."""
        along = end - start
        offset_x, offset_y = self.x - start[0], self.y - start[1]
        position = np.clip((offset_x * along[0] + offset_y * along[1]) / float(along @ along), 0.0, 1.0)
        distance = np.hypot(offset_x - position * along[0], offset_y - position * along[1])
        return distance <= start_half_width + position * (end_half_width - start_half_width)

    def paint(self, mask: np.ndarray, tissue: str) -> None:
        self.labels[mask] = _LABEL[tissue]

    def bone(self, mask: np.ndarray, cortex_mm: float) -> None:
        """Cortical bone over ``mask``, cancellous inside it ``cortex_mm`` from its edge."""
        self.paint(mask, "cortical_bone")
        iterations = max(1, int(round(cortex_mm / self.pixel_mm)))
        self.paint(binary_erosion(mask, iterations=iterations), "cancellous_bone")


def _bladder(canvas: _Canvas, rng: np.random.Generator, top: float, bottom: float, scale: float) -> None:
    """Urine in an ellipse between ``bottom`` and ``top`` (y, mm), as large as the drawn filling allows."""
    filling = rng.uniform(0.0, 1.0)
    radius_y = min(scale * (15.0 + 35.0 * filling), (top - bottom) / 2.0)
    radius_x = radius_y * rng.uniform(1.1, 1.5)
    canvas.paint(canvas.ellipse((rng.uniform(-5.0, 5.0), bottom + radius_y), (radius_x, radius_y)), "urine")


def _rectum(canvas: _Canvas, rng: np.random.Generator, centre: tuple[float, float], radius: float) -> None:
    """Rectal wall around a lumen of fluid holding a gas bubble at its anterior (upper, supine) side."""
    canvas.paint(canvas.ellipse(centre, (radius, radius * 0.85)), "soft_tissue")
    lumen = radius * rng.uniform(0.55, 0.75)
    canvas.paint(canvas.ellipse(centre, (lumen, lumen * 0.85)), "fluid")
    gas = lumen * rng.uniform(0.4, 0.8)
    canvas.paint(canvas.ellipse((centre[0], centre[1] + lumen * 0.85 - gas), (gas, gas)), "gas")


def _acetabular_level(canvas: _Canvas, rng: np.random.Generator, body: tuple[float, float], inner: float) -> None:
    half_width, half_depth = body
    head_radius = rng.uniform(21.0, 26.0)
    head_y = rng.uniform(-0.05, 0.1) * half_depth
    for side in (-1.0, 1.0):
        head_x = side * rng.uniform(0.5, 0.56) * half_width
        socket = head_radius + rng.uniform(9.0, 13.0)
        canvas.bone(canvas.ellipse((head_x - side * 7.0, head_y), (socket, socket * 1.1)), rng.uniform(3.0, 5.0))
        canvas.paint(canvas.ellipse((head_x, head_y), (head_radius + 2.0, head_radius + 2.0)), "soft_tissue")
        canvas.bone(canvas.ellipse((head_x, head_y), (head_radius, head_radius)), rng.uniform(3.0, 5.0))
    coccyx = (rng.uniform(-3.0, 3.0), -(inner - rng.uniform(12.0, 22.0)))
    coccyx_radii = (rng.uniform(9.0, 13.0), rng.uniform(7.0, 10.0))
    canvas.bone(canvas.ellipse(coccyx, coccyx_radii), rng.uniform(3.0, 4.0))
    rectum_radius = rng.uniform(13.0, 20.0)
    rectum_y = coccyx[1] + coccyx_radii[1] + rng.uniform(3.0, 8.0) + rectum_radius
    _rectum(canvas, rng, (rng.uniform(-4.0, 4.0), rectum_y), rectum_radius)
    _bladder(canvas, rng, top=inner - 10.0, bottom=rectum_y + rectum_radius + rng.uniform(2.0, 6.0), scale=1.0)


def _iliac_level(canvas: _Canvas, rng: np.random.Generator, body: tuple[float, float], inner: float) -> None:
    half_width, half_depth = body
    sacrum = (0.0, -(inner - rng.uniform(25.0, 35.0)))
    sacrum_radii = (rng.uniform(0.22, 0.28) * half_width, rng.uniform(16.0, 22.0))
    for side in (-1.0, 1.0):
        psoas = (side * rng.uniform(0.2, 0.28) * half_width, sacrum[1] + rng.uniform(30.0, 45.0))
        canvas.paint(canvas.ellipse(psoas, (rng.uniform(13.0, 18.0), rng.uniform(13.0, 18.0))), "muscle")
        joint = np.array([side * (sacrum_radii[0] + 3.0), sacrum[1] + rng.uniform(0.0, 10.0)])
        spine = np.array([side * rng.uniform(0.7, 0.8) * half_width, rng.uniform(0.0, 0.25) * half_depth])
        wing = canvas.plate(joint, spine, rng.uniform(7.0, 10.0), 3.5)  # thinning from the joint to the spine
        canvas.bone(wing, rng.uniform(2.5, 3.5))
    canvas.bone(canvas.ellipse(sacrum, sacrum_radii), rng.uniform(3.0, 5.0))
    canvas.paint(canvas.ellipse((0.0, sacrum[1] - 0.2 * sacrum_radii[1]), (10.0, 6.0)), "fat")  # sacral canal
    for _ in range(int(rng.integers(3, 7))):
        radius = rng.uniform(8.0, 15.0)
        centre = (rng.uniform(-0.35, 0.35) * half_width, rng.uniform(0.0, 0.45) * half_depth)
        canvas.paint(canvas.ellipse(centre, (radius, radius)), "soft_tissue")
        content = "gas" if rng.uniform() < 0.4 else "fluid"
        canvas.paint(canvas.ellipse(centre, (radius - 3.0, radius - 3.0)), content)
    _rectum(canvas, rng, (rng.uniform(-10.0, 10.0), sacrum[1] + sacrum_radii[1] + 18.0), rng.uniform(11.0, 16.0))
    if rng.uniform() < 0.5:  # a full bladder reaches this level
        _bladder(canvas, rng, top=inner - 10.0, bottom=0.35 * half_depth, scale=0.6)


def pelvic_ct_slice(
    size: int, rng: np.random.Generator, level: str | None = None, field_of_view_mm: float = 400.0
) -> PelvicCtSlice:
    """A (size, size) axial pelvic CT slice in HU (module docstring).

    Args:
        size: pixels per side.
        rng: the case's random generator (anatomy, CT numbers and noise).
        level: one of :data:`PELVIC_LEVELS`; None draws it.
        field_of_view_mm: side of the square field of view.

    Raises:
        ValueError: unknown ``level``.
    """
    if level is not None and level not in PELVIC_LEVELS:
        raise ValueError(f"level must be null or one of {list(PELVIC_LEVELS)}, got {level!r}")
    drawn = PELVIC_LEVELS[int(rng.integers(len(PELVIC_LEVELS)))]  # always drawn: the same stream for any ``level``
    level = level or drawn
    n = int(size) * _SUPERSAMPLE
    canvas = _Canvas(n, field_of_view_mm / n)
    body = (rng.uniform(150.0, 185.0), rng.uniform(100.0, 130.0))
    subcutaneous = rng.uniform(12.0, 30.0)
    canvas.paint(canvas.ellipse((0.0, 0.0), body), "fat")
    canvas.paint(canvas.ellipse((0.0, 0.0), (body[0] - subcutaneous, body[1] - subcutaneous)), "muscle")
    inner = body[1] - subcutaneous - rng.uniform(10.0, 16.0)  # the pelvic cavity's half-depth, inside the muscle
    canvas.paint(canvas.ellipse((0.0, 0.0), (rng.uniform(0.4, 0.5) * body[0], inner)), "fat")
    (_iliac_level if level == "iliac" else _acetabular_level)(canvas, rng, body, inner)

    values = np.array([rng.uniform(*PELVIC_HU_BANDS[name]) for name in PELVIC_TISSUES])
    blocks = canvas.labels.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE)
    image = values[blocks].mean(axis=(1, 3))
    noise = gaussian_filter(rng.normal(size=image.shape), sigma=0.6)
    image = image + rng.uniform(8.0, 18.0) * noise / noise.std()
    tissues = {name: (blocks == index).all(axis=(1, 3)) for index, name in enumerate(PELVIC_TISSUES)}
    spacing = (field_of_view_mm / size, field_of_view_mm / size)
    return PelvicCtSlice(np.maximum(image, _CT_MIN_HU).astype(np.float32), spacing, level, tissues)
