"""Offset noise for diffusion training (the paired PET-CT paper's modified forward process, its Eq. 1-2).

Standard training noise is drawn per voxel, ``N_ij ~ N(0, 1)``. Offset noise adds one constant per sample and channel,
``C ~ scale * N(0, 1)``, to every voxel: ``N'_ij = N_ij + C``. The network learns to predict ``N'`` (the noise it is
trained on), which makes it learn each image's overall brightness, and helps with mostly dark images such as medical
scans. The paper uses ``scale = 0.1`` and found larger scales harmful. Training only: sampling starts from plain
Gaussian noise.

``offset_noise`` is the function; ``OffsetNoisePrepareBatch`` is MONAI's ``DiffusionPrepareBatch`` with it as
``get_noise``, for bundles trained with ``SupervisedTrainer``.
"""

from __future__ import annotations

import torch
from monai.engines.utils import DiffusionPrepareBatch

__all__ = ["OffsetNoisePrepareBatch", "offset_noise"]


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


class OffsetNoisePrepareBatch(DiffusionPrepareBatch):
    """``DiffusionPrepareBatch`` whose training noise is :func:`offset_noise` with ``offset_scale``.

    Args:
        num_train_timesteps: T.
        offset_scale: scale of the per-sample, per-channel offset. Default 0.1 (the paper).
        condition_name: batch key of the condition, as in ``DiffusionPrepareBatch``.
    """

    def __init__(self, num_train_timesteps: int, offset_scale: float = 0.1, condition_name: str | None = None) -> None:
        if offset_scale < 0:
            raise ValueError(f"offset_scale must be >= 0, got {offset_scale}")
        super().__init__(num_train_timesteps, condition_name)
        self.offset_scale = float(offset_scale)

    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        return offset_noise(images, self.offset_scale)
