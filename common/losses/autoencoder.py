"""Autoencoder losses of latent diffusion's first stage: the KL term and the combined reconstruction loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from common.inferers.autoencoder import KLAutoencoderInferer
from common.transforms.validation import checked_range

__all__ = ["kl_divergence", "AutoencoderLoss"]


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent channels and voxels, averaged over the batch.

    ``0.5 * sum(mu^2 + sigma^2 - log(sigma^2) - 1)`` (Kingma & Welling 2014, appendix B), the term the paper weights
    by 1e-6.

    Raises:
        ValueError: shapes differ, or ``z_sigma`` has a non-positive value.
    """
    if z_mu.shape != z_sigma.shape:
        raise ValueError(
            f"z_mu and z_sigma must have the same shape, got {tuple(z_mu.shape)} and {tuple(z_sigma.shape)}"
        )
    if bool((z_sigma <= 0).any()):
        raise ValueError("z_sigma must be positive everywhere")
    per_element = z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1.0
    return 0.5 * per_element.flatten(1).sum(dim=1).mean()


class AutoencoderLoss(nn.Module):
    """The autoencoder's reconstruction term for ``AdversarialTrainer``: ``L1 + w_kl KL + w_p perceptual`` (+ ``w_m
    mask``, an option for mask channels).

    Args:
        inferer: the :class:`KLAutoencoderInferer` the trainer uses (its last posterior gives the KL term).
        kl_weight: paper 1e-6.
        perceptual_loss: a loss on (reconstruction, target), e.g. :class:`FakeVolumePerceptualLoss`; None: no term.
        perceptual_weight: paper 1e-3.
        perceptual_channels: the image channels the perceptual term reads (None: all). An autoencoder of image +
            mask channels (``tumour_channel.yaml``) keeps the image-feature term on the image: ``[0]``.
        mask_loss: a loss on (probability, target), both in [0, 1], for binary mask channels stored on the image
            scale ``mask_range`` (e.g. MONAI ``DiceLoss(batch=True)``: a small tumour is a tiny share of the L1 term,
            which an autoencoder can leave out at little cost); None: no term.
        mask_weight: its weight (0: no term).
        mask_channels: the channels holding masks (required with a mask term).
        mask_range: the (low, high) values that stand for 0 and 1 in the mask channels.

    Raises:
        ValueError: a negative weight, an empty or negative ``perceptual_channels`` / ``mask_channels``, a mask term
            without ``mask_channels``; at call time a channel the reconstruction lacks; RuntimeError at call time
            when the inferer has no posterior yet.
    """

    def __init__(
        self,
        inferer: KLAutoencoderInferer,
        kl_weight: float = 1e-6,
        perceptual_loss: nn.Module | None = None,
        perceptual_weight: float = 1e-3,
        perceptual_channels: Sequence[int] | None = None,
        mask_loss: nn.Module | None = None,
        mask_weight: float = 0.0,
        mask_channels: Sequence[int] | None = None,
        mask_range: Sequence[float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if kl_weight < 0 or perceptual_weight < 0 or mask_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0, got kl {kl_weight}, perceptual {perceptual_weight} and mask {mask_weight}"
            )
        self.perceptual_channels = _channels(perceptual_channels, "perceptual_channels")
        self.mask_channels = _channels(mask_channels, "mask_channels")
        if mask_loss is not None and mask_weight > 0 and self.mask_channels is None:
            raise ValueError("config key 'mask_channels': a mask loss term needs the channels that hold the masks")
        self.mask_range = checked_range(mask_range, "config key 'mask_range'")
        self.mask_loss = mask_loss
        self.mask_weight = float(mask_weight)
        self.inferer = inferer
        self.kl_weight = float(kl_weight)
        self.perceptual_loss = perceptual_loss
        self.perceptual_weight = float(perceptual_weight)
        self.last_terms: dict[str, float] = {}

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.inferer.z_mu is None or self.inferer.z_sigma is None:
            raise RuntimeError("AutoencoderLoss needs the posterior of the inferer's last call; call the inferer first")
        l1 = torch.nn.functional.l1_loss(reconstruction.float(), target.float())
        kl = kl_divergence(self.inferer.z_mu.float(), self.inferer.z_sigma.float())
        loss = l1 + self.kl_weight * kl
        terms = {"l1": float(l1.detach()), "kl": float(kl.detach())}
        if self.perceptual_loss is not None and self.perceptual_weight > 0:
            image, reference = _select(reconstruction, target, self.perceptual_channels, "perceptual_channels")
            perceptual = self.perceptual_loss(image.float(), reference.float())
            loss = loss + self.perceptual_weight * perceptual
            terms["perceptual"] = float(perceptual.detach())
        if self.mask_loss is not None and self.mask_weight > 0:
            mask, reference = _select(reconstruction, target, self.mask_channels, "mask_channels")
            low, high = self.mask_range
            probability = ((mask.float() - low) / (high - low)).clamp(0.0, 1.0)
            mask_term = self.mask_loss(probability, ((reference.float() - low) / (high - low)).clamp(0.0, 1.0))
            loss = loss + self.mask_weight * mask_term
            terms["mask"] = float(mask_term.detach())
        self.last_terms = terms
        return loss


def _channels(channels: Sequence[int] | None, key: str) -> list[int] | None:
    """Checked channel indices of config key ``key`` (None stays None)."""
    if channels is None:
        return None
    if len(channels) == 0 or any(int(c) < 0 for c in channels):
        raise ValueError(f"config key '{key}': expected null or channel indices >= 0, got {channels}")
    return [int(c) for c in channels]


def _select(
    reconstruction: torch.Tensor, target: torch.Tensor, channels: list[int] | None, key: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``channels`` of both tensors (all with None); a channel the reconstruction lacks names config key ``key``."""
    if channels is None:
        return reconstruction, target
    if max(channels) >= reconstruction.shape[1]:
        raise ValueError(
            f"config key '{key}': channels {channels} asked for, but the reconstruction has "
            f"{reconstruction.shape[1]} channel(s)"
        )
    return reconstruction[:, channels], target[:, channels]
