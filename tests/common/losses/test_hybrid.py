"""Tests of the hybrid loss (MT-DDPM Eq. 17-22): the VLB of a perfect model is the analytic KL, the KL against
torch.distributions, the discretised likelihood against scipy, the stop-gradient mean, and the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from common.engines.prepare_batch import HybridLossPrepareBatch
from common.losses.hybrid import (
    DiffusionTarget,
    HybridDiffusionLoss,
    discretised_gaussian_log_likelihood,
    normal_kl,
)
from common.schedulers import DDIMClippedScheduler, LearnedRangeScheduler

T = 100


def _batch(timesteps: list[int], shape=(1, 6, 6), seed: int = 0) -> DiffusionTarget:
    generator = torch.Generator().manual_seed(seed)
    original = torch.randint(0, 256, (len(timesteps), *shape), generator=generator).double() / 127.5 - 1.0
    noise = torch.randn(original.shape, generator=generator, dtype=torch.float64)
    return DiffusionTarget(noise, original, torch.tensor(timesteps))


def _perfect_output(target: DiffusionTarget, variance_value: float) -> torch.Tensor:
    return torch.cat([target.noise, torch.full_like(target.noise, variance_value)], dim=1)


def test_vlb_of_a_perfect_model_is_the_analytic_kl():
    scheduler = LearnedRangeScheduler(T, "linear_beta")
    loss = HybridDiffusionLoss(scheduler)
    target = _batch([1, 10, 50, 99])
    noisy = scheduler.add_noise(target.original, target.noise, target.timesteps).double()
    output = _perfect_output(target, 1.0)  # exact mean, fixed_large variance beta_t
    terms = loss.vlb_terms(output[:, :1], output[:, 1:], target.original, noisy, target.timesteps)
    tables = scheduler.train_tables
    for row, t in enumerate(target.timesteps.tolist()):
        beta, beta_tilde = tables.betas[t].item(), tables.posterior_variance[t].item()
        analytic = 0.5 * (math.log(beta / beta_tilde) + beta_tilde / beta - 1.0) / math.log(2.0)
        assert terms[row].item() == pytest.approx(analytic, rel=1e-4), t
    exact = loss.vlb_terms(output[:, :1], -torch.ones_like(output[:, 1:]), target.original, noisy, target.timesteps)
    assert exact.abs().max().item() < 1e-6  # mean and variance of the posterior: KL 0


def test_normal_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = torch.randn(4, 50, generator=generator, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)


def test_discretised_likelihood_matches_scipy_and_sums_to_one():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    mean, log_scale = torch.tensor(0.1, dtype=torch.float64), torch.tensor(math.log(0.3), dtype=torch.float64)
    log_p = discretised_gaussian_log_likelihood(levels, mean, log_scale)
    edges = np.concatenate([[-np.inf], (levels[:-1].numpy() + levels[1:].numpy()) / 2, [np.inf]])
    expected = np.log(np.diff(norm.cdf(edges, loc=0.1, scale=0.3)))
    np.testing.assert_allclose(log_p.numpy(), expected, rtol=1e-6)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_t0_term_is_the_discretised_nll_in_bits():
    scheduler = LearnedRangeScheduler(T, "linear_beta")
    loss = HybridDiffusionLoss(scheduler)
    target = _batch([0, 0])
    noisy = scheduler.add_noise(target.original, target.noise, target.timesteps).double()
    variance_values = torch.full_like(target.noise, 0.3)
    terms = loss.vlb_terms(target.noise, variance_values, target.original, noisy, target.timesteps)
    tables = scheduler.train_tables
    log_variance = 0.65 * tables.log_betas[0].item() + 0.35 * tables.posterior_log_variance_clipped[0].item()
    mean = tables.mean_coef_original[0].item() * target.original + tables.mean_coef_sample[0].item() * noisy
    nll = -discretised_gaussian_log_likelihood(target.original, mean, torch.tensor(0.5 * log_variance))
    torch.testing.assert_close(terms, nll.flatten(1).mean(1) / math.log(2.0))


def test_vlb_trains_the_variance_only_and_the_mse_the_noise():
    scheduler = LearnedRangeScheduler(T, "linear_beta")
    target = _batch([0, 5, 60], shape=(1, 4, 4))
    target = DiffusionTarget(*(x.float() if x.is_floating_point() else x for x in target))
    output = torch.cat([0.9 * target.noise, torch.zeros_like(target.noise)], 1).requires_grad_(True)
    HybridDiffusionLoss(scheduler, vlb_weight=0.01)(output, target).backward()
    mse_only = output.detach().clone().requires_grad_(True)
    HybridDiffusionLoss(scheduler, vlb_weight=0.0)(mse_only, target).backward()
    torch.testing.assert_close(output.grad[:, :1], mse_only.grad[:, :1])  # stop-gradient mean
    assert output.grad[:, 1:].abs().sum() > 0 and mse_only.grad[:, 1:].abs().sum() == 0


def test_loss_value_is_mse_plus_weighted_vlb():
    scheduler = LearnedRangeScheduler(T, "linear_beta")
    target = _batch([3, 40], shape=(1, 4, 4))
    output = torch.cat([0.8 * target.noise, 0.2 * torch.ones_like(target.noise)], 1)
    loss = HybridDiffusionLoss(scheduler, vlb_weight=4.0)
    noisy = scheduler.add_noise(target.original, target.noise, target.timesteps)
    vlb = loss.vlb_terms(output[:, :1], output[:, 1:], target.original, noisy, target.timesteps).mean()
    expected = (0.2 * target.noise).pow(2).mean() + 4.0 * vlb
    assert loss(output, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_prepare_batch_gives_the_target_of_the_hybrid_loss():
    images = torch.rand(3, 1, 8, 8)
    inputs, target, args, kwargs = HybridLossPrepareBatch(num_train_timesteps=T)({"image": images}, "cpu")
    assert isinstance(target, DiffusionTarget) and args == ()
    assert target.original is inputs and target.noise is kwargs["noise"] and target.timesteps is kwargs["timesteps"]
    assert target.timesteps.shape == (3,) and int(target.timesteps.max()) < T


def test_bad_inputs_name_the_config_key():
    scheduler = LearnedRangeScheduler(T)
    with pytest.raises(ValueError, match=r"'vlb_weight'.*>= 0, got -1"):
        HybridDiffusionLoss(scheduler, vlb_weight=-1)
    with pytest.raises(ValueError, match=r"'noise_scheduler'.*DDIMClippedScheduler"):
        HybridDiffusionLoss(DDIMClippedScheduler(T))
    with pytest.raises(ValueError, match=r"'epsilon'.*'noise_scheduler'.*'sample'"):
        HybridDiffusionLoss(LearnedRangeScheduler(T, prediction_type="sample"))
    loss = HybridDiffusionLoss(scheduler)
    target = _batch([1])
    with pytest.raises(ValueError, match=r"network_def#out_channels.*2 x 1 channels"):
        loss(target.noise, target)
    with pytest.raises(TypeError, match=r"prepare_batch.*HybridLossPrepareBatch.*Tensor"):
        loss(_perfect_output(target, 0.0), target.noise)
