"""The latent scale factor of latent diffusion (1 / std of the training latents), kept with the training state."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor
from torch import nn

__all__ = ["LatentStats", "compute_scale_factor", "latent_scale_factor", "compute_latent_scale_factor"]

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
    from common.data.latent_scale import latent_scale_factor

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


def _moments(values: torch.Tensor) -> tuple[int, float, float]:
    """(count, mean, sum of squared deviations) of a tensor, in float64."""
    flat = values.detach().reshape(-1).double().cpu()
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"latents must be finite, got {int((~torch.isfinite(flat)).sum())} NaN/inf values.")
    mean = float(flat.mean()) if flat.numel() else 0.0
    return flat.numel(), mean, float(((flat - mean) ** 2).sum())


def _merge(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Combine two (count, mean, M2) summaries (Chan et al.'s pairwise update)."""
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    n = n_a + n_b
    if n == 0:
        return 0, 0.0, 0.0
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n


def _factor_from_moments(moments: tuple[int, float, float], what: str) -> float:
    count, _, m2 = moments
    if count < 2:
        raise ValueError(f"{what} must hold at least 2 latent values to estimate a standard deviation, got {count}.")
    std = math.sqrt(m2 / (count - 1))
    if std == 0:
        raise ValueError(f"{what} have zero standard deviation (all values equal): no scale factor 1 / std exists.")
    return 1.0 / std


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
    moments: tuple[int, float, float] = (0, 0.0, 0.0)
    for item in items:
        moments = _merge(moments, _moments(convert_to_tensor(item, track_meta=False)))
    return _factor_from_moments(moments, "latents")


def compute_latent_scale_factor(
    autoencoder: Any,
    loader: Iterable[Any],
    image_key: str = "image",
    max_batches: int | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Encode training images with ``autoencoder.encode_stage_2_inputs`` and return :func:`latent_scale_factor`.

    The latents are sampled (``z = mu + sigma * eps``, what the diffusion model is trained on), batch by batch
    without gradients and without keeping them: only running moments are stored.

    Args:
        autoencoder: MONAI ``AutoencoderKL`` (anything with ``encode_stage_2_inputs``).
        loader: iterable of batches: dicts holding ``image_key`` or image tensors (B, C, *spatial).
        image_key: key of the images in dict batches.
        max_batches: stop after this many batches (None: the whole loader).
        device: device to encode on (default: the autoencoder's parameters' device).

    Returns:
        1 / std of the latents.

    Raises:
        ValueError: bad ``max_batches``, a dict batch without ``image_key``, an empty loader, zero std.
        TypeError: no ``encode_stage_2_inputs`` method.
    """
    encode = getattr(autoencoder, "encode_stage_2_inputs", None)
    if not callable(encode):
        raise TypeError(
            f"autoencoder must have encode_stage_2_inputs (MONAI AutoencoderKL), got {type(autoencoder).__name__}."
        )
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"max_batches must be a positive integer or None, got {max_batches!r}.")
    if device is None:
        parameter = next(iter(autoencoder.parameters()), None) if hasattr(autoencoder, "parameters") else None
        device = parameter.device if parameter is not None else "cpu"
    moments: tuple[int, float, float] = (0, 0.0, 0.0)
    n_batches = 0
    with torch.no_grad():
        for batch in loader:
            if max_batches is not None and n_batches >= max_batches:
                break
            if isinstance(batch, Mapping):
                if image_key not in batch:
                    raise ValueError(
                        f"batch {n_batches} has no key {image_key!r}; its keys are {sorted(map(str, batch))}."
                    )
                images = batch[image_key]
            else:
                images = batch
            images = convert_to_tensor(images, dtype=torch.float32, track_meta=False)
            moments = _merge(moments, _moments(encode(images.to(device))))
            n_batches += 1
    if n_batches == 0:
        raise ValueError("loader yielded no batches: cannot compute the latent scale factor.")
    return _factor_from_moments(moments, f"latents of {n_batches} batch(es)")
