"""How well paired modalities agree: the tumour read back from PET against the generated mask, and CT consistency."""

from __future__ import annotations

import torch

__all__ = ["pairing_metrics"]


def pairing_metrics(
    ct_hu: torch.Tensor, pet_suv: torch.Tensor, mask: torch.Tensor, hot_spot_suv: float, body_hu: float
) -> dict[str, float]:
    """Agreement between the modalities of a set of triples.

    Args:
        ct_hu: (B, 1, *spatial) CT in HU.
        pet_suv: (B, 1, *spatial) PET in SUV.
        mask: (B, 1, *spatial) tumour mask (non-zero is tumour).
        hot_spot_suv: PET threshold of the hot spot.
        body_hu: CT threshold of the body.

    Returns:
        ``pairing_dice_mean``/``_std`` (over slices where the mask or the hot spot is non-empty; NaN if none),
        ``pairing_both_empty`` (count), ``mask_in_body`` (NaN if no mask pixel), ``empty_mask_fraction``.
    """
    if not (ct_hu.shape == pet_suv.shape == mask.shape) or ct_hu.dim() < 3:
        raise ValueError(
            f"ct, pet and mask must share a (B, 1, *spatial) shape, got {tuple(ct_hu.shape)}, "
            f"{tuple(pet_suv.shape)}, {tuple(mask.shape)}"
        )
    tumour = mask.flatten(1) > 0
    hot = pet_suv.flatten(1) > hot_spot_suv
    body = ct_hu.flatten(1) > body_hu
    either = tumour.any(dim=1) | hot.any(dim=1)
    overlap = (tumour & hot).sum(dim=1).double()
    sizes = tumour.sum(dim=1).double() + hot.sum(dim=1).double()
    scores = (2.0 * overlap[either] / sizes[either]).double()
    mask_pixels = tumour.sum().item()
    return {
        "pairing_dice_mean": float(scores.mean()) if len(scores) else float("nan"),
        "pairing_dice_std": float(scores.std()) if len(scores) > 1 else 0.0,
        "pairing_both_empty": int((~either).sum()),
        "mask_in_body": float((tumour & body).sum().item() / mask_pixels) if mask_pixels else float("nan"),
        "empty_mask_fraction": float((~tumour.any(dim=1)).double().mean()),
    }
