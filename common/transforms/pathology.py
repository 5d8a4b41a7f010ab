"""Pathology-patch preparation of paper 003 (Sec. 2.2, Fig. 1b) and the patch's placement inside the breast.

Before a pathology patch guides sampling (Eq. 5) its appearance is brought close to the anatomy reference:

1. histogram equalisation (MONAI ``HistogramNormalize``, to [0, 1]);
2. normalisation between the reference image's minimum and its ``q``-quantile, ``q`` drawn uniformly in
   ``quantile_range`` (paper: [0.975, 0.995]);
3. a Gaussian weighting that fades the patch towards the reference minimum at its edge (no discontinuity between
   patch and image).

``PathologyPatchNormalize`` / ``PathologyPatchNormalized`` are that transform as a MONAI ``Transform`` /
``MapTransform`` pair. The paper's random rotation, translation and flipping are MONAI's ``RandRotated``,
``RandAffined`` and ``RandFlipd`` on the patch and its mask (see the bundle's inference config). ``place_patch``
chooses where the patch goes: a position whose lesion pixels all lie inside the breast mask; ``paste_patch`` puts the
prepared patch into the reference (the pathology condition's target image).

Step 3 can be read two ways (:class:`PatchFade`): the patch's values fade towards the reference minimum and the
patch replaces its box (``minimum``, the reading of the base configs), or the patch is blended into the reference
with the Gaussian as blending weight, so that its edge becomes the reference's own tissue (``reference``, a project
overlay).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import HistogramNormalize, MapTransform, Randomizable, Transform
from monai.utils import StrEnum

from common.inferers.guidance import gaussian_patch_weight

__all__ = [
    "PAPER_QUANTILE_RANGE",
    "PatchFade",
    "PathologyPatchNormalize",
    "PathologyPatchNormalized",
    "PathologyPatchNormalizeD",
    "PathologyPatchNormalizeDict",
    "edge_fade_weight",
    "paste_patch",
    "place_patch",
]

PAPER_QUANTILE_RANGE = (0.975, 0.995)
"""Range of the reference quantile the patch is normalised to (paper 003, Sec. 2.2)."""


class PatchFade(StrEnum):
    """How the patch's Gaussian edge weighting (paper 003, Fig. 1b) joins the patch to the image.

    - ``minimum``: the patch's values fade towards the reference minimum (:class:`PathologyPatchNormalize` with an
      ``edge_sigma_fraction``) and the faded patch replaces its box (``paste_patch`` without ``fade``);
    - ``reference``: the patch is prepared without fading and blended into the reference with the Gaussian as weight
      (``paste_patch`` with ``fade=edge_fade_weight(...)``): no dark frame around the lesion.
    """

    MINIMUM = "minimum"
    REFERENCE = "reference"


def edge_fade_weight(patch_shape: Sequence[int], sigma_fraction: float) -> torch.Tensor:
    """The edge weighting of Fig. 1b over a patch: (*patch_shape), peak 1 at the centre, sigma
    ``sigma_fraction`` x the smallest side (:func:`common.inferers.guidance.gaussian_patch_weight` over the patch)."""
    spatial = tuple(int(v) for v in patch_shape)
    return gaussian_patch_weight(spatial, spatial, [0] * len(spatial), sigma_fraction)[0]


class PathologyPatchNormalize(Randomizable, Transform):
    """Equalise a patch's histogram, map it to [min(reference), quantile_q(reference)], fade its edge (Fig. 1b).

    ``q`` is drawn uniformly from ``quantile_range`` at every call (``self.quantile`` holds the last one). The result
    is ``lo + (hi - lo) * equalised * edge``, with ``lo = min(reference)``, ``hi`` the ``q``-quantile of the
    reference (over ``reference_mask`` when given, e.g. the breast), ``equalised`` in [0, 1] and ``edge`` the
    Gaussian of :func:`common.inferers.guidance.gaussian_patch_weight` over the whole patch (peak 1). Values stay in
    ``[lo, hi]``; without the edge weighting the maximum is ``hi`` exactly.

    Args:
        quantile_range: (low, high) with 0 <= low <= high <= 1. Default the paper's (0.975, 0.995).
        edge_sigma_fraction: sigma of the edge weighting as a share of the smallest patch side; None: no weighting.
            Default 0.25 (a project choice; the paper gives no value).
        num_bins: histogram bins of the equalisation.

    Raises:
        ValueError: a bad ``quantile_range`` or ``edge_sigma_fraction`` (the config key is named).
    """

    def __init__(
        self,
        quantile_range: Sequence[float] = PAPER_QUANTILE_RANGE,
        edge_sigma_fraction: float | None = 0.25,
        num_bins: int = 256,
    ) -> None:
        low, high = (float(v) for v in quantile_range)
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"config key 'patch_quantile_range': expected 0 <= low <= high <= 1, got {list(quantile_range)}"
            )
        if edge_sigma_fraction is not None and not edge_sigma_fraction > 0:
            raise ValueError(f"config key 'patch_edge_sigma_fraction': expected > 0 or null, got {edge_sigma_fraction}")
        self.quantile_range = (low, high)
        self.edge_sigma_fraction = edge_sigma_fraction
        self.equalise = HistogramNormalize(num_bins=num_bins, min=0, max=1)
        self.quantile = low

    def randomize(self, data: Any = None) -> None:
        self.quantile = float(self.R.uniform(*self.quantile_range))

    def __call__(
        self, patch: torch.Tensor, reference: torch.Tensor, reference_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The prepared patch (float32, shape of ``patch``: channel-first (C, *spatial)).

        Raises:
            ValueError: NaN/inf in the patch or the reference, an empty reference mask.
        """
        patch = torch.as_tensor(patch, dtype=torch.float32)
        reference = torch.as_tensor(reference, dtype=torch.float32)
        for name, value in (("pathology patch", patch), ("anatomy reference", reference)):
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"the {name} holds NaN/inf values")
        self.randomize()
        values = reference.flatten()
        if reference_mask is not None:
            values = reference[torch.as_tensor(reference_mask).expand_as(reference) > 0]
            if values.numel() == 0:
                raise ValueError("the anatomy reference's mask is empty: no pixel to take the quantile of")
        low = float(reference.min())
        high = float(torch.quantile(values.double(), self.quantile))
        equalised = torch.ones_like(patch)  # a constant patch has no histogram to equalise
        if float(patch.max() - patch.min()) > 0:
            equalised = torch.as_tensor(self.equalise(patch), dtype=torch.float32)
            span = float(equalised.max() - equalised.min())
            equalised = (equalised - equalised.min()) / span if span > 0 else torch.ones_like(equalised)
        if self.edge_sigma_fraction is not None:
            equalised = equalised * edge_fade_weight(patch.shape[1:], self.edge_sigma_fraction)
        return low + (high - low) * equalised


class PathologyPatchNormalized(Randomizable, MapTransform):
    """Dictionary version of :class:`PathologyPatchNormalize`: prepares ``keys`` against ``data[reference_key]``
    (and ``data[reference_mask_key]`` when given) and records the drawn quantile under ``quantile_key``.

    Args:
        keys: the patch key(s).
        reference_key: the anatomy reference's key.
        reference_mask_key: the key of a mask restricting the quantile (e.g. the breast), or None.
        quantile_key: where the drawn ``q`` is stored (provenance).
        quantile_range, edge_sigma_fraction, num_bins: as for :class:`PathologyPatchNormalize`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str = "reference",
        reference_mask_key: str | None = None,
        quantile_key: str = "patch_quantile",
        quantile_range: Sequence[float] = PAPER_QUANTILE_RANGE,
        edge_sigma_fraction: float | None = 0.25,
        num_bins: int = 256,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.transform = PathologyPatchNormalize(quantile_range, edge_sigma_fraction, num_bins)
        self.reference_key = reference_key
        self.reference_mask_key = reference_mask_key
        self.quantile_key = quantile_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.transform.randomize()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = d[self.reference_mask_key] if self.reference_mask_key else None
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], d[self.reference_key], mask)
            d[self.quantile_key] = self.transform.quantile
        return d


PathologyPatchNormalizeD = PathologyPatchNormalizeDict = PathologyPatchNormalized


def paste_patch(
    reference: torch.Tensor, patch: torch.Tensor, corner: Sequence[int], fade: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference with the patch put in at ``corner`` (a new tensor; channel-first (C, *spatial) and
    (C, *patch_spatial)).

    Args:
        reference: the anatomy reference.
        patch: the prepared patch, in the reference's intensity units.
        corner: the first pixel index of the patch's box (:func:`place_patch`).
        fade: None: the box becomes the patch (:attr:`PatchFade.MINIMUM`, the patch already faded); a weight
            (*patch_spatial) in [0, 1]: the box becomes ``reference + fade * (patch - reference)``
            (:attr:`PatchFade.REFERENCE`).

    Raises:
        ValueError: the box leaves the image, or ``fade`` has another shape than the patch.
    """
    reference, patch = torch.as_tensor(reference), torch.as_tensor(patch)
    spatial, patch_spatial = tuple(reference.shape[1:]), tuple(patch.shape[1:])
    corner = tuple(int(c) for c in corner)
    if len(corner) != len(spatial) or any(c < 0 or c + p > s for c, p, s in zip(corner, patch_spatial, spatial)):
        raise ValueError(f"a patch of size {patch_spatial} at {list(corner)} leaves the image {spatial}")
    box = (slice(None), *(slice(c, c + p) for c, p in zip(corner, patch_spatial)))
    canvas = reference.clone()
    if fade is None:
        canvas[box] = patch
        return canvas
    fade = torch.as_tensor(fade, dtype=canvas.dtype)
    if tuple(fade.shape) != patch_spatial:
        raise ValueError(f"the fade weight has shape {tuple(fade.shape)}, expected the patch's {patch_spatial}")
    canvas[box] = canvas[box] + fade * (patch - canvas[box])
    return canvas


def place_patch(
    lesion_mask: torch.Tensor,
    breast_mask: torch.Tensor,
    rng: np.random.Generator,
    position: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """The corner (first pixel index) at which a patch goes: every lesion pixel inside the breast mask.

    Args:
        lesion_mask: (*patch_spatial) bool, the patch's lesion.
        breast_mask: (*spatial) bool, where a lesion may be (the breast of the anatomy reference).
        rng: draws the position among the allowed ones when ``position`` is None.
        position: a requested corner (config key ``patch_position``), checked rather than drawn.

    Raises:
        ValueError: the patch is larger than the image (``patch_size``), the requested position puts the patch
            outside the image or the lesion outside the breast (``patch_position``), or no position fits.
    """
    lesion = torch.as_tensor(lesion_mask).bool()
    breast = torch.as_tensor(breast_mask).bool()
    patch_shape, image_shape = tuple(lesion.shape), tuple(breast.shape)
    if len(patch_shape) != len(image_shape) or any(p > s for p, s in zip(patch_shape, image_shape)):
        raise ValueError(f"config key 'patch_size': a patch of size {patch_shape} does not fit the image {image_shape}")
    if not bool(lesion.any()):
        raise ValueError("the pathology patch's lesion mask is empty: nothing to place")
    if position is not None:
        corner = tuple(int(v) for v in position)
        window = tuple(slice(c, c + p) for c, p in zip(corner, patch_shape))
        inside_image = len(corner) == len(image_shape) and all(
            0 <= c <= s - p for c, p, s in zip(corner, patch_shape, image_shape)
        )
        if not inside_image or not bool(breast[window][lesion].all()):
            raise ValueError(
                f"config key 'patch_position': {list(position)} puts the lesion outside the breast mask (or the patch "
                f"of size {patch_shape} outside the image {image_shape})"
            )
        return corner
    # every corner whose patch keeps the lesion inside the breast (an erosion of the breast by the lesion footprint,
    # restricted to corners that keep the patch inside the image)
    outside = ~breast.numpy()
    valid_shape = tuple(s - p + 1 for s, p in zip(image_shape, patch_shape))
    allowed = np.ones(valid_shape, dtype=bool)
    for offset in np.argwhere(lesion.numpy()):
        window = tuple(slice(o, o + v) for o, v in zip(offset, valid_shape))
        allowed &= ~outside[window]
    choices = np.argwhere(allowed)
    if len(choices) == 0:
        raise ValueError(
            f"config key 'patch_size': no position puts the lesion of a {patch_shape} patch inside the breast mask"
        )
    return tuple(int(v) for v in choices[rng.integers(len(choices))])
