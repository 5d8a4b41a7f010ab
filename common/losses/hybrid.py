"""The hybrid loss of learned-variance diffusion models (MT-DDPM Eq. 17-22; Nichol & Dhariwal 2021, Sec. 3.1).

``L = L_simple + gamma * L_vlb``: ``L_simple`` is the mean squared error of the noise prediction (MT-DDPM Eq. 14),
``L_vlb`` the variational-bound term of the sampled timestep in bits per dimension, computed on a stop-gradient
mean so that it trains the variance output only:

- t > 0: ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` of two diagonal Gaussians (Eq. 18; the slide drops the
  ``-1`` of the Gaussian KL and writes a ratio of log-variances where the ratio of variances belongs; the correct
  form is ``0.5 * (log s2 - log s1 + s1 / s2 + (m1 - m2)^2 / s2 - 1)``).
- t = 0: the negative log-likelihood of x_0 under the model Gaussian discretised into the 256 intensity bins of
  [-1, 1] (Eq. 19-21, where "GELU" stands for the standard normal CDF; the edge bins extend to +-infinity).

``gamma`` (config key ``vlb_weight``) weights the per-timestep term: the paper gives 0.01. improved-diffusion (and the
MT-DDPM authors' code built on it) writes ``lambda = 0.001`` for the whole-chain bound, which is ``T / 1000`` per
sampled timestep (4.0 at T = 4000); both are values of the same key.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from common.schedulers import LearnedRangeScheduler, learned_range_log_variance

__all__ = [
    "DiffusionTarget",
    "normal_kl",
    "discretised_gaussian_log_likelihood",
    "HybridDiffusionLoss",
]


class DiffusionTarget(NamedTuple):
    """What the hybrid loss needs besides the model output (``HybridLossPrepareBatch`` makes it).

    noise: the noise added, (B, C, *spatial).
    original: the clean images x_0, (B, C, *spatial).
    timesteps: the sampled training timesteps, (B,) long.
    """

    noise: torch.Tensor
    original: torch.Tensor
    timesteps: torch.Tensor


def normal_kl(
    mean_1: torch.Tensor, log_variance_1: torch.Tensor, mean_2: torch.Tensor, log_variance_2: torch.Tensor
) -> torch.Tensor:
    """Element-wise ``KL(N(mean_1, exp(log_variance_1)) || N(mean_2, exp(log_variance_2)))`` in nats."""
    return 0.5 * (
        log_variance_2
        - log_variance_1
        + torch.exp(log_variance_1 - log_variance_2)
        + (mean_1 - mean_2) ** 2 * torch.exp(-log_variance_2)
        - 1.0
    )


def discretised_gaussian_log_likelihood(
    x: torch.Tensor,
    mean: torch.Tensor,
    log_scale: torch.Tensor,
    bin_width: float = 2.0 / 255.0,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """Element-wise log-probability of the bin of ``x`` under ``N(mean, exp(log_scale)^2)`` (MT-DDPM Eq. 19-21).

    Bins are ``bin_width`` wide and centred on the data values; the lowest bin reaches down to -infinity and the
    highest up to +infinity, so the probabilities of all bins sum to 1.

    Args:
        x: data in ``value_range`` on the bin centres, e.g. 256 levels of [-1, 1] (``bin_width`` 2 / 255).
        mean, log_scale: the model Gaussian (log of the standard deviation), broadcasting against ``x``.
        bin_width: width of one intensity bin.
        value_range: (lowest, highest) data value: the centres of the edge bins.

    Returns:
        log-probabilities (nats), shape of ``x``.
    """
    if bin_width <= 0:
        raise ValueError(f"`bin_width` must be > 0, got {bin_width}.")
    half = 0.5 * bin_width
    inverse_std = torch.exp(-log_scale)
    upper = inverse_std * (x - mean + half)
    lower = inverse_std * (x - mean - half)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_survival_lower = torch.special.log_ndtr(-lower)
    bin_mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    low, high = value_range
    return torch.where(
        x < low + half, log_cdf_upper, torch.where(x > high - half, log_survival_lower, torch.log(bin_mass))
    )


def _gather(table: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``table[timesteps]`` shaped (B, 1, ..., 1) in the dtype and on the device of ``like``."""
    values = table.to(like.device)[timesteps.to(like.device)].to(like.dtype)
    return values.reshape(-1, *(1,) * (like.dim() - 1))


class HybridDiffusionLoss(nn.Module):
    """``L_simple + vlb_weight * L_vlb`` for an epsilon-predicting model with a 2C-channel learned-variance output.

    Called by MONAI's ``SupervisedTrainer`` as ``loss(model_output, target)`` with the :class:`DiffusionTarget` of
    :class:`common.engines.HybridLossPrepareBatch`.

    Args:
        scheduler: the :class:`common.schedulers.LearnedRangeScheduler` of training (its ``train_tables``).
        vlb_weight: gamma of MT-DDPM Eq. 22 (config key ``vlb_weight``), >= 0. Default 0.01 (the paper); 0 trains
            the noise only (the variance output then stays untrained).
        bin_width: intensity bin of the t = 0 likelihood (2 / 255: 256 levels of [-1, 1]).
        value_range: the data range (the centres of the edge bins).

    Raises:
        ValueError: ``vlb_weight`` < 0; a scheduler without learned variance or not predicting the noise.
    """

    def __init__(
        self,
        scheduler: LearnedRangeScheduler,
        vlb_weight: float = 0.01,
        bin_width: float = 2.0 / 255.0,
        value_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if not isinstance(scheduler, LearnedRangeScheduler):
            raise ValueError(
                f"the hybrid loss needs a LearnedRangeScheduler (config key 'noise_scheduler'), got "
                f"{type(scheduler).__name__}; a fixed-variance model trains with an MSE loss."
            )
        if scheduler.prediction_type != "epsilon":
            raise ValueError(
                f"the hybrid loss needs prediction_type 'epsilon' (config key 'noise_scheduler'), got "
                f"{scheduler.prediction_type!r}."
            )
        if not vlb_weight >= 0:
            raise ValueError(f"config key 'vlb_weight': expected a weight >= 0, got {vlb_weight}.")
        self.scheduler = scheduler
        self.vlb_weight = float(vlb_weight)
        self.bin_width = float(bin_width)
        self.value_range = (float(value_range[0]), float(value_range[1]))

    def split(self, model_output: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise prediction, variance values) of a (B, 2C, *spatial) output for (B, C, *spatial) images."""
        return self.scheduler.prediction_channels(model_output, like), model_output[:, like.shape[1] :]

    def model_log_variance(self, variance_values: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The learned log-variance at training ``timesteps`` (B,) (:func:`learned_range_log_variance`)."""
        tables = self.scheduler.train_tables
        return learned_range_log_variance(
            variance_values,
            _gather(tables.log_betas, timesteps, variance_values),
            _gather(tables.posterior_log_variance_clipped, timesteps, variance_values),
        )

    def vlb_terms(
        self,
        noise_prediction: torch.Tensor,
        variance_values: torch.Tensor,
        original: torch.Tensor,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """``L_t`` per sample in bits per dimension, (B,): the KL for t > 0, the discretised NLL at t = 0.

        Gradients flow into ``noise_prediction`` and ``variance_values`` as given (detach the first for the hybrid
        loss's stop-gradient mean).
        """
        tables = self.scheduler.train_tables
        alpha_bar = _gather(self.scheduler.train_alphas_cumprod, timesteps, noisy)
        predicted_original = (noisy - (1.0 - alpha_bar).sqrt() * noise_prediction) / alpha_bar.sqrt()
        coef_original = _gather(tables.mean_coef_original, timesteps, noisy)
        coef_sample = _gather(tables.mean_coef_sample, timesteps, noisy)
        true_mean = coef_original * original + coef_sample * noisy
        model_mean = coef_original * predicted_original + coef_sample * noisy
        true_log_variance = _gather(tables.posterior_log_variance_clipped, timesteps, noisy)
        model_log_variance = self.model_log_variance(variance_values, timesteps)
        kl = normal_kl(true_mean, true_log_variance, model_mean, model_log_variance).flatten(1).mean(1)
        nll = -discretised_gaussian_log_likelihood(
            original, model_mean, 0.5 * model_log_variance, self.bin_width, self.value_range
        )
        nll = nll.flatten(1).mean(1)
        return torch.where(timesteps.to(kl.device) == 0, nll, kl) / math.log(2.0)

    def forward(self, model_output: torch.Tensor, target: DiffusionTarget) -> torch.Tensor:
        """The scalar hybrid loss of a batch.

        Raises:
            TypeError: ``target`` is not a :class:`DiffusionTarget` (use ``HybridLossPrepareBatch``).
            ValueError: the output does not have 2C channels (names ``network_def#out_channels``).
        """
        if not isinstance(target, DiffusionTarget):
            raise TypeError(
                f"the hybrid loss needs a DiffusionTarget (config key 'prepare_batch': "
                f"common.engines.HybridLossPrepareBatch), got {type(target).__name__}."
            )
        try:
            noise_prediction, variance_values = self.split(model_output, target.noise)
        except ValueError as error:
            raise ValueError(f"config key 'network_def#out_channels': {error}") from error
        simple = (noise_prediction - target.noise).pow(2).mean()
        if self.vlb_weight == 0:
            return simple
        noisy = self.scheduler.add_noise(target.original, target.noise, target.timesteps)
        vlb = self.vlb_terms(noise_prediction.detach(), variance_values, target.original, noisy, target.timesteps)
        return simple + self.vlb_weight * vlb.mean()
