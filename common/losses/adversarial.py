"""Patch-adversarial losses of the autoencoder stage, weighted, for MONAI's AdversarialTrainer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.losses import PatchAdversarialLoss
from torch import nn

__all__ = ["GeneratorAdversarialLoss", "DiscriminatorAdversarialLoss", "adversarial_losses"]


def _last_output(logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """``PatchDiscriminator`` returns all its intermediate features; the patch logits are the last one."""
    return logits[-1] if isinstance(logits, (list, tuple)) else logits


class _WeightedPatchAdversarialLoss(nn.Module):
    """A weight times MONAI's ``PatchAdversarialLoss`` on the discriminator's last output."""

    def __init__(self, weight: float = 1e-2, criterion: str = "least_squares") -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"adversarial weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.loss = PatchAdversarialLoss(criterion=criterion)

    def term(self, logits: torch.Tensor | Sequence[torch.Tensor], real: bool, for_discriminator: bool) -> torch.Tensor:
        return self.loss(_last_output(logits).float(), target_is_real=real, for_discriminator=for_discriminator)


class GeneratorAdversarialLoss(_WeightedPatchAdversarialLoss):
    """``weight * PatchAdversarialLoss(D(fake), real)``: the generator's adversarial term (paper weight 1e-2)."""

    def forward(self, fake_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        return self.weight * self.term(fake_logits, real=True, for_discriminator=False)


class DiscriminatorAdversarialLoss(_WeightedPatchAdversarialLoss):
    """``weight * (L(D(fake), fake) + L(D(real), real)) / 2``: the discriminator's loss (paper weight 1e-2)."""

    def forward(
        self, real_logits: torch.Tensor | Sequence[torch.Tensor], fake_logits: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        fake = self.term(fake_logits, real=False, for_discriminator=True)
        real = self.term(real_logits, real=True, for_discriminator=True)
        return self.weight * 0.5 * (fake + real)


def adversarial_losses(output: Mapping[str, Any]) -> dict[str, float]:
    """The losses an ``AdversarialTrainer`` iteration produced, as floats, for Stats/TensorBoard handlers."""
    keys = {
        "reconstruction": "reconstruction_loss",
        "generator": "generator_loss",
        "discriminator": "discriminator_loss",
    }
    found = {name: output[key] for name, key in keys.items() if key in output}
    return {name: float(torch.as_tensor(value).detach().float().mean()) for name, value in found.items()}
