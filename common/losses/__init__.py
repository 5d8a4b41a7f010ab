"""Losses: perceptual (feature distance), patch-adversarial and the KL-autoencoder loss."""

from __future__ import annotations

from common.losses.adversarial import DiscriminatorAdversarialLoss, GeneratorAdversarialLoss, adversarial_losses
from common.losses.autoencoder import AutoencoderLoss, kl_divergence
from common.losses.perceptual import FakeVolumePerceptualLoss, FeaturePerceptualLoss, PerceptualReduction

__all__ = [
    "AutoencoderLoss",
    "DiscriminatorAdversarialLoss",
    "FakeVolumePerceptualLoss",
    "FeaturePerceptualLoss",
    "GeneratorAdversarialLoss",
    "PerceptualReduction",
    "adversarial_losses",
    "kl_divergence",
]
