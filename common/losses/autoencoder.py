"""Autoencoder losses of latent diffusion's first stage: the KL term and the combined reconstruction loss."""

from __future__ import annotations

import torch
from torch import nn

from common.inferers.autoencoder import KLAutoencoderInferer

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
    """The autoencoder's reconstruction term for ``AdversarialTrainer``: ``L1 + w_kl KL + w_p perceptual``.

    Args:
        inferer: the :class:`KLAutoencoderInferer` the trainer uses (its last posterior gives the KL term).
        kl_weight: paper 1e-6.
        perceptual_loss: a loss on (reconstruction, target), e.g. :class:`FakeVolumePerceptualLoss`; None: no term.
        perceptual_weight: paper 1e-3.

    Raises:
        ValueError: a negative weight; RuntimeError at call time when the inferer has no posterior yet.
    """

    def __init__(
        self,
        inferer: KLAutoencoderInferer,
        kl_weight: float = 1e-6,
        perceptual_loss: nn.Module | None = None,
        perceptual_weight: float = 1e-3,
    ) -> None:
        super().__init__()
        if kl_weight < 0 or perceptual_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got kl {kl_weight} and perceptual {perceptual_weight}")
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
            perceptual = self.perceptual_loss(reconstruction.float(), target.float())
            loss = loss + self.perceptual_weight * perceptual
            terms["perceptual"] = float(perceptual.detach())
        self.last_terms = terms
        return loss
