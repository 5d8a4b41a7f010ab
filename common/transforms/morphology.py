"""Binary morphology on torch masks, through ``scipy.ndimage``: largest connected component, hole filling, opening.

One implementation of each operation for every caller: the CT body isolation (:class:`common.transforms.ct.IsolateBody`)
and the lesion read-back rule (:func:`common.metrics.read_back.segment_enhancing_lesion`). Masks are torch tensors
(or arrays) of shape (*batch, *spatial) with ``spatial_dims`` (2 or 3) trailing spatial axes; every leading axis
indexes independent images. Connectivity is the face neighbours (4 in 2D, 6 in 3D) throughout. The work runs on the
CPU in numpy; the result comes back as a bool tensor on the mask's device.

MONAI's ``KeepLargestConnectedComponent`` needs scikit-image (not a dependency) and its ``FillHoles`` takes the first
axis as label channels and skips channel 0 as background, so neither fits batches of binary masks or per-slice
filling; ``scipy.ndimage`` does, with a structuring element that connects only the chosen axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = ["fill_holes", "largest_component", "binary_opening"]


def _images(mask: torch.Tensor | np.ndarray, spatial_dims: int) -> np.ndarray:
    """``mask`` as a bool numpy array, after checking ``spatial_dims`` against its shape."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim < spatial_dims:
        raise ValueError(f"mask must have at least spatial_dims={spatial_dims} dimensions, got shape {array.shape}")
    return array.astype(bool)


def _like(result: np.ndarray, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    device = mask.device if isinstance(mask, torch.Tensor) else None
    return torch.from_numpy(np.ascontiguousarray(result)).to(device)


def _cross(ndim: int, axes: Sequence[int]) -> np.ndarray:
    """Structuring element (3,) * ndim joining each voxel to its two neighbours along each of ``axes`` only.

    Leaving the batch axes (and, for per-slice filling, the slice axis) out keeps those images apart: no neighbour,
    and no border either, along an axis the element does not reach.
    """
    structure = np.zeros((3,) * ndim, dtype=bool)
    centre = [1] * ndim
    structure[tuple(centre)] = True
    for axis in axes:
        for step in (0, 2):
            structure[tuple(step if k == axis else c for k, c in enumerate(centre))] = True
    return structure


def _spatial_axes(ndim: int, spatial_dims: int, axes: Sequence[int] | None) -> list[int]:
    """Absolute array axes of the spatial ``axes`` (indices among the trailing ``spatial_dims``; None: all)."""
    if axes is None:
        return list(range(ndim - spatial_dims, ndim))
    chosen = [int(a) for a in axes]
    if not chosen or len(set(chosen)) != len(chosen) or any(not 0 <= a < spatial_dims for a in chosen):
        raise ValueError(f"axes must be distinct spatial axes in [0, {spatial_dims}), got {list(axes)}")
    return [ndim - spatial_dims + a for a in chosen]


def fill_holes(
    mask: torch.Tensor | np.ndarray, spatial_dims: int = 3, axes: Sequence[int] | None = None
) -> torch.Tensor:
    """Binary hole filling: background not connected to the border of its image becomes foreground.

    Args:
        mask: bool (or 0/1) tensor, shape (*batch, *spatial), e.g. (H, W), (X, Y, Z) or (B, C, X, Y, Z); every
            leading dimension is an independent image.
        spatial_dims: 2 or 3, the number of trailing spatial dimensions. Default 3.
        axes: the spatial axes (0 to ``spatial_dims`` - 1) along which background connects and whose ends are the
            border. ``None`` (default): all of them, holes of the image. Leaving one out fills the holes of each
            slice normal to it, e.g. ``(0, 1)`` on an RAS volume: holes of every axial slice.

    Returns:
        bool tensor of ``mask``'s shape on its device: ``mask`` with its holes set.
    """
    images = _images(mask, spatial_dims)
    structure = _cross(images.ndim, _spatial_axes(images.ndim, spatial_dims, axes))
    return _like(ndimage.binary_fill_holes(images, structure=structure), mask)


def _largest_label(labels: np.ndarray) -> int:
    """The label of the largest component; ties go to the component whose last voxel (memory order) comes first."""
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    tied = np.flatnonzero(sizes == sizes.max())
    if len(tied) == 1:
        return int(tied[0])
    # the tie rule of the earlier label-propagation implementation, kept so results do not change
    last = ndimage.maximum(np.arange(labels.size).reshape(labels.shape), labels, tied)
    return int(tied[int(np.argmin(last))])


def largest_component(mask: torch.Tensor | np.ndarray, spatial_dims: int = 3) -> torch.Tensor:
    """The largest connected component of a binary mask (4-connectivity in 2D, 6 in 3D), per image.

    Ties between equally large components go to the one whose last voxel comes first in memory (C) order.

    Args:
        mask: bool (or 0/1) tensor, shape (*batch, *spatial); every leading dimension is an independent image.
        spatial_dims: 2 or 3, the number of trailing spatial dimensions. Default 3.

    Returns:
        bool tensor of ``mask``'s shape on its device; an empty image stays empty.
    """
    images = _images(mask, spatial_dims)
    flat = images.reshape(-1, *images.shape[images.ndim - spatial_dims :])
    structure = ndimage.generate_binary_structure(spatial_dims, 1)
    kept = np.zeros_like(flat)
    for index, image in enumerate(flat):
        labels, count = ndimage.label(image, structure=structure)
        if count:
            kept[index] = labels == _largest_label(labels)
    return _like(kept.reshape(images.shape), mask)


def binary_opening(mask: torch.Tensor | np.ndarray, radius: int, spatial_dims: int = 3) -> torch.Tensor:
    """Morphological opening by a cube (square in 2D) of side ``2 radius + 1``, per image.

    Unlike ``ndimage.binary_opening`` (one border value for both steps), the erosion treats the outside of the array
    as foreground and the dilation as background: a structure cut by the array edge (a body beyond the field of view)
    is not eroded from that edge, and the opening adds nothing along it.

    Args:
        mask: bool (or 0/1) tensor, shape (*batch, *spatial).
        radius: half the side of the cube, in voxels; 0 returns the mask.
        spatial_dims: 2 or 3. Default 3.

    Returns:
        bool tensor of ``mask``'s shape on its device.
    """
    images = _images(mask, spatial_dims)
    if isinstance(radius, bool) or int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be an integer >= 0 voxels, got {radius!r}")
    if radius == 0:
        return _like(images, mask)
    size = (1,) * (images.ndim - spatial_dims) + (2 * int(radius) + 1,) * spatial_dims
    cube = np.ones(size, dtype=bool)
    eroded = ndimage.binary_erosion(images, structure=cube, border_value=1)
    return _like(ndimage.binary_dilation(eroded, structure=cube, border_value=0), mask)
