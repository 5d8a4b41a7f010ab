"""Figures of the guidance bundle (paper 003): does a guided sample follow its references, and without a seam?

- ``low_pass_psnr``: PSNR of ``phi_N(sample)`` against ``phi_N(reference)`` (area filter): agreement of the low
  frequencies with the anatomy reference (guided vs unguided is the benchmark's first target).
- ``read_back_lesion``: a fixed rule reading a bright lesion back inside the patch box: the brightest blob of the
  residual over the smoothed image (Dice against the placed mask).
- ``seam_ratio``: mean gradient magnitude on the patch box's border ring over the mean inside the breast elsewhere;
  near 1 when the patch blends in, well above 1 for a visible seam.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, label

from common.inferers.guidance import LowPassFilter

__all__ = ["low_pass_psnr", "read_back_lesion", "seam_ratio", "box_slices"]


def box_slices(corner: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """Index of the box of size ``shape`` whose first pixel is ``corner``."""
    return tuple(slice(int(c), int(c) + int(s)) for c, s in zip(corner, shape))


def low_pass_psnr(sample: torch.Tensor, reference: torch.Tensor, factor: int, data_range: float = 2.0) -> torch.Tensor:
    """PSNR (dB) of ``phi_N(sample)`` against ``phi_N(reference)`` per batch row, area filter with factor ``N``.

    Args:
        sample, reference: (B, C, *spatial); reference may have batch 1.
        factor: ``N`` (divides every spatial size).
        data_range: intensity range of the images (2 for [-1, 1]).

    Returns:
        (B,) float tensor.
    """
    phi = LowPassFilter(factor)
    error = (phi(sample.float()) - phi(reference.float()).expand_as(sample)) ** 2
    return 10.0 * torch.log10(float(data_range) ** 2 / error.flatten(1).mean(1).clamp_min(1e-12))


def read_back_lesion(
    image: np.ndarray, corner: Sequence[int], shape: Sequence[int], relative_threshold: float, sigma: float
) -> np.ndarray:
    """Bool (H, W): the bright blob of the box. The residual ``image - gaussian(image, sigma)`` (``sigma`` in pixels)
    is thresholded at ``relative_threshold`` times its maximum inside the box, and the connected region holding
    that maximum is kept; False outside the box."""
    image = np.asarray(image, dtype=np.float64)
    residual = image - gaussian_filter(image, sigma)
    found = np.zeros(image.shape, dtype=bool)
    box = box_slices(corner, shape)
    inside = residual[box]
    peak = float(inside.max())
    if peak <= 0:
        return found
    found[box] = inside > float(relative_threshold) * peak
    regions, _ = label(found)
    brightest = regions[np.unravel_index(np.argmax(np.where(found, residual, -np.inf)), found.shape)]
    return regions == brightest


def seam_ratio(image: np.ndarray, corner: Sequence[int], shape: Sequence[int], breast: np.ndarray) -> float:
    """Mean gradient magnitude on the one-pixel border ring of the box over its mean on the breast pixels away from
    the box (NaN when either set is empty)."""
    image = np.asarray(image, dtype=np.float64)
    magnitude = np.hypot(*np.gradient(image))
    ring = np.zeros(image.shape, dtype=bool)
    ring[box_slices(corner, shape)] = True
    inner = np.zeros_like(ring)
    inner[box_slices([c + 1 for c in corner], [max(s - 2, 0) for s in shape])] = True
    ring &= ~inner
    away = np.asarray(breast, dtype=bool).copy()
    grown = [max(c - 2, 0) for c in corner]
    away[box_slices(grown, [s + 4 for s in shape])] = False
    if not ring.any() or not away.any():
        return float("nan")
    return float(magnitude[ring].mean() / max(magnitude[away].mean(), 1e-12))
