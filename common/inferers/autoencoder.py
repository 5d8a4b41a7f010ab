"""Inferer of a KL autoencoder: reconstruction, posterior mean and log-variance in one call."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

__all__ = ["KLAutoencoderInferer"]


class KLAutoencoderInferer(Inferer):
    """``AutoencoderKL`` forward for ``AdversarialTrainer``: returns the reconstruction, keeps the posterior.

    After each call ``z_mu`` and ``z_sigma`` hold the posterior of that batch (with their graph), for
    :class:`AutoencoderLoss`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.z_mu: torch.Tensor | None = None
        self.z_sigma: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        output = network(inputs, *args, **kwargs)
        if not isinstance(output, (tuple, list)) or len(output) != 3:
            raise TypeError(
                "KLAutoencoderInferer expects a network returning (reconstruction, z_mu, z_sigma) like "
                f"monai.networks.nets.AutoencoderKL, got {type(output).__name__}"
            )
        reconstruction, self.z_mu, self.z_sigma = output
        return reconstruction
