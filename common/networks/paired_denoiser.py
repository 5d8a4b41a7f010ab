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

from collections.abc import Mapping, Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_down_block, get_timestep_embedding, zero_module
from torch import nn

from common.networks.timestep_blocks import TimestepCBAM, TimestepLowPass, _check_spatial_dims

__all__ = [
    "CrossEncoderAttention",
    "ConditionEncoder",
    "PairedDenoiser",
    "paired_networks",
    "stack_conditions",
    "check_paired_networks",
]


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
            through the bottleneck (MedSegDiff-style anchoring). Not in the paper (a project addition, the
            paired_petct bundle's ``feedback.yaml`` overlay). Default False.
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
        feedback: bool = False,
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


def stack_conditions(images: Mapping[str, torch.Tensor], modalities: Sequence[str], target: str) -> torch.Tensor:
    """The conditions of ``target``'s network: every other modality's image, in ``modalities`` order, along channels."""
    return torch.cat([images[m] for m in modalities if m != target], dim=1)


def check_paired_networks(network: nn.Module, modalities: Sequence[str]) -> None:
    if not isinstance(network, nn.ModuleDict):
        raise TypeError(f"network must be a torch.nn.ModuleDict keyed by modality, got {type(network).__name__}")
    missing = [m for m in modalities if m not in network]
    if missing or len(modalities) < 2:
        raise ValueError(
            f"network must hold one network per modality {list(modalities)} (at least two), has {list(network.keys())}"
        )
