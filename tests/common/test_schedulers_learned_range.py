"""Tests of the learned-variance pieces of ``common.schedulers``: the T-scaled linear betas, the respaced posterior
tables against hand-computed values, the learned-range variance (ends and middle, against MONAI's linear
interpolation), the learned-range step, and the samplers' 2C-channel outputs."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from common.schedulers import (
    DDIMClippedScheduler,
    DPMSolverMultistepScheduler,
    LearnedRangeScheduler,
    RespacedDDPMScheduler,
    learned_range_log_variance,
    posterior_tables,
    t_scaled_linear_beta,
)


def test_t_scaled_linear_betas_scale_ddpm_by_1000_over_t():
    betas = t_scaled_linear_beta(4000)
    assert betas.shape == (4000,) and betas.dtype == torch.float32
    assert betas[0].item() == pytest.approx(2.5e-5) and betas[-1].item() == pytest.approx(5e-3)
    torch.testing.assert_close(t_scaled_linear_beta(1000), torch.linspace(1e-4, 2e-2, 1000))
    scheduler = RespacedDDPMScheduler(4000, "t_scaled_linear_beta")  # registered under its name
    torch.testing.assert_close(scheduler.betas, betas)


def test_t_scaled_linear_betas_reject_betas_outside_0_1():
    with pytest.raises(ValueError, match=r"beta_end.*must be in \(0, 1\)"):
        t_scaled_linear_beta(10, beta_end=0.02)  # 0.02 * 100 = 2
    with pytest.raises(ValueError, match="num_train_timesteps"):
        t_scaled_linear_beta(0)


def _hand_tables(num_train_timesteps: int, kept: list[int]) -> dict[str, list[float]]:
    """The respaced tables from the definitions, in plain Python floats (descending kept timesteps)."""
    betas = [1e-4 + (2e-2 - 1e-4) * i / (num_train_timesteps - 1) for i in range(num_train_timesteps)]
    alpha_bar = [math.prod(1.0 - b for b in betas[: t + 1]) for t in range(num_train_timesteps)]
    rows: dict[str, list[float]] = {"beta": [], "beta_tilde": [], "c0": [], "ct": []}
    for i, t in enumerate(kept):
        prev = alpha_bar[kept[i + 1]] if i + 1 < len(kept) else 1.0
        beta = 1.0 - alpha_bar[t] / prev
        rows["beta"].append(beta)
        rows["beta_tilde"].append(beta * (1.0 - prev) / (1.0 - alpha_bar[t]))
        rows["c0"].append(math.sqrt(prev) * beta / (1.0 - alpha_bar[t]))
        rows["ct"].append(math.sqrt(1.0 - beta) * (1.0 - prev) / (1.0 - alpha_bar[t]))
    return rows


def test_respaced_tables_match_hand_computed_values():
    scheduler = LearnedRangeScheduler(10, "linear_beta")
    scheduler.set_timesteps(3)
    assert scheduler.timesteps.tolist() == [9, 5, 0]  # floor(9 * (2 - i) / 2 + 1/2)
    hand = _hand_tables(10, [9, 5, 0])
    tables = scheduler.respaced_tables
    for name, table in (
        ("beta", tables.betas),
        ("beta_tilde", tables.posterior_variance),
        ("c0", tables.mean_coef_original),
        ("ct", tables.mean_coef_sample),
    ):
        assert table.tolist() == pytest.approx(hand[name], rel=1e-6), name
    # the first beta' of a respaced chain spans four training steps: 1 - prod(1 - beta_t, t = 6..9)
    assert hand["beta"][0] == pytest.approx(1.0 - math.prod(1.0 - (1e-4 + 0.0199 * t / 9) for t in range(6, 10)))
    assert hand["beta_tilde"][-1] == 0.0
    clipped = tables.posterior_log_variance_clipped.exp().tolist()
    assert clipped == pytest.approx([hand["beta_tilde"][0], hand["beta_tilde"][1], hand["beta_tilde"][1]], rel=1e-6)


def test_quadratic_respaced_tables_match_hand_computed_values():
    scheduler = LearnedRangeScheduler(10, "linear_beta", timestep_spacing="quadratic")
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [9, 4, 1, 0]  # round(9 * (k / 3)^2), k = 3, 2, 1, 0
    hand = _hand_tables(10, [9, 4, 1, 0])
    tables = scheduler.respaced_tables
    for name, table in (
        ("beta", tables.betas),
        ("beta_tilde", tables.posterior_variance),
        ("c0", tables.mean_coef_original),
    ):
        assert table.tolist() == pytest.approx(hand[name], rel=1e-6), name


def test_training_tables_are_indexed_by_t():
    scheduler = LearnedRangeScheduler(50, "linear_beta")
    betas = scheduler.betas.double()
    torch.testing.assert_close(scheduler.train_tables.betas, betas, rtol=1e-9, atol=0)
    alpha_bar = torch.cumprod(1 - betas, 0)
    expected = betas[1:] * (1 - alpha_bar[:-1]) / (1 - alpha_bar[1:])
    torch.testing.assert_close(scheduler.train_tables.posterior_variance[1:], expected, rtol=1e-9, atol=0)
    assert scheduler.train_tables.posterior_variance[0].item() == 0.0
    assert scheduler.train_tables.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(expected[0]))


@pytest.mark.parametrize("num_steps", [1000, 50, 7])
def test_learned_range_ends_are_fixed_large_and_fixed_small(num_steps):
    scheduler = LearnedRangeScheduler(1000, "linear_beta")
    scheduler.set_timesteps(num_steps)
    tables = scheduler.respaced_tables
    ones = torch.ones(2, 1, 3, 3, dtype=torch.float64)
    for index in range(num_steps - 1):  # every step but the one into the data (beta_tilde = 0 there, clipped)
        large = scheduler.log_variance(ones, index).exp()
        small = scheduler.log_variance(-ones, index).exp()
        torch.testing.assert_close(large, torch.full_like(large, tables.betas[index].item()), rtol=1e-12, atol=0)
        expected_small = tables.posterior_variance[index].item()
        torch.testing.assert_close(small, torch.full_like(small, expected_small), rtol=1e-12, atol=0)


def test_learned_range_middle_is_the_geometric_mean_not_monai_linear_interpolation():
    log_beta, log_beta_tilde = math.log(0.02), math.log(0.005)
    middle = learned_range_log_variance(torch.zeros(1), log_beta, log_beta_tilde).exp().item()
    assert middle == pytest.approx(math.sqrt(0.02 * 0.005))  # 0.01
    monai = DDPMScheduler(1000, variance_type="learned_range")
    t = 1  # beta_tilde ~ beta / 2 here: the two interpolations differ by ~3 %
    beta, alpha_bar, alpha_bar_prev = (
        monai.betas[t].item(),
        monai.alphas_cumprod[t].item(),
        monai.alphas_cumprod[t - 1].item(),
    )
    beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    # MONAI 1.6 interpolates the variances: (v + 1) / 2 * beta + (1 - v) / 2 * beta_tilde at v = 0 is the mean
    monai_variance = monai._get_variance(t, predicted_variance=torch.zeros(1)).item()
    assert monai_variance == pytest.approx(0.5 * (beta + beta_tilde), rel=1e-4)
    ours = learned_range_log_variance(torch.zeros(1), math.log(beta), math.log(beta_tilde)).exp().item()
    assert ours == pytest.approx(math.sqrt(beta * beta_tilde), rel=1e-5)
    assert ours < 0.99 * monai_variance


def _oracle_output(scheduler, sample, timestep, original, variance_value):
    alpha_bar = scheduler.train_alphas_cumprod[int(timestep)].item()
    noise = (sample - math.sqrt(alpha_bar) * original) / math.sqrt(1 - alpha_bar)
    return torch.cat([noise, torch.full_like(sample, variance_value)], dim=1)


@pytest.mark.parametrize("shape", [(2, 1, 6, 6), (1, 2, 3, 3, 3)])
def test_learned_range_step_draws_from_the_posterior_with_the_learned_variance(shape):
    scheduler = LearnedRangeScheduler(100, "linear_beta")
    scheduler.set_timesteps(10)
    original = 0.5 * torch.ones(shape, dtype=torch.float64)
    sample = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    timestep = scheduler.timesteps[3]
    output = _oracle_output(scheduler, sample, timestep, original, 1.0)
    prev, x0 = scheduler.step(output, timestep, sample, generator=torch.Generator().manual_seed(1))
    tables = scheduler.respaced_tables
    mean = tables.mean_coef_original[3].item() * original + tables.mean_coef_sample[3].item() * sample
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(x0, original)
    torch.testing.assert_close(prev, mean + math.sqrt(tables.betas[3].item()) * noise)
    last = scheduler.timesteps[-1]
    out, x0_last = scheduler.step(_oracle_output(scheduler, sample, last, original, 0.0), last, sample)
    torch.testing.assert_close(out, original) and torch.testing.assert_close(x0_last, original)


def test_learned_range_at_v_minus_one_is_respaced_ddpm_fixed_small():
    learned = LearnedRangeScheduler(200, "linear_beta")
    fixed = RespacedDDPMScheduler(200, "linear_beta", variance_type="fixed_small", learned_variance=True)
    for scheduler in (learned, fixed):
        scheduler.set_timesteps(20)
    sample = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    output = torch.cat([0.3 * sample, -torch.ones_like(sample)], dim=1)
    for t in learned.timesteps[:-1]:
        a = learned.step(output, t, sample, torch.Generator().manual_seed(2)).prev_sample
        b = fixed.step(output, t, sample, torch.Generator().manual_seed(2)).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sampler", [DDIMClippedScheduler, DPMSolverMultistepScheduler, RespacedDDPMScheduler])
def test_fast_samplers_take_the_first_c_channels_of_a_2c_output(sampler):
    split = sampler(100, "linear_beta", learned_variance=True)
    plain = sampler(100, "linear_beta")
    for scheduler in (split, plain):
        scheduler.set_timesteps(5)
    sample = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = 0.5 * sample
    garbage = torch.full_like(sample, 7.0)
    for t in split.timesteps:
        a = split.step(torch.cat([noise, garbage], 1), t, sample, torch.Generator().manual_seed(1)).prev_sample
        b = plain.step(noise, t, sample, torch.Generator().manual_seed(1)).prev_sample
        torch.testing.assert_close(a, b)


def test_missing_variance_channels_are_an_error_naming_the_channels():
    scheduler = LearnedRangeScheduler(100)
    sample = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"2 x 1 channels.*out_channels.*\(1, 1, 4, 4\)"):
        scheduler.step(torch.zeros(1, 1, 4, 4), scheduler.timesteps[0], sample)
    with pytest.raises(ValueError, match=r"2 x 1 channels"):
        DDIMClippedScheduler(100, learned_variance=True).step(torch.zeros(1, 1, 4, 4), 99, sample)


def test_respaced_steps_above_t_are_an_error_naming_both():
    scheduler = LearnedRangeScheduler(100)
    with pytest.raises(ValueError, match=r"num_inference_steps.*num_train_timesteps=100.*got 500"):
        scheduler.set_timesteps(500)


def test_learned_range_scheduler_refuses_fixed_variance_arguments():
    with pytest.raises(ValueError, match="variance_type"):
        LearnedRangeScheduler(100, variance_type="fixed_small")
    with pytest.raises(ValueError, match="learned_variance"):
        LearnedRangeScheduler(100, learned_variance=False)


def test_single_step_tables_are_finite():
    tables = posterior_tables(torch.tensor([0.5], dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    assert torch.isfinite(tables.posterior_log_variance_clipped).all()
    assert tables.posterior_log_variance_clipped.item() == pytest.approx(math.log(0.5))
