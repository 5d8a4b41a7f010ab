"""Building blocks of paired multi-modality diffusion (one denoiser per modality, each conditioned on the others).

The paired PET-CT paper trains one denoising network per modality (CT, PET, tumour mask). Each network sees its own
noisy image ``x_t`` and, through ``n`` conditional encoders, the ``n`` other modalities at the same (noisy) timestep.
The pieces, each usable on its own, in 2D and 3D:

``TimestepLowPass`` (TLP)
    A low-pass filter in frequency space with two parameters in [0, 1] -- a cutoff ``r`` and a high-frequency floor
    ``g`` -- predicted from the timestep by a small MLP. The gain at normalised radial frequency ``rho`` is
    ``H(rho) = g + (1 - g) * exp(-rho^2 / (2 r^2))`` (``H(0) = 1``: the mean is kept). It removes the noise of the
    noisy conditional inputs before their encoders, more at noisy timesteps if it learns to. It is initialised as a
    real low-pass (``r = 0.25``, ``g = 0.05`` at every timestep), not as the identity, and does not depend on the
    input size.
``TimestepCBAM``
    CBAM (a channel gate ``sigmoid(MLP(avgpool) + MLP(maxpool))``, then a spatial gate
    ``sigmoid(conv([max_c; mean_c]))``) whose gate logits are modulated by the timestep embedding (FiLM,
    ``logit * (1 + s(t)) + b(t)``, zero-initialised so it starts as plain CBAM). It weighs the concatenated
    conditional features against the denoiser's own at each timestep. No BatchNorm, so batch 1 works.
``CrossEncoderAttention``
    The simple attention between a conditional encoder and the denoiser's encoder at one resolution:
    ``c <- c * (1 + sigmoid(conv1x1(GN(c) * GN(h))))``, so conditional features are emphasised where they align with
    the denoiser's features.
``ConditionEncoder``
    TLP, then MONAI's diffusion-UNet down blocks (time-embedded residual blocks), one level per denoiser level,
    each followed by a ``CrossEncoderAttention`` with the denoiser's features of that level.
``PairedDenoiser``
    A MONAI ``DiffusionModelUNet`` whose bottleneck concatenates its latent features with the last features of each
    conditional encoder, applies ``TimestepCBAM`` and a 1x1 convolution back to the bottleneck width.
    ``severed=True`` (the paper's ablation) builds no conditional pathway: the network ignores the conditions.

Reference: the paired PET-CT-mask generation paper (paired networks, conditional encoders after MedSegDiff, TLP,
timestep-aware CBAM); Woo et al. 2018, "CBAM: Convolutional Block Attention Module".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_down_block, get_timestep_embedding, zero_module
from torch import nn

__all__ = [
    "ConditionEncoder",
    "CrossEncoderAttention",
    "PairedDenoiser",
    "TimestepCBAM",
    "TimestepLowPass",
    "low_pass_gain",
    "normalised_radial_frequency",
    "paired_networks",
]


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


class CrossEncoderAttention(nn.Module):
    """Attention from the denoiser's features onto a conditional encoder's features at one resolution.

    ``forward(c, h) = c * (1 + sigmoid(conv1x1(GN(c) * GN(h))))`` for conditional features ``c`` and denoiser
    features ``h`` of the same shape (B, channels, *spatial).
    """

    def __init__(self, spatial_dims: int, channels: int, norm_num_groups: int = 32, norm_eps: float = 1e-6) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        self.norm_condition = nn.GroupNorm(norm_num_groups, channels, eps=norm_eps)
        self.norm_denoiser = nn.GroupNorm(norm_num_groups, channels, eps=norm_eps)
        self.project = Convolution(spatial_dims, channels, channels, kernel_size=1, conv_only=True)

    def forward(self, condition: torch.Tensor, denoiser: torch.Tensor) -> torch.Tensor:
        if condition.shape != denoiser.shape:
            raise ValueError(
                f"conditional and denoiser features must have the same shape, got {tuple(condition.shape)} and "
                f"{tuple(denoiser.shape)}"
            )
        gate = torch.sigmoid(self.project(self.norm_condition(condition) * self.norm_denoiser(denoiser)))
        return condition * (1.0 + gate)


class ConditionEncoder(nn.Module):
    """Encoder of one conditional (noisy) modality: TLP, then one MONAI down block per denoiser level.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the conditional image.
        channels: output channels per level (the denoiser's ``channels``).
        temb_channels: width of the denoiser's time embedding (shared).
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups (channels must be multiples of it).
        low_pass: put a ``TimestepLowPass`` in front (the paper's TLP). Default True.

    ``forward(c, timesteps, temb, denoiser_features)`` runs level by level; after level ``l`` the features pass through
    ``CrossEncoderAttention`` with ``denoiser_features[l]`` (the denoiser's output of its down block ``l``). Returns
    the last level's features.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        temb_channels: int,
        num_res_blocks: Sequence[int],
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        low_pass: bool = True,
    ) -> None:
        super().__init__()
        self.low_pass = TimestepLowPass(spatial_dims) if low_pass else None
        self.conv_in = Convolution(spatial_dims, in_channels, channels[0], kernel_size=3, padding=1, conv_only=True)
        self.down_blocks = nn.ModuleList()
        self.attentions = nn.ModuleList()
        previous = channels[0]
        for level, width in enumerate(channels):
            self.down_blocks.append(
                get_down_block(
                    spatial_dims=spatial_dims,
                    in_channels=previous,
                    out_channels=width,
                    temb_channels=temb_channels,
                    num_res_blocks=num_res_blocks[level],
                    norm_num_groups=norm_num_groups,
                    norm_eps=norm_eps,
                    add_downsample=level < len(channels) - 1,
                    resblock_updown=False,
                    with_attn=False,
                    with_cross_attn=False,
                    num_head_channels=width,
                    transformer_num_layers=1,
                    cross_attention_dim=None,
                )
            )
            self.attentions.append(CrossEncoderAttention(spatial_dims, width, norm_num_groups, norm_eps))
            previous = width

    def start(self, condition: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """TLP (if any) and the input convolution: the features that enter level 0."""
        if self.low_pass is not None:
            condition = self.low_pass(condition, timesteps)
        return self.conv_in(condition)

    def level(self, index: int, h: torch.Tensor, temb: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """Level ``index``: its down block, then the cross-encoder attention with the denoiser's ``anchor``."""
        h, _ = self.down_blocks[index](hidden_states=h, temb=temb, context=None)
        return self.attentions[index](h, anchor)

    def forward(
        self,
        condition: torch.Tensor,
        timesteps: torch.Tensor,
        temb: torch.Tensor,
        denoiser_features: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        h = self.start(condition, timesteps)
        for index, anchor in enumerate(denoiser_features):
            h = self.level(index, h, temb, anchor)
        return h


class PairedDenoiser(DiffusionModelUNet):
    """Denoiser of one modality conditioned on ``num_conditions`` other (noisy) modalities.

    A MONAI ``DiffusionModelUNet`` (same arguments, no cross-attention conditioning) plus one ``ConditionEncoder``
    per condition, run level by level alongside the denoiser's encoder (cross-encoder attention at every level, and
    with ``feedback`` a zero-initialised projection of the conditional features added back to the denoiser's); at
    the bottleneck ``cat(h, c_1, ..., c_n)`` goes through ``TimestepCBAM`` and a 1x1 convolution back to
    ``channels[-1]`` before MONAI's middle block.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of this modality's image (the network input ``x``).
        out_channels: predicted channels (the noise, ``in_channels``).
        num_conditions: number of conditional modalities n (the paper: 2, the other two modalities).
        condition_channels: channels of each conditional image. Default ``in_channels``.
        severed: build no conditional pathway (the paper's ablation): conditions are accepted and ignored.
        low_pass: use TLP in front of each conditional encoder. Default True.
        timestep_cbam: fuse with ``TimestepCBAM``; False concatenates and projects only. Default True.
        feedback: after each level add the conditional encoders' features (1x1 convolution, zero-initialised) to the
            denoiser's features and skip connection, so conditions reach the decoder at full resolution, not only
            through the bottleneck (MedSegDiff-style anchoring). Default True.
        channels, num_res_blocks, attention_levels, norm_num_groups, norm_eps, num_head_channels,
        resblock_updown: as ``DiffusionModelUNet``.

    ``forward(x, timesteps, conditions)``: x (B, in_channels, *spatial), timesteps (B,), conditions
    (B, num_conditions * condition_channels, *spatial) -- the conditional images stacked along channels, in a
    fixed order -- or None when severed. Returns (B, out_channels, *spatial).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        num_conditions: int,
        condition_channels: int | None = None,
        severed: bool = False,
        low_pass: bool = True,
        timestep_cbam: bool = True,
        feedback: bool = True,
        channels: Sequence[int] = (64, 128, 256),
        num_res_blocks: Sequence[int] | int = 2,
        attention_levels: Sequence[bool] = (False, False, True),
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        num_head_channels: int | Sequence[int] = 32,
        resblock_updown: bool = False,
    ) -> None:
        _check_spatial_dims(spatial_dims)
        if num_conditions < 0:
            raise ValueError(f"num_conditions must be >= 0, got {num_conditions}")
        if isinstance(num_res_blocks, int):
            num_res_blocks = (num_res_blocks,) * len(channels)
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            num_res_blocks=num_res_blocks,
            channels=channels,
            attention_levels=attention_levels,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            resblock_updown=resblock_updown,
            num_head_channels=num_head_channels,
        )
        self.num_conditions = int(num_conditions)
        self.condition_channels = int(condition_channels or in_channels)
        self.severed = bool(severed) or self.num_conditions == 0
        temb_channels = channels[0] * 4
        self.condition_encoders = nn.ModuleList()
        self.fusion_cbam: TimestepCBAM | None = None
        self.fusion_project: nn.Module | None = None
        self.feedback: nn.ModuleList | None = None
        if not self.severed:
            for _ in range(self.num_conditions):
                self.condition_encoders.append(
                    ConditionEncoder(
                        spatial_dims,
                        self.condition_channels,
                        channels,
                        temb_channels,
                        num_res_blocks,
                        norm_num_groups,
                        norm_eps,
                        low_pass,
                    )
                )
            fused = channels[-1] * (self.num_conditions + 1)
            if timestep_cbam:
                self.fusion_cbam = TimestepCBAM(spatial_dims, fused, temb_channels)
            self.fusion_project = Convolution(spatial_dims, fused, channels[-1], kernel_size=1, conv_only=True)
            if feedback:
                self.feedback = nn.ModuleList(
                    zero_module(
                        Convolution(spatial_dims, width * self.num_conditions, width, kernel_size=1, conv_only=True)
                    )
                    for width in channels
                )

    def _check_conditions(self, x: torch.Tensor, conditions: torch.Tensor | None) -> None:
        expected = self.num_conditions * self.condition_channels
        if conditions is None:
            raise ValueError(
                f"PairedDenoiser expects conditions of shape (B, {expected}, *spatial) "
                f"({self.num_conditions} modalities x {self.condition_channels} channels), got None"
            )
        if conditions.shape[0] != x.shape[0] or conditions.shape[1] != expected or conditions.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"PairedDenoiser expects conditions of shape {(x.shape[0], expected, *x.shape[2:])} "
                f"({self.num_conditions} modalities x {self.condition_channels} channels, the spatial size of x), "
                f"got {tuple(conditions.shape)}"
            )

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.time_embed(get_timestep_embedding(timesteps, self.block_out_channels[0]).to(dtype=x.dtype))
        h = self.conv_in(x)
        skips: list[torch.Tensor] = [h]
        encoded: list[torch.Tensor] = []
        if not self.severed:
            self._check_conditions(x, conditions)
            width = self.condition_channels
            encoded = [
                encoder.start(conditions[:, i * width : (i + 1) * width], timesteps)
                for i, encoder in enumerate(self.condition_encoders)
            ]
        for index, block in enumerate(self.down_blocks):
            h, residuals = block(hidden_states=h, temb=emb, context=None)
            skips.extend(residuals)
            if encoded:
                encoded = [encoder.level(index, c, emb, h) for encoder, c in zip(self.condition_encoders, encoded)]
                if self.feedback is not None:
                    # the block's last output is h itself (MONAI down blocks): the skip carries the feedback too
                    h = h + self.feedback[index](torch.cat(encoded, dim=1))
                    skips[-1] = h
        if encoded:
            h = torch.cat([h, *encoded], dim=1)
            if self.fusion_cbam is not None:
                h = self.fusion_cbam(h, emb)
            h = self.fusion_project(h)
        h = self.middle_block(hidden_states=h, temb=emb, context=None)
        for block in self.up_blocks:
            count = len(block.resnets)
            residuals, skips = skips[-count:], skips[:-count]
            h = block(hidden_states=h, res_hidden_states_list=residuals, temb=emb, context=None)
        return self.out(h)


def paired_networks(modalities: Sequence[str], spatial_dims: int = 2, **denoiser_args) -> nn.ModuleDict:
    """One :class:`PairedDenoiser` per modality in an ``nn.ModuleDict`` (what the paired bundle configs build).

    Each network has ``num_conditions = len(modalities) - 1`` (all the other modalities); ``denoiser_args`` go to
    every ``PairedDenoiser`` (``in_channels`` and ``out_channels`` default to 1).
    """
    modalities = list(modalities)
    if len(modalities) < 2 or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be two or more distinct names, got {modalities}")
    denoiser_args = {"in_channels": 1, "out_channels": 1, **denoiser_args}
    return nn.ModuleDict(
        {m: PairedDenoiser(spatial_dims, num_conditions=len(modalities) - 1, **denoiser_args) for m in modalities}
    )
