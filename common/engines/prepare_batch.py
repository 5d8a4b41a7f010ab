"""Batch preparation for the bundle engines: offset noise, hybrid-loss diffusion batches and autoencoder batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch

from common.losses.hybrid import DiffusionTarget

__all__ = [
    "offset_noise",
    "AutoencoderPrepareBatch",
    "HybridLossPrepareBatch",
    "WeightedTimestepPrepareBatch",
    "min_snr_timestep_weights",
]


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


def min_snr_timestep_weights(alphas_cumprod: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma weights of the noise-prediction loss per training timestep: ``min(SNR_t, gamma) / SNR_t``.

    ``SNR_t = alpha_bar_t / (1 - alpha_bar_t)`` (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
    Strategy", ICCV 2023, Eq. 6 rewritten for a noise target). Timesteps whose signal-to-noise ratio is above
    ``gamma`` (the nearly clean ones) get weight ``gamma / SNR_t < 1``; the noisier ones weight 1.

    Args:
        alphas_cumprod: (T,) cumulative products of the noise schedule's alphas, in (0, 1].
        gamma: SNR cap, > 0 (the paper's default 5).

    Returns:
        (T,) float64 weights in (0, 1].
    """
    if gamma <= 0:
        raise ValueError(f"min-SNR gamma must be > 0, got {gamma}")
    alpha_bar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if alpha_bar.dim() != 1 or alpha_bar.numel() == 0 or bool(((alpha_bar <= 0) | (alpha_bar > 1)).any()):
        raise ValueError(f"alphas_cumprod must be a non-empty 1-D tensor in (0, 1], got {tuple(alpha_bar.shape)}")
    snr = alpha_bar / (1.0 - alpha_bar).clamp_min(1e-12)
    return torch.clamp(snr, max=gamma) / snr


class WeightedTimestepPrepareBatch(DiffusionPrepareBatch):
    """``DiffusionPrepareBatch`` that draws training timesteps with probabilities proportional to ``weights``.

    Sampling ``t ~ w_t / sum(w)`` with the plain loss has the expected gradient of the loss weighted by ``w_t`` under
    uniform ``t`` (up to a constant factor absorbed by the learning rate), and spends the iterations where the
    weight is. With ``min_snr_timestep_weights`` this is Min-SNR-gamma weighting as a timestep distribution.

    Args:
        num_train_timesteps: T of the noise schedule.
        weights: (T,) non-negative weights, not all zero.
        condition_name: as ``DiffusionPrepareBatch``.
    """

    def __init__(self, num_train_timesteps: int, weights: torch.Tensor, condition_name: str | None = None) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_name)
        probs = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if probs.numel() != num_train_timesteps:
            raise ValueError(
                f"timestep weights: expected {num_train_timesteps} values (num_train_timesteps), got {probs.numel()}"
            )
        if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()) or float(probs.sum()) <= 0:
            raise ValueError("timestep weights must be finite, >= 0 and not all zero")
        self.probs = (probs / probs.sum()).float()

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        drawn = torch.multinomial(self.probs, images.shape[0], replacement=True)
        return drawn.to(images.device).long()


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
