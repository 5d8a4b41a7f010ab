"""Fixed intensity rules that read a structure back from a generated image, for benchmarks and evaluation.

A mask-conditioned generator (Med-DDPM, ``semantic_mri``) should draw the tumour where the conditioning mask puts
it. ``segment_enhancing_lesion`` reads a ring-enhancing tumour back from a T1c image with one threshold and hole
filling, and ``common.metrics.segmentation.mask_dice`` compares it with the mask. The rule runs on torch tensors, 2D
or 3D, single or batched; its morphology is that of :mod:`common.transforms.morphology`, shared with the CT body
isolation.
"""

from __future__ import annotations

import torch

from common.transforms.morphology import fill_holes, largest_component

__all__ = ["WHOLE_HEAD_TUMOUR_THRESHOLD", "segment_enhancing_lesion"]


WHOLE_HEAD_TUMOUR_THRESHOLD = 0.35
"""Threshold for ``segment_enhancing_lesion`` on whole-head T1c images scaled per volume to [-1, 1] (0th and 99.9th
percentiles mapped to -1 and 1, then clipped), as the ``semantic_mri`` pipeline does. Tuned on the ``whole_head_mri``
phantom: enhancing rim above it, scalp fat and white matter well below it."""


def segment_enhancing_lesion(
    image: torch.Tensor, threshold: float, spatial_dims: int = 3, largest: bool = False
) -> torch.Tensor:
    """Read a ring-enhancing lesion back from an image: voxels brighter than ``threshold``, holes filled.

    This is the rule the ``semantic_mri`` benchmark uses to read the tumour back from a generated whole-head T1c
    image (with ``WHOLE_HEAD_TUMOUR_THRESHOLD`` on images scaled to [-1, 1]): the enhancing rim passes the
    threshold, and filling the holes adds the necrotic core it encloses, which matches the tumour label (rim + core).
    With ``largest``, only the largest connected bright region is kept before filling: the lesion is one connected
    region, and scattered bright voxels elsewhere (e.g. scalp fat of a generated image) are not read as lesion.

    Args:
        image: float tensor, shape (*batch, *spatial); every leading dimension is an independent image.
        threshold: intensity in the units of ``image``; voxels strictly above it are the lesion's enhancing part.
        spatial_dims: 2 or 3. Default 3.
        largest: keep only the largest connected component (per image) of the voxels above ``threshold``.

    Returns:
        bool tensor of ``image``'s shape.
    """
    bright = image > threshold
    if largest:
        bright = largest_component(bright, spatial_dims=spatial_dims)
    return fill_holes(bright, spatial_dims=spatial_dims)
