"""Training augmentation of the paired PET-CT slices (MONAI random transforms, one draw for all modalities)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.transforms import (
    Compose,
    RandAffined,
    RandFlipd,
)

__all__ = ["petct_augmentation"]


# ---------------------------------------------------------------------------------------------------- augmentation


def petct_augmentation(
    rotate_degrees: float = 10.0,
    jitter_pixels: float = 4.0,
    flip_prob: float = 0.5,
    prob: float = 0.5,
    image_keys: Sequence[str] = ("ct", "pet"),
    mask_keys: Sequence[str] = ("mask",),
) -> Compose:
    """Training augmentation of the paper (2.2): random jitter, small rotations, flip across the mid-sagittal plane.

    ``RandAffined`` rotates about the image centre by up to ``rotate_degrees`` and translates by up to
    ``jitter_pixels`` per axis (bilinear for images, nearest for masks, so masks stay in {-1, +1}; "border" padding
    keeps a -1 background at -1). ``RandFlipd`` mirrors spatial axis 0, the left-right axis of a RAS axial slice.
    Seed it with ``set_random_state(seed=...)`` (MONAI ``Randomizable``) for reproducible draws.

    Args:
        rotate_degrees: largest rotation angle (degrees, either sign).
        jitter_pixels: largest translation per axis (pixels, either sign).
        flip_prob: probability of the left-right flip.
        prob: probability of applying the rotation + jitter.
        image_keys: intensity images (bilinear interpolation).
        mask_keys: label masks (nearest neighbour).

    Returns:
        A MONAI ``Compose`` of dictionary transforms.

    Raises:
        ValueError: a negative range or a probability outside [0, 1].
    """
    if rotate_degrees < 0 or jitter_pixels < 0:
        raise ValueError(
            f"rotate_degrees and jitter_pixels must be >= 0, got rotate_degrees={rotate_degrees}, "
            f"jitter_pixels={jitter_pixels}"
        )
    for name, value in (("flip_prob", flip_prob), ("prob", prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    keys = [*image_keys, *mask_keys]
    modes = ["bilinear"] * len(image_keys) + ["nearest"] * len(mask_keys)
    return Compose(
        [
            RandAffined(
                keys,
                prob=prob,
                rotate_range=(math.radians(rotate_degrees),),
                translate_range=(jitter_pixels, jitter_pixels),
                mode=modes,
                padding_mode="border",
            ),
            RandFlipd(keys, prob=flip_prob, spatial_axis=0),
        ]
    )
