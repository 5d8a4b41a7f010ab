"""Tests of ``common.schedulers``: exactness with an oracle model, parity with MONAI's DDPM, respaced tables, the
DPM-Solver++ order on Gaussian data, cosine-schedule robustness, timestep spacing, validation and seeding."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import pytest
import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDPMScheduler

from common.schedulers import (
    DDIMClippedScheduler,
    DPMSolverMultistepScheduler,
    RespacedDDPMScheduler,
    RespacedSampler,
    respaced_timesteps,
)

NUM_TRAIN_TIMESTEPS = 1000
SCHEDULES = ("linear_beta", "scaled_linear_beta", "cosine")
SHAPES = {"2d": (2, 1, 8, 8), "3d": (1, 2, 4, 4, 4)}
SAMPLERS: dict[str, Callable[..., RespacedSampler]] = {
    "ddpm_fixed_small": partial(RespacedDDPMScheduler, variance_type="fixed_small"),
    "ddpm_fixed_large": partial(RespacedDDPMScheduler, variance_type="fixed_large"),
    "ddim": DDIMClippedScheduler,
    "ddim_eta_half": partial(DDIMClippedScheduler, eta=0.5),
    "dpm_solver_order1": partial(DPMSolverMultistepScheduler, solver_order=1),
    "dpm_solver_order2": DPMSolverMultistepScheduler,
}
DETERMINISTIC = ("ddim", "dpm_solver_order1", "dpm_solver_order2")
STOCHASTIC = ("ddpm_fixed_small", "ddpm_fixed_large", "ddim_eta_half")


def _alpha_sigma(sampler: RespacedSampler, timestep: int | torch.Tensor) -> tuple[float, float]:
    alpha_bar = sampler.train_alphas_cumprod[int(timestep)].item()
    return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)


def _oracle_noise(
    sampler: RespacedSampler, sample: torch.Tensor, timestep: int | torch.Tensor, original: torch.Tensor
) -> torch.Tensor:
    """The exact noise of ``sample`` when the data is the single point ``original``."""
    alpha, sigma = _alpha_sigma(sampler, timestep)
    return (sample - alpha * original) / sigma


def _random_data_point(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A data point inside the clipping range, so that clipping never changes the exact x0."""
    return 1.8 * torch.rand(shape, generator=torch.Generator().manual_seed(seed)) - 0.9


def _seeded_normal(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# Path tolerance per dtype: in float32 the x0 estimate at the cosine schedule's first step (alpha_bar ~ 2e-9) carries
# float32 rounding amplified by 1 / sqrt(alpha_bar) ~ 2e4, which the next steps only partly undo (measured 3.8e-4).
PATH_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-10}


@pytest.mark.parametrize("dtype", PATH_TOLERANCE, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("num_steps", (10, 25, NUM_TRAIN_TIMESTEPS))
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", SAMPLERS)
def test_oracle_model_lands_on_the_data_point(name, schedule, num_steps, shape, dtype):
    sampler = SAMPLERS[name](NUM_TRAIN_TIMESTEPS, schedule)
    sampler.set_timesteps(num_steps)
    original, noise = _random_data_point(shape).to(dtype), _seeded_normal(shape, seed=1, dtype=dtype)
    alpha, sigma = _alpha_sigma(sampler, sampler.timesteps[0])
    sample = alpha * original + sigma * noise
    generator = torch.Generator().manual_seed(2)
    for index, timestep in enumerate(sampler.timesteps):
        sample, _ = sampler.step(_oracle_noise(sampler, sample, timestep, original), timestep, sample, generator)
        if name in DETERMINISTIC and index + 1 < num_steps:
            # the exact deterministic path keeps the initial noise: x_{t_{i+1}} = alpha * x0 + sigma * eps
            alpha, sigma = _alpha_sigma(sampler, sampler.timesteps[index + 1])
            expected = alpha * original + sigma * noise
            torch.testing.assert_close(sample, expected, atol=PATH_TOLERANCE[dtype], rtol=0)
    assert sample.dtype == dtype
    torch.testing.assert_close(sample, original, atol=1e-6, rtol=0)


def _monai_ddpm(num_train_timesteps: int, schedule: str, float64_tables: bool, **kwargs) -> DDPMScheduler:
    """MONAI's DDPM with all T steps; optionally with its tables recomputed in float64 like ours."""
    scheduler = DDPMScheduler(num_train_timesteps, schedule, **kwargs)
    scheduler.set_timesteps(num_train_timesteps)
    if float64_tables:
        scheduler.betas = scheduler.betas.double()
        scheduler.alphas = 1.0 - scheduler.betas
        scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
        scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


# MONAI's shipped float32 tables hold 1 - alpha_bar(0) = beta_0 ~ 1e-4 to a relative 2e-4, so its posterior-mean
# coefficients near t = 0 are off by that much (measured max difference 1.7e-4); with float64 tables the two steps
# agree to the last bit.
MONAI_TOLERANCE = {"monai_float32_tables": 3e-4, "monai_float64_tables": 1e-6}


@pytest.mark.parametrize("tables", MONAI_TOLERANCE)
@pytest.mark.parametrize("prediction_type", ("epsilon", "sample", "v_prediction"))
@pytest.mark.parametrize("variance_type", ("fixed_small", "fixed_large"))
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_respaced_ddpm_with_all_steps_equals_monai_ddpm(schedule, variance_type, prediction_type, tables):
    num_train_timesteps = 250
    kwargs = {"variance_type": variance_type, "prediction_type": prediction_type}
    ours = RespacedDDPMScheduler(num_train_timesteps, schedule, **kwargs)
    monai = _monai_ddpm(num_train_timesteps, schedule, tables == "monai_float64_tables", **kwargs)
    torch.testing.assert_close(ours.timesteps, monai.timesteps)
    sample = _seeded_normal(SHAPES["2d"], seed=0)
    our_generator, monai_generator = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for timestep in ours.timesteps:
        model_output = _seeded_normal(sample.shape, seed=10_000 + int(timestep))
        ours_step = ours.step(model_output, timestep, sample, our_generator)
        monai_step = monai.step(model_output, timestep, sample, monai_generator)
        torch.testing.assert_close(tuple(ours_step), monai_step, atol=MONAI_TOLERANCE[tables], rtol=0)
        sample = ours_step.prev_sample


@pytest.mark.parametrize("num_steps", (1, 7, 50, NUM_TRAIN_TIMESTEPS))
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_respaced_betas_multiply_to_alpha_bar_at_the_kept_steps(schedule, num_steps):
    sampler = RespacedDDPMScheduler(NUM_TRAIN_TIMESTEPS, schedule)
    sampler.set_timesteps(num_steps)
    ascending = torch.cumprod(1.0 - sampler.respaced_betas.flip(0), dim=0)
    expected = sampler.train_alphas_cumprod[sampler.timesteps.flip(0)]
    torch.testing.assert_close(ascending, expected, atol=1e-15, rtol=1e-10)
    assert sampler.respaced_betas.dtype == torch.float64
    assert ((sampler.respaced_betas > 0) & (sampler.respaced_betas <= 1)).all()


def test_respaced_betas_with_all_steps_are_the_schedule_betas():
    sampler = RespacedDDPMScheduler(NUM_TRAIN_TIMESTEPS, "linear_beta")
    torch.testing.assert_close(sampler.respaced_betas.flip(0), sampler.betas.double(), atol=0, rtol=1e-9)


def _gaussian_sampler_error(
    sampler: RespacedSampler, num_steps: int, mean: float = 0.2, std: float = 0.5
) -> tuple[float, float]:
    """Errors of the sample mean and std when the data is N(mean, std^2) per pixel and the model is Bayes-optimal.

    The optimal noise prediction is ``E[eps | x_t] = sigma * (x_t - alpha * mean) / (alpha^2 std^2 + sigma^2)``. The
    start is the exact marginal at ``t_0`` (standardised normal draws), so an exact ODE solve ends on
    ``N(alpha_0 * mean, alpha_0^2 std^2 + sigma_0^2)`` at t = 0, whose posterior mean (the sampler's last output)
    has mean ``mean`` and std ``alpha_0 * std^2 / sqrt(alpha_0^2 std^2 + sigma_0^2)``. Every step is affine, so the
    errors are the solver's alone (no Monte-Carlo error).
    """
    sampler.set_timesteps(num_steps)
    draws = _seeded_normal((1, 1, 64, 64), seed=0, dtype=torch.float64)
    draws = (draws - draws.mean()) / draws.std(unbiased=False)
    alpha, sigma = _alpha_sigma(sampler, sampler.timesteps[0])
    sample = alpha * mean + math.sqrt(alpha**2 * std**2 + sigma**2) * draws
    for timestep in sampler.timesteps:
        alpha, sigma = _alpha_sigma(sampler, timestep)
        optimal_noise = sigma * (sample - alpha * mean) / (alpha**2 * std**2 + sigma**2)
        sample, _ = sampler.step(optimal_noise, timestep, sample)
    alpha, sigma = _alpha_sigma(sampler, 0)
    target_std = alpha * std**2 / math.sqrt(alpha**2 * std**2 + sigma**2)
    return abs(sample.mean().item() - mean), abs(sample.std(unbiased=False).item() - target_std)


@pytest.mark.parametrize("num_steps", (10, 25))
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_dpm_solver_second_order_beats_first_order_on_gaussian_data(schedule, num_steps):
    first, second = (
        _gaussian_sampler_error(
            DPMSolverMultistepScheduler(NUM_TRAIN_TIMESTEPS, schedule, solver_order=order, clip_sample=False),
            num_steps,
        )
        for order in (1, 2)
    )
    assert first[0] < 1e-9 and second[0] < 1e-9  # the mean is transported exactly by both
    assert second[1] < 0.9 * first[1]


def test_dpm_solver_gaussian_error_golden_values():
    errors = [
        _gaussian_sampler_error(
            DPMSolverMultistepScheduler(NUM_TRAIN_TIMESTEPS, "cosine", solver_order=order, clip_sample=False), 25
        )[1]
        for order in (1, 2)
    ]
    assert errors == pytest.approx([3.10e-2, 3.79e-4], rel=1e-2)


@pytest.mark.parametrize("clip_sample", (True, False))
@pytest.mark.parametrize("num_train_timesteps", (250, 1000))
@pytest.mark.parametrize("name", SAMPLERS)
def test_cosine_schedule_stays_finite(name, num_train_timesteps, clip_sample):
    sampler = SAMPLERS[name](num_train_timesteps, "cosine", clip_sample=clip_sample)
    assert sampler.train_alphas_cumprod[-1] < 1e-7  # the near-zero alpha_bar at the last training step
    for num_steps in (10, num_train_timesteps):
        sampler.set_timesteps(num_steps)
        sample = _seeded_normal(SHAPES["2d"], seed=0)
        for timestep in sampler.timesteps:
            sample, original = sampler.step(_seeded_normal(sample.shape, seed=int(timestep)), timestep, sample)
            assert torch.isfinite(sample).all() and torch.isfinite(original).all()
    if isinstance(sampler, DPMSolverMultistepScheduler):
        assert torch.isfinite(sampler.respaced_log_snr).all()


@pytest.mark.parametrize(
    "num_train_timesteps, num_steps",
    [(1, 1), (10, 1), (10, 2), (10, 4), (10, 10), (250, 25), (1000, 10), (1000, 999), (1000, 1000)],
)
def test_timestep_spacing(num_train_timesteps, num_steps):
    timesteps = respaced_timesteps(num_train_timesteps, num_steps)
    assert timesteps.dtype == torch.long and len(timesteps) == num_steps
    assert timesteps[0] == num_train_timesteps - 1
    assert (timesteps.diff() < 0).all()  # descending and unique
    if num_steps > 1:
        assert timesteps[-1] == 0
        gaps = -timesteps.diff().double()
        assert gaps.max() - gaps.min() <= 1  # evenly spaced up to rounding


@pytest.mark.parametrize(
    "num_train_timesteps, num_steps, expected",
    [(1000, 10, [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]), (1000, 3, [999, 500, 0]), (10, 4, [9, 6, 3, 0])],
)
def test_timestep_spacing_golden_values(num_train_timesteps, num_steps, expected):
    assert respaced_timesteps(num_train_timesteps, num_steps).tolist() == expected


@pytest.mark.parametrize(
    "num_train_timesteps, num_steps",
    [(1, 1), (10, 1), (10, 2), (10, 4), (10, 9), (10, 10), (250, 25), (1000, 999), (1000, 1000), (4000, 50)],
)
def test_quadratic_spacing_keeps_both_ends_and_grows_towards_the_noise(num_train_timesteps, num_steps):
    timesteps = respaced_timesteps(num_train_timesteps, num_steps, "quadratic")
    assert timesteps.dtype == torch.long and len(timesteps) == num_steps
    assert timesteps[0] == num_train_timesteps - 1 and (timesteps.diff() < 0).all()
    if num_steps > 1:
        assert timesteps[-1] == 0
    if num_steps > 2 and num_steps < num_train_timesteps // 4:
        gaps = -timesteps.diff()
        assert gaps[-1] < gaps[0]  # dense near the data, sparse near the noise


@pytest.mark.parametrize(
    "num_train_timesteps, num_steps, expected",
    [(10, 4, [9, 4, 1, 0]), (100, 3, [99, 25, 0]), (10, 10, list(range(9, -1, -1))), (5, 4, [4, 2, 1, 0])],
)
def test_quadratic_spacing_golden_values(num_train_timesteps, num_steps, expected):
    # (T - 1) * (k / (n - 1))^2 rounded: T = 10, n = 4 -> 9, 4, 1, 0; T = 5, n = 4 -> 4, 1.78, 0.44, 0 -> 4, 2, 0, 0,
    # raised to stay above the next kept step -> 4, 2, 1, 0
    assert respaced_timesteps(num_train_timesteps, num_steps, "quadratic").tolist() == expected
    assert respaced_timesteps(4000, 50, "quadratic")[-5:].tolist() == [27, 15, 7, 2, 0]


@pytest.mark.parametrize("name", SAMPLERS)
def test_samplers_take_the_quadratic_spacing(name):
    sampler = SAMPLERS[name](NUM_TRAIN_TIMESTEPS, timestep_spacing="quadratic")
    sampler.set_timesteps(20)
    expected = respaced_timesteps(NUM_TRAIN_TIMESTEPS, 20, "quadratic")
    assert sampler.timesteps.tolist() == expected.tolist()
    torch.testing.assert_close(sampler.respaced_alphas_cumprod, sampler.train_alphas_cumprod[expected])
    sample = _sample_with_random_model(sampler, 20, seed=0)
    assert torch.isfinite(sample).all()


@pytest.mark.parametrize("name", SAMPLERS)
def test_set_timesteps_puts_timesteps_on_the_device(name):
    sampler = SAMPLERS[name](NUM_TRAIN_TIMESTEPS)
    sampler.set_timesteps(20, device="cpu")
    assert sampler.num_inference_steps == 20 and sampler.timesteps.device.type == "cpu"
    assert sampler.timesteps.tolist() == respaced_timesteps(NUM_TRAIN_TIMESTEPS, 20).tolist()


VALIDATION_CASES = [
    ("prediction_type", lambda: DDIMClippedScheduler(prediction_type="x0")),
    ("clip_sample_min", lambda: DPMSolverMultistepScheduler(clip_sample_min=1.0, clip_sample_max=-1.0)),
    ("schedule", lambda: RespacedDDPMScheduler(schedule="linear_beta", beta_start=0.0)),
    ("num_inference_steps", lambda: RespacedDDPMScheduler(100).set_timesteps(0)),
    ("num_inference_steps", lambda: DDIMClippedScheduler(100).set_timesteps(101)),
    ("timestep", lambda: DDIMClippedScheduler(100).step(torch.zeros(1, 1, 4), 100, torch.zeros(1, 1, 4))),
    ("model_output", lambda: RespacedDDPMScheduler(100).step(torch.zeros(1, 2, 4), 99, torch.zeros(1, 1, 4))),
    ("variance_type", lambda: RespacedDDPMScheduler(variance_type="learned_range")),
    ("eta", lambda: DDIMClippedScheduler(eta=1.5)),
    ("eta", lambda: DDIMClippedScheduler(eta=-0.1)),
    ("solver_order", lambda: DPMSolverMultistepScheduler(solver_order=3)),
    ("timestep_spacing", lambda: RespacedDDPMScheduler(timestep_spacing="cubic")),
    ("timestep_spacing", lambda: respaced_timesteps(100, 10, "linear")),
]


@pytest.mark.parametrize("argument, build", VALIDATION_CASES, ids=[case[0] for case in VALIDATION_CASES])
def test_invalid_arguments_raise_naming_the_argument(argument, build):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        build()


def _sample_with_random_model(sampler: RespacedSampler, num_steps: int, seed: int | None) -> torch.Tensor:
    sampler.set_timesteps(num_steps)
    sample = _seeded_normal(SHAPES["3d"], seed=0)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    for timestep in sampler.timesteps:
        sample, _ = sampler.step(_seeded_normal(sample.shape, seed=int(timestep)), timestep, sample, generator)
    return sample


@pytest.mark.parametrize("name", STOCHASTIC)
def test_same_seed_gives_the_same_sample(name):
    sampler = SAMPLERS[name](NUM_TRAIN_TIMESTEPS, "cosine")
    first, again, other = (_sample_with_random_model(sampler, 20, seed) for seed in (7, 7, 8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_ddim_with_eta_one_is_ddpm_with_the_posterior_variance():
    ddim = DDIMClippedScheduler(NUM_TRAIN_TIMESTEPS, "cosine", eta=1.0)
    ddpm = RespacedDDPMScheduler(NUM_TRAIN_TIMESTEPS, "cosine", variance_type="fixed_small")
    torch.testing.assert_close(
        _sample_with_random_model(ddim, 30, seed=5), _sample_with_random_model(ddpm, 30, seed=5), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_first_order_dpm_solver_is_clipped_ddim(schedule):
    dpm = DPMSolverMultistepScheduler(NUM_TRAIN_TIMESTEPS, schedule, solver_order=1)
    ddim = DDIMClippedScheduler(NUM_TRAIN_TIMESTEPS, schedule)
    torch.testing.assert_close(
        _sample_with_random_model(dpm, 15, None), _sample_with_random_model(ddim, 15, None), atol=1e-5, rtol=0
    )


def test_dpm_solver_multistep_state_is_reset_by_set_timesteps():
    sampler = DPMSolverMultistepScheduler(NUM_TRAIN_TIMESTEPS, "cosine")
    reference = _sample_with_random_model(sampler, 12, None)
    sampler.set_timesteps(12)
    sample = _seeded_normal(SHAPES["3d"], seed=1)
    for timestep in sampler.timesteps[:5]:  # an interrupted run leaves a previous data prediction behind
        sample, _ = sampler.step(_seeded_normal(sample.shape, seed=int(timestep)), timestep, sample)
    assert torch.equal(_sample_with_random_model(sampler, 12, None), reference)


class _OracleNetwork(torch.nn.Module):
    """Stands in for a diffusion UNet: returns the exact noise for the single data point ``original``."""

    def __init__(self, sampler: RespacedSampler, original: torch.Tensor) -> None:
        super().__init__()
        self.sampler, self.original = sampler, original

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return _oracle_noise(self.sampler, x, timesteps[0], self.original)


@pytest.mark.parametrize("name", SAMPLERS)
def test_monai_diffusion_inferer_drives_the_samplers(name):
    sampler = SAMPLERS[name](NUM_TRAIN_TIMESTEPS, "cosine")
    sampler.set_timesteps(25)
    original = _random_data_point(SHAPES["2d"])
    inferer = DiffusionInferer(sampler)
    sample = inferer.sample(_seeded_normal(original.shape, seed=4), _OracleNetwork(sampler, original), verbose=False)
    torch.testing.assert_close(sample, original, atol=2e-5, rtol=0)
