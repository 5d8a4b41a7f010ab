"""Batch preparation for the bundle engines: offset noise, hybrid-loss diffusion batches and autoencoder batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch

from common.losses.hybrid import DiffusionTarget

__all__ = ["offset_noise", "AutoencoderPrepareBatch", "HybridLossPrepareBatch"]


def offset_noise(like: torch.Tensor, scale: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise shaped like ``like`` plus a per-sample, per-channel constant ``C ~ scale * N(0, 1)``.

    Args:
        like: (B, C, *spatial) tensor giving shape, dtype and device.
        scale: standard deviation of the offset; 0 gives plain Gaussian noise. Must be >= 0.
        generator: random generator (on ``like``'s device) for reproducible noise.

    Returns:
        Tensor of ``like``'s shape: ``randn + scale * randn(B, C, 1, ..., 1)``.
    """
    if scale < 0:
        raise ValueError(f"offset noise scale must be >= 0, got {scale}")
    if like.dim() < 3:
        raise ValueError(f"offset noise expects (B, C, *spatial), got shape {tuple(like.shape)}")
    options = {"generator": generator, "device": like.device, "dtype": like.dtype}
    noise = torch.randn(like.shape, **options)
    if scale > 0:
        noise = noise + scale * torch.randn((*like.shape[:2], *(1,) * (like.dim() - 2)), **options)
    return noise


class AutoencoderPrepareBatch:
    """``prepare_batch`` of the autoencoder engines: the image is both the input and the target.

    Args:
        image_key: key of the (B, C, *spatial) images in the batch dict.
    """

    def __init__(self, image_key: str = "image") -> None:
        self.image_key = image_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.image_key not in batchdata:
            raise KeyError(f"batch has no '{self.image_key}' entry (keys: {sorted(map(str, batchdata))})")
        image = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        return image, image


class HybridLossPrepareBatch(DiffusionPrepareBatch):
    """MONAI's ``DiffusionPrepareBatch`` whose target is a :class:`common.losses.hybrid.DiffusionTarget`.

    The hybrid loss of a learned-variance model (:class:`common.losses.HybridDiffusionLoss`) needs the clean images
    and the timesteps besides the noise; the inferer's inputs and keyword arguments (``noise``, ``timesteps``) are
    MONAI's.

    Args:
        num_train_timesteps: T; timesteps are drawn uniformly from 0 .. T - 1.
        condition_name: key of a condition in the batch, as for ``DiffusionPrepareBatch``.
    """

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, DiffusionTarget, tuple, dict]:
        images, noise, args, infer_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        return images, DiffusionTarget(noise, images, infer_kwargs["timesteps"]), args, infer_kwargs
