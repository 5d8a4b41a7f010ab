"""Timestep-aware blocks of the paired denoisers: a frequency low-pass (TLP) and a timestep-modulated CBAM."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

__all__ = ["normalised_radial_frequency", "low_pass_gain", "TimestepLowPass", "TimestepCBAM"]


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def normalised_radial_frequency(spatial_shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Radial frequency ``rho`` in [0, 1] on the ``rfftn`` grid of ``spatial_shape``.

    Per axis the frequency ``f_d`` (cycles per sample, in [-1/2, 1/2]) is scaled to ``2 f_d`` in [-1, 1]; then
    ``rho = sqrt(mean_d (2 f_d)^2)``: 0 at the mean, 1 at the Nyquist corner, the same for every image size.

    Returns:
        float32 tensor of shape ``(*spatial_shape[:-1], spatial_shape[-1] // 2 + 1)``.
    """
    axes = [torch.fft.fftfreq(n, device=device) * 2.0 for n in spatial_shape[:-1]]
    axes.append(torch.fft.rfftfreq(spatial_shape[-1], device=device) * 2.0)
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g.square() for g in grids) / len(grids)).to(torch.float32)


def low_pass_gain(
    rho: torch.Tensor, cutoff: torch.Tensor, floor: torch.Tensor, min_cutoff: float = 1e-3
) -> torch.Tensor:
    """TLP gain ``H(rho) = g + (1 - g) * exp(-rho^2 / (2 r^2))`` for per-sample ``cutoff`` r and ``floor`` g.

    Args:
        rho: radial frequency grid (see :func:`normalised_radial_frequency`), shape ``S``.
        cutoff: (B,) values in [0, 1]; clamped below at ``min_cutoff``.
        floor: (B,) values in [0, 1], the gain kept at high frequencies.

    Returns:
        (B, 1, *S) gains.
    """
    view = (-1,) + (1,) * (rho.dim() + 1)
    r = cutoff.clamp_min(min_cutoff).reshape(view)
    g = floor.reshape(view)
    return g + (1.0 - g) * torch.exp(-rho.square() / (2.0 * r.square()))


class TimestepLowPass(nn.Module):
    """Timestep-controlled low-pass filter (TLP) with two parameters in [0, 1] predicted from the timestep.

    Args:
        spatial_dims: 2 or 3.
        embedding_dim: width of the sinusoidal timestep embedding and of the MLP's hidden layer. Default 32.
        init_cutoff: cutoff ``r`` at initialisation, in (0, 1). Default 0.25.
        init_floor: high-frequency floor ``g`` at initialisation, in (0, 1). Default 0.05.

    ``forward(x, timesteps)`` filters (B, C, *spatial) ``x`` with per-sample parameters from ``timesteps`` (B,).
    ``parameters_at(timesteps)`` returns ``(cutoff, floor)``, each (B,).
    """

    def __init__(
        self, spatial_dims: int, embedding_dim: int = 32, init_cutoff: float = 0.25, init_floor: float = 0.05
    ) -> None:
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        for name, value in (("init_cutoff", init_cutoff), ("init_floor", init_floor)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        self.embedding_dim = int(embedding_dim)
        self.mlp = nn.Sequential(
            nn.Linear(self.embedding_dim, self.embedding_dim), nn.SiLU(), nn.Linear(self.embedding_dim, 2)
        )
        # start as the same strong low-pass at every timestep: the last layer outputs its bias only
        nn.init.zeros_(self.mlp[-1].weight)
        with torch.no_grad():
            self.mlp[-1].bias.copy_(torch.tensor([_logit(init_cutoff), _logit(init_floor)]))

    def parameters_at(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cutoff, floor)`` in [0, 1] for each timestep, each of shape (B,)."""
        embedding = get_timestep_embedding(timesteps.reshape(-1), self.embedding_dim)
        cutoff, floor = torch.sigmoid(self.mlp(embedding)).unbind(dim=1)
        return cutoff, floor

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"TimestepLowPass({self.spatial_dims}D) expects (B, C, *{self.spatial_dims} spatial dims), "
                f"got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        dims = tuple(range(2, x.dim()))
        cutoff, floor = self.parameters_at(timesteps)
        gain = low_pass_gain(normalised_radial_frequency(spatial, x.device), cutoff, floor)
        spectrum = torch.fft.rfftn(x.float(), dim=dims)
        return torch.fft.irfftn(spectrum * gain, s=spatial, dim=dims).to(x.dtype)


class TimestepCBAM(nn.Module):
    """CBAM whose channel and spatial gates are modulated by a timestep embedding (FiLM on the gate logits).

    Args:
        spatial_dims: 2 or 3.
        channels: feature channels.
        temb_channels: width of the timestep embedding passed to ``forward``.
        reduction: channel reduction of the channel gate's MLP. Default 8.
        spatial_kernel: kernel size of the spatial gate's convolution (odd). Default 7.

    ``forward(x, temb)`` with x (B, channels, *spatial) and temb (B, temb_channels) returns x gated, same shape.
    The FiLM layers start at zero, so at initialisation the block is plain CBAM for every timestep.
    """

    def __init__(
        self, spatial_dims: int, channels: int, temb_channels: int, reduction: int = 8, spatial_kernel: int = 7
    ) -> None:
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        if spatial_kernel % 2 != 1:
            raise ValueError(f"spatial_kernel must be odd, got {spatial_kernel}")
        hidden = max(1, channels // reduction)
        self.channel_mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.spatial_conv = conv(2, 1, spatial_kernel, padding=spatial_kernel // 2)
        self.channel_film = nn.Linear(temb_channels, 2 * channels)
        self.spatial_film = nn.Linear(temb_channels, 2)
        for film in (self.channel_film, self.spatial_film):
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)

    def gates(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(channel_gate (B, C, 1, ...), spatial_gate (B, 1, *spatial))``, values in (0, 1)."""
        dims = tuple(range(2, x.dim()))
        ones = (1,) * self.spatial_dims
        logits = self.channel_mlp(x.mean(dim=dims)) + self.channel_mlp(x.amax(dim=dims))
        scale, shift = self.channel_film(temb).chunk(2, dim=1)
        channel_gate = torch.sigmoid(logits * (1.0 + scale) + shift).reshape(*logits.shape, *ones)
        gated = x * channel_gate
        pooled = torch.cat([gated.amax(dim=1, keepdim=True), gated.mean(dim=1, keepdim=True)], dim=1)
        scale, shift = self.spatial_film(temb).reshape(-1, 2, *ones).unbind(dim=1)
        spatial_gate = torch.sigmoid(self.spatial_conv(pooled) * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1))
        return channel_gate, spatial_gate

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        channel_gate, spatial_gate = self.gates(x, temb)
        return x * channel_gate * spatial_gate
