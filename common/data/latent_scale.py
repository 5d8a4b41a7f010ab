"""The latent scale factor of latent diffusion (1 / std of the training latents), kept with the training state."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor
from torch import nn

__all__ = ["LatentStats", "compute_scale_factor", "latent_scale_factor"]

logger = logging.getLogger(__name__)


class LatentStats(nn.Module):
    """What sampling needs from training besides the weights, kept in the checkpoint as buffers.

    ``scale_factor``: multiplies latents before diffusion (``1 / std`` of the training latents; 1 until computed).
    ``pixdim``: voxel size (mm) of the training grid, written into the affine of the samples.
    """

    def __init__(self, pixdim: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.register_buffer("scale_factor", torch.tensor(1.0, dtype=torch.float32))
        self.register_buffer("pixdim", torch.as_tensor([float(p) for p in pixdim], dtype=torch.float32))
        self.register_buffer("computed", torch.tensor(False))

    def set_scale(self, scale_factor: float) -> None:
        if not scale_factor > 0 or not torch.isfinite(torch.tensor(scale_factor)):
            raise ValueError(f"latent scale factor must be a positive finite number, got {scale_factor}")
        self.scale_factor.fill_(float(scale_factor))
        self.computed.fill_(True)

    def forward(self) -> torch.Tensor:  # pragma: no cover - a holder, not a layer
        return self.scale_factor


def compute_scale_factor(dataset: Any, stats: LatentStats, key: str = "image", max_items: int | None = None) -> float:
    """Set ``stats``' scale factor to ``1 / std`` of training latents drawn from ``dataset`` and return it.

    The dataset's transforms end with :class:`SampleLatentd` reading ``stats.scale_factor``, which is reset to 1
    first so the draws are unscaled. Under ``torchrun`` rank 0's value is broadcast, so every rank trains on the same
    scale.

    Args:
        dataset: a dataset whose items hold latents under ``key``.
        stats: the :class:`LatentStats` of the run (also in the checkpoint).
        key: latent key of the items.
        max_items: use at most this many items (None: all).
    """
    count = len(dataset) if max_items is None else min(len(dataset), int(max_items))
    if count < 1:
        raise ValueError("compute_scale_factor: the training dataset is empty")
    stats.scale_factor.fill_(1.0)
    latents = torch.stack([torch.as_tensor(dataset[i][key]).float() for i in range(count)])
    stats.set_scale(latent_scale_factor(latents))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        nccl = torch.distributed.get_backend() == "nccl"
        value = stats.scale_factor.clone().to(torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
        torch.distributed.broadcast(value, src=0)
        stats.scale_factor.copy_(value.to(stats.scale_factor.device))
    logger.info(f"latent scale factor 1/std over {count} training latent(s): {float(stats.scale_factor):.4f}")
    return float(stats.scale_factor)


def latent_scale_factor(latents: torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray]) -> float:
    """Latent diffusion's scale factor: 1 / (standard deviation of all training latent values).

    The diffusion model is trained on ``z * factor`` (unit variance) and samples are decoded from ``z / factor``
    (Rombach et al. 2022, the convention of MONAI's ``LatentDiffusionInferer``). The sample standard deviation
    (n - 1) over every value of every latent, all channels together, in float64.

    Args:
        latents: one tensor/array of latents, or an iterable of them (e.g. one per batch).

    Returns:
        The factor as a float.

    Raises:
        ValueError: no values (or fewer than 2), non-finite values, or zero standard deviation.
    """
    items = [latents] if isinstance(latents, torch.Tensor | np.ndarray) else list(latents)
    values = [convert_to_tensor(item, track_meta=False).detach().reshape(-1).double().cpu() for item in items]
    flat = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"latents must be finite, got {int((~torch.isfinite(flat)).sum())} NaN/inf values.")
    if flat.numel() < 2:
        raise ValueError(
            f"latents must hold at least 2 latent values to estimate a standard deviation, got {flat.numel()}."
        )
    std = float(flat.std())
    if std == 0:
        raise ValueError("latents have zero standard deviation (all values equal): no scale factor 1 / std exists.")
    return 1.0 / std
