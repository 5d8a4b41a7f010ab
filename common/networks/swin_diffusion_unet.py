"""MT-DDPM's denoiser (paper 002, Fig. 1(b)-(d)): a U-Net of convolutional and Swin-transformer blocks, 2D or 3D.

Every block is a sequence of timestep-aware sections sharing one interface, ``forward(x, emb)``:

- convolutional section (Fig. 1(d)): a timestep expanding layer (SiLU + linear map of the time embedding, added per
  channel), an early 3x3 convolution, then two residual layers (GroupNorm, SiLU, 3x3 convolution, added back);
- Swin section (Fig. 1(c)): the same timestep re-embedding and early 3x3 convolution, then MONAI's Swin-transformer
  ``BasicLayer`` of depth 2: window attention (WA) and shifted-window attention (S-WA, shift ``[l/2, l/2]``), each
  with its MLP and residual connections (Eq. 1-4), ``qkv_bias=True``.

A convolutional block has three sections and a Swin block two (the paper). Resolution changes by bilinear /
trilinear interpolation (factor 2) between levels, as the paper interpolates before its early convolution. The
decoder concatenates the encoder features of its level (U-Net skip). The output layer is zero-initialised, so the
untrained model predicts zero noise and a zero variance value (the geometric middle of the learned range).

The paper's slides give neither the widths nor the levels that carry Swin blocks: ``channels`` and ``swin_levels``
are the bundle's choices (its README lists them). With every ``swin_levels`` entry False this is the plain
convolutional U-Net of the paper's DDPM baseline, same sections, same resampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from monai.networks.nets.swin_unetr import BasicLayer
from torch import nn

__all__ = ["ConvSection", "SwinSection", "TimestepSequential", "SwinDiffusionUNet"]


def _conv3(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    return Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=3, padding=1)


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C, 1, ..., 1) to broadcast over the spatial axes of ``like``."""
    return values.reshape(*values.shape, *(1,) * (like.dim() - 2))


class _TimestepEntry(nn.Module):
    """The start of every section: ``early_conv(x) + linear(silu(emb))`` per channel."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.early_conv = _conv3(spatial_dims, in_channels, out_channels)
        self.time_embedding = nn.Sequential(nn.SiLU(), nn.Linear(embedding_dim, out_channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.early_conv(x)
        return h + _per_channel(self.time_embedding(emb).to(h.dtype), h)


class ConvSection(nn.Module):
    """Convolutional section (Fig. 1(d)): timestep expanding layer, early 3x3 conv, two residual 3x3 layers.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channels in and out.
        embedding_dim: width of the time embedding.
        norm_num_groups: GroupNorm groups of the residual layers (divides ``out_channels``).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, embedding_dim: int, norm_num_groups: int
    ) -> None:
        super().__init__()
        self.entry = _TimestepEntry(spatial_dims, in_channels, out_channels, embedding_dim)
        self.residual = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(norm_num_groups, out_channels),
                nn.SiLU(),
                _conv3(spatial_dims, out_channels, out_channels),
            )
            for _ in range(2)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.entry(x, emb)
        for layer in self.residual:
            h = h + layer(h)
        return h


class SwinSection(nn.Module):
    """Swin section (Fig. 1(c)): timestep re-embedding, early 3x3 conv, then WA and S-WA (MONAI ``BasicLayer``).

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channels in and out (``out_channels`` divisible by ``num_heads``).
        embedding_dim: width of the time embedding.
        num_heads: attention heads.
        window_size: window edge l (the shift of S-WA is l // 2), one value per spatial axis.
        mlp_ratio: hidden width of the transformer MLP relative to ``out_channels``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        embedding_dim: int,
        num_heads: int,
        window_size: Sequence[int],
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.entry = _TimestepEntry(spatial_dims, in_channels, out_channels, embedding_dim)
        self.attention = BasicLayer(
            dim=out_channels,
            depth=2,
            num_heads=num_heads,
            window_size=tuple(window_size),
            drop_path=[0.0, 0.0],
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attention(self.entry(x, emb))


class TimestepSequential(nn.ModuleList):
    """Sections applied in order, each as ``section(x, emb)``."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for section in self:
            x = section(x, emb)
        return x


def _per_level(value: int | Sequence[int], levels: int, name: str) -> list[int]:
    values = [int(value)] * levels if isinstance(value, int) else [int(v) for v in value]
    if len(values) != levels:
        raise ValueError(f"config key 'network_def#{name}': expected one value per level ({levels}), got {value}.")
    return values


class SwinDiffusionUNet(nn.Module):
    """MT-DDPM's Swin-transformer diffusion U-Net, ``forward(x, timesteps) -> output`` like ``DiffusionModelUNet``.

    Args:
        spatial_dims: 2 (the paper) or 3.
        in_channels: image channels.
        out_channels: output channels: 2 * image channels for a learned variance (noise, then variance values).
        image_size: spatial size of the images, each divisible by ``2 ** (len(channels) - 1)``; sets the feature
            sizes the window sizes are checked against.
        channels: feature channels per level (the first is also the time-embedding base width).
        swin_levels: per level, True for a Swin block (2 sections), False for a convolutional block (3 sections).
        num_heads: attention heads of the Swin sections, an int or one per level.
        window_size: Swin window edge l, an int or one per level; not larger than the level's feature map.
        conv_sections, swin_sections: sections per convolutional / Swin block (the paper: 3 and 2).
        norm_num_groups: GroupNorm groups (divides every entry of ``channels``).
        mlp_ratio: transformer MLP width relative to the level's channels.

    Raises:
        ValueError: a bad argument, the message naming its ``network_def#<argument>`` config key and the values.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        image_size: Sequence[int],
        channels: Sequence[int] = (64, 128, 256, 256),
        swin_levels: Sequence[bool] = (False, True, True, True),
        num_heads: int | Sequence[int] = 4,
        window_size: int | Sequence[int] = 8,
        conv_sections: int = 3,
        swin_sections: int = 2,
        norm_num_groups: int = 32,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"config key 'network_def#spatial_dims': expected 2 or 3, got {spatial_dims}.")
        levels = len(channels)
        if levels < 1 or len(swin_levels) != levels:
            raise ValueError(
                f"config key 'network_def#swin_levels': expected one entry per level of channels {list(channels)}, "
                f"got {list(swin_levels)}."
            )
        if len(image_size) != spatial_dims:
            raise ValueError(
                f"config key 'network_def#image_size': expected {spatial_dims} sizes, got {list(image_size)}."
            )
        factor = 2 ** (levels - 1)
        if any(int(s) % factor for s in image_size):
            raise ValueError(
                f"config key 'network_def#image_size': {list(image_size)} is not divisible by {factor}, the U-Net's "
                f"total downsampling (2 ** {levels - 1} for the {levels} levels of channels {list(channels)})."
            )
        bad_groups = [c for c in channels if c % norm_num_groups]
        if bad_groups:
            raise ValueError(
                f"config key 'network_def#channels': every entry must be a multiple of norm_num_groups="
                f"{norm_num_groups}, got {list(channels)}."
            )
        if min(conv_sections, swin_sections) < 1:
            raise ValueError(
                f"config keys 'network_def#conv_sections' / 'network_def#swin_sections': expected >= 1, got "
                f"{conv_sections} and {swin_sections}."
            )
        heads = _per_level(num_heads, levels, "num_heads")
        windows = _per_level(window_size, levels, "window_size")
        for level, (swin, width, head, window) in enumerate(zip(swin_levels, channels, heads, windows)):
            if not swin:
                continue
            feature = [int(s) // 2**level for s in image_size]
            if window > min(feature):
                raise ValueError(
                    f"config key 'network_def#window_size': window {window} at level {level} is larger than its "
                    f"feature map {feature} (image_size {list(image_size)} halved {level} times)."
                )
            if width % head:
                raise ValueError(
                    f"config key 'network_def#num_heads': {head} heads do not divide the {width} channels of "
                    f"level {level}."
                )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.image_size = tuple(int(s) for s in image_size)
        self.channels = tuple(int(c) for c in channels)
        self.downsampling = factor
        embedding_dim = 4 * self.channels[0]
        self.time_embed = nn.Sequential(
            nn.Linear(self.channels[0], embedding_dim), nn.SiLU(), nn.Linear(embedding_dim, embedding_dim)
        )

        def block(level: int, in_width: int) -> TimestepSequential:
            width = self.channels[level]
            if swin_levels[level]:
                window = (windows[level],) * spatial_dims
                sections = [
                    SwinSection(spatial_dims, w, width, embedding_dim, heads[level], window, mlp_ratio)
                    for w in [in_width] + [width] * (swin_sections - 1)
                ]
            else:
                sections = [
                    ConvSection(spatial_dims, w, width, embedding_dim, norm_num_groups)
                    for w in [in_width] + [width] * (conv_sections - 1)
                ]
            return TimestepSequential(sections)

        self.stem = _conv3(spatial_dims, in_channels, self.channels[0])
        self.down = nn.ModuleList(block(i, self.channels[max(i - 1, 0)]) for i in range(levels))
        self.middle = block(levels - 1, self.channels[-1])
        self.up = nn.ModuleList(
            block(i, self.channels[min(i + 1, levels - 1)] + self.channels[i]) for i in range(levels)
        )
        self.out = nn.Sequential(
            nn.GroupNorm(norm_num_groups, self.channels[0]),
            nn.SiLU(),
            _conv3(spatial_dims, self.channels[0], out_channels),
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def _resample(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        return nn.functional.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        """Predict from ``x`` (B, in_channels, *spatial) at ``timesteps`` (B,) -> (B, out_channels, *spatial).

        ``context`` is accepted for the inferers' calling convention and must be None (unconditional model).

        Raises:
            ValueError: a context or extra conditioning is given; ``x`` has the wrong channel count or a spatial
                size not divisible by the total downsampling.
        """
        if context is not None or any(v is not None for v in kwargs.values()):
            raise ValueError("SwinDiffusionUNet is unconditional: context and other conditioning must be None.")
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, {self.spatial_dims} spatial axes), got {tuple(x.shape)}."
            )
        if any(s % self.downsampling for s in x.shape[2:]):
            raise ValueError(
                f"input spatial size {tuple(x.shape[2:])} is not divisible by {self.downsampling}, the U-Net's "
                "total downsampling."
            )
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(get_timestep_embedding(timesteps, self.channels[0]).to(x.dtype))
        h = self.stem(x)
        skips = []
        for level, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if level < len(self.down) - 1:
                h = self._resample(h, 0.5)
        h = self.middle(h, emb)
        for level in reversed(range(len(self.up))):
            h = self.up[level](torch.cat([h, skips[level]], dim=1), emb)
            if level > 0:
                h = self._resample(h, 2.0)
        return self.out(h)
