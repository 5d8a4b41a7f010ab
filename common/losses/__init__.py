"""Losses: perceptual (feature distance), patch-adversarial, the KL-autoencoder loss and the hybrid diffusion loss."""

from __future__ import annotations

from common.losses.adversarial import DiscriminatorAdversarialLoss, GeneratorAdversarialLoss, adversarial_losses
from common.losses.autoencoder import AutoencoderLoss, kl_divergence
from common.losses.hybrid import (
    DiffusionTarget,
    HybridDiffusionLoss,
    discretised_gaussian_log_likelihood,
    normal_kl,
)
from common.losses.perceptual import FakeVolumePerceptualLoss, FeaturePerceptualLoss, PerceptualReduction

__all__ = [
    "AutoencoderLoss",
    "DiffusionTarget",
    "DiscriminatorAdversarialLoss",
    "FakeVolumePerceptualLoss",
    "FeaturePerceptualLoss",
    "GeneratorAdversarialLoss",
    "HybridDiffusionLoss",
    "PerceptualReduction",
    "adversarial_losses",
    "discretised_gaussian_log_likelihood",
    "kl_divergence",
    "normal_kl",
]
