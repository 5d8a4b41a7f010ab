"""Multi-condition ILVR guidance (paper 003): the low-pass filter, W, the guidance step and the guided sampler."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from common.inferers.guidance import (
    GuidanceCondition,
    GuidedDiffusionInferer,
    LowPassFilter,
    MultiConditionGuidance,
    gaussian_patch_weight,
)
from common.schedulers import DPMSolverMultistepScheduler, RespacedDDPMScheduler

T = 20


def _ddpm() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=T, schedule="cosine")


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (1, 2, 8, 8, 8)])
def test_area_filter_is_a_linear_projection(shape: tuple[int, ...]) -> None:
    x, y = torch.randn(shape, generator=torch.Generator().manual_seed(0)), torch.randn(shape)
    phi = LowPassFilter(4)
    torch.testing.assert_close(phi(phi(x)), phi(x))
    torch.testing.assert_close(phi(2 * x + y), 2 * phi(x) + phi(y))
    torch.testing.assert_close(phi(x).flatten(2).mean(-1), x.flatten(2).mean(-1))  # block means kept
    assert LowPassFilter(1)(x) is x


def test_bicubic_filter_keeps_low_frequencies_and_is_2d_only() -> None:
    smooth = torch.linspace(-1, 1, 32)[None, None, :, None].expand(1, 1, 32, 32).contiguous()
    phi = LowPassFilter(4, "bicubic")
    assert (phi(smooth) - smooth)[..., 8:-8, :].abs().max() < 0.05  # a ramp passes (up to edge effects)
    with pytest.raises(ValueError, match="bicubic low-pass needs 2D"):
        phi(torch.zeros(1, 1, 8, 8, 8))


def test_projection_property_after_guidance() -> None:
    """Eq. 3 with the area filter: one correction gives phi(x_guided) == phi(y_t) exactly."""
    torch.manual_seed(0)
    reference, sample = torch.rand(2, 1, 16, 16) * 2 - 1, torch.randn(2, 1, 16, 16)
    condition = GuidanceCondition("anatomy", reference, factor=4, stop_timestep=0)
    guidance = MultiConditionGuidance([condition], _ddpm())
    drawn = []

    def noise(shape):
        drawn.append(torch.randn(shape, generator=torch.Generator().manual_seed(7)))
        return drawn[-1]

    guided = guidance(sample, timestep=10, next_timestep=9, noise=noise)
    y_t = guidance.scheduler.add_noise(reference, drawn[0], torch.full((2,), 9))
    phi = LowPassFilter(4)
    torch.testing.assert_close(phi(guided), phi(y_t), atol=1e-5, rtol=0)
    torch.testing.assert_close(guided - phi(guided), sample - phi(sample), atol=1e-5, rtol=0)  # high pass untouched
    last = guidance(sample, timestep=0, next_timestep=None, noise=noise)  # to the clean data: y itself
    torch.testing.assert_close(phi(last), phi(reference), atol=1e-5, rtol=0)


def test_stop_timestep_in_training_units() -> None:
    condition = GuidanceCondition("anatomy", torch.zeros(1, 1, 8, 8), factor=2, stop_timestep=5)
    guidance = MultiConditionGuidance([condition], _ddpm())
    sample = torch.ones(1, 1, 8, 8)
    assert guidance(sample, timestep=4, next_timestep=3, noise=torch.randn) is sample  # t < a_s: unguided
    assert not torch.equal(guidance(sample, timestep=5, next_timestep=4, noise=torch.randn), sample)


def test_literal_sum_corrects_overlaps_twice_and_sequential_once() -> None:
    reference, sample = torch.full((1, 1, 8, 8), 0.5), torch.zeros(1, 1, 8, 8)
    conditions = [
        GuidanceCondition("anatomy", reference, factor=2, stop_timestep=0),
        GuidanceCondition("pathology", reference, factor=2, stop_timestep=0),
    ]

    def run(combine: str) -> torch.Tensor:
        return MultiConditionGuidance(conditions, _ddpm(), combine)(sample, 0, None, torch.randn)

    torch.testing.assert_close(run("sum"), torch.full_like(sample, 1.0))  # 0 + 0.5 + 0.5: overshoots
    torch.testing.assert_close(run("sequential"), torch.full_like(sample, 0.5))


def test_weighted_term_is_eq5() -> None:
    weight = gaussian_patch_weight((8, 8), (5, 5), (1, 2))[None]
    reference = torch.ones(1, 1, 8, 8)
    condition = GuidanceCondition("pathology", reference, factor=1, stop_timestep=0, weight=weight)
    out = MultiConditionGuidance([condition], _ddpm())(torch.zeros(1, 1, 8, 8), 0, None, torch.randn)
    torch.testing.assert_close(out, weight)


def test_gaussian_patch_weight_peak_and_support() -> None:
    weight = gaussian_patch_weight((32, 32), (9, 7), (3, 10), sigma_fraction=0.25, peak=0.8)[0]
    assert weight.shape == (32, 32)
    assert float(weight.max()) == pytest.approx(0.8) and float(weight[3 + 4, 10 + 3]) == pytest.approx(0.8)
    support = weight > 0
    assert support[3:12, 10:17].all() and int(support.sum()) == 9 * 7
    sigma = 0.25 * 7
    assert float(weight[3, 10 + 3]) == pytest.approx(0.8 * torch.exp(torch.tensor(-16 / (2 * sigma**2))).item())
    with pytest.raises(ValueError, match="patch_size"):
        gaussian_patch_weight((8, 8), (5, 5), (5, 0))
    with pytest.raises(ValueError, match="patch_sigma_fraction"):
        gaussian_patch_weight((8, 8), (5, 5), (0, 0), sigma_fraction=0)


@pytest.mark.parametrize(
    "condition, shape, match",
    [
        (dict(reference=torch.zeros(1, 1, 8, 8)), (1, 1, 16, 16), "'anatomy_reference'.*model grid"),
        (dict(reference=torch.full((1, 1, 16, 16), float("nan"))), (1, 1, 16, 16), "'anatomy_reference'.*NaN"),
        (dict(factor=3), (1, 1, 16, 16), "'anatomy_factor'.*3 must divide the image size \\(16, 16\\)"),
        (dict(stop_timestep=T), (1, 1, 16, 16), f"'anatomy_stop'.*\\[0, {T}\\), got {T}"),
        (dict(stop_timestep=-1), (1, 1, 16, 16), "'anatomy_stop'.*got -1"),
        (dict(weight=torch.ones(1, 1, 8, 8)), (1, 1, 16, 16), "'anatomy_weight'"),
        (dict(weight=-torch.ones(1, 1, 16, 16)), (1, 1, 16, 16), "'anatomy_weight'.*>= 0"),
    ],
)
def test_bad_conditions_name_the_config_key(condition: dict, shape: tuple, match: str) -> None:
    settings = {"reference": torch.zeros(1, 1, 16, 16), "factor": 4, "stop_timestep": 0, **condition}
    guidance = MultiConditionGuidance([GuidanceCondition("anatomy", **settings)], _ddpm())
    with pytest.raises(ValueError, match=match):
        guidance.check(shape)


def test_bad_factor_mode_and_combine() -> None:
    with pytest.raises(ValueError, match="'anatomy_factor'.*got 0"):
        GuidanceCondition("anatomy", torch.zeros(1, 1, 8, 8), factor=0, stop_timestep=0)
    with pytest.raises(ValueError, match="'guidance_combine'.*'both'"):
        MultiConditionGuidance([], _ddpm(), "both")
    with pytest.raises(ValueError, match="unique"):
        condition = GuidanceCondition("a", torch.zeros(1, 1, 8, 8), factor=2, stop_timestep=0)
        MultiConditionGuidance([condition, condition], _ddpm())


class _ZeroNet(torch.nn.Module):
    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@pytest.mark.parametrize(
    "scheduler, steps",
    [
        (_ddpm(), T),
        (RespacedDDPMScheduler(num_train_timesteps=T, schedule="cosine", variance_type="fixed_small"), 5),
        (DDIMScheduler(num_train_timesteps=T, schedule="cosine"), 5),
        (DPMSolverMultistepScheduler(num_train_timesteps=T, schedule="cosine"), 4),
    ],
    ids=["ddpm", "respaced", "monai_ddim", "dpm_solver"],
)
def test_guided_sampler_with_any_scheduler_ends_on_the_reference_low_pass(scheduler, steps: int) -> None:
    reference = torch.rand(1, 1, 16, 16) * 2 - 1
    guidance = MultiConditionGuidance([GuidanceCondition("anatomy", reference, factor=4, stop_timestep=0)], scheduler)
    scheduler.set_timesteps(steps)
    generators = [torch.Generator().manual_seed(k) for k in range(2)]
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    inferer = GuidedDiffusionInferer(scheduler)
    out = inferer.sample(noise, _ZeroNet(), scheduler, guidance, generators)
    phi = LowPassFilter(4)
    torch.testing.assert_close(phi(out), phi(reference).expand_as(out), atol=1e-5, rtol=0)
    again = inferer.sample(noise, _ZeroNet(), scheduler, guidance, [torch.Generator().manual_seed(k) for k in range(2)])
    torch.testing.assert_close(out, again, atol=0, rtol=0)  # seeded per sample
    unguided = inferer.sample(noise, _ZeroNet(), scheduler, None, [torch.Generator().manual_seed(0)] * 2)
    assert not torch.allclose(phi(unguided), phi(reference).expand_as(out), atol=1e-2)


def test_guided_sampler_checks_the_reference_first() -> None:
    scheduler = _ddpm()
    guidance = MultiConditionGuidance([GuidanceCondition("anatomy", torch.zeros(1, 1, 8, 8), 2, 0)], scheduler)
    with pytest.raises(ValueError, match="anatomy_reference"):
        GuidedDiffusionInferer(scheduler).sample(torch.zeros(1, 1, 16, 16), _ZeroNet(), scheduler, guidance)
