"""Tests of common.inferers.conditional: conditioning modes, the training call, seeded sampling, start timesteps,
noising."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler, Scheduler

from common.inferers.conditional import CONDITIONING_MODES, ConditionalDiffusionInferer
from common.schedulers import DDIMClippedScheduler

T = 10
IMAGE_SHAPE = (2, 1, 4, 4, 4)
CONDITION_SHAPE = (2, 2, 4, 4, 4)


class RecordingModel(torch.nn.Module):
    """Stub denoiser: records every call and predicts ``scale * x[:, :out_channels]`` (zeros by default)."""

    def __init__(self, out_channels: int = 1, scale: float = 0.0) -> None:
        super().__init__()
        self.out_channels, self.scale = out_channels, scale
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append({"x": x.clone(), "timesteps": timesteps.clone(), "context": context})
        return self.scale * x[:, : self.out_channels]


def normal(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def ddim(steps: int = 5) -> DDIMClippedScheduler:
    scheduler = DDIMClippedScheduler(num_train_timesteps=T, eta=1.0)
    scheduler.set_timesteps(steps)
    return scheduler


SCHEDULERS: dict[str, Callable[[], Scheduler]] = {
    "monai_ddpm": lambda: DDPMScheduler(num_train_timesteps=T),
    "ddim_clipped": ddim,
}


def test_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match=r"mode must be one of \('concat', 'crossattn'\), got 'add'"):
        ConditionalDiffusionInferer(DDPMScheduler(num_train_timesteps=T), mode="add")
    assert CONDITIONING_MODES == ("concat", "crossattn")


# ------------------------------------------------------------------------------------------------- training call


def test_call_concat_feeds_noisy_image_and_condition() -> None:
    scheduler = DDPMScheduler(num_train_timesteps=T)
    inferer = ConditionalDiffusionInferer(scheduler, mode="concat")
    model = RecordingModel()
    inputs, noise, condition = normal(IMAGE_SHAPE, 0), normal(IMAGE_SHAPE, 1), normal(CONDITION_SHAPE, 2)
    timesteps = torch.tensor([3, 8])
    prediction = inferer(inputs, model, noise, timesteps, condition=condition)
    assert torch.equal(prediction, torch.zeros(IMAGE_SHAPE))
    (call,) = model.calls
    noisy = scheduler.add_noise(inputs, noise, timesteps)
    assert not torch.allclose(noisy, inputs)
    assert torch.equal(call["x"], torch.cat([noisy, condition], dim=1))
    assert torch.equal(call["timesteps"], timesteps) and call["context"] is None


def test_call_crossattn_passes_the_condition_as_context() -> None:
    scheduler = DDPMScheduler(num_train_timesteps=T)
    model = RecordingModel()
    inputs, noise, context = normal(IMAGE_SHAPE, 0), normal(IMAGE_SHAPE, 1), normal((2, 3, 8), 2)
    timesteps = torch.tensor([0, 9])
    ConditionalDiffusionInferer(scheduler, mode="crossattn")(inputs, model, noise, timesteps, condition=context)
    (call,) = model.calls
    assert torch.equal(call["x"], scheduler.add_noise(inputs, noise, timesteps))
    assert call["context"] is context


def test_call_concat_without_condition_raises() -> None:
    inferer = ConditionalDiffusionInferer(DDPMScheduler(num_train_timesteps=T))
    with pytest.raises(ValueError, match="Conditioning is required"):
        inferer(normal(IMAGE_SHAPE, 0), RecordingModel(), normal(IMAGE_SHAPE, 1), torch.tensor([1, 2]))


# ------------------------------------------------------------------------------------------------------ sampling


def _sample(scheduler_name: str, seed: int, model: RecordingModel | None = None) -> torch.Tensor:
    scheduler = SCHEDULERS[scheduler_name]()
    inferer = ConditionalDiffusionInferer(DDPMScheduler(num_train_timesteps=T), mode="concat")
    return inferer.sample(
        normal(IMAGE_SHAPE, 100),
        model or RecordingModel(scale=0.1),
        scheduler,
        conditioning=torch.ones(CONDITION_SHAPE),
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("scheduler_name", list(SCHEDULERS))
def test_sample_is_reproducible_with_a_generator(scheduler_name: str) -> None:
    first = _sample(scheduler_name, seed=0)
    assert first.shape == IMAGE_SHAPE
    assert torch.equal(_sample(scheduler_name, seed=0), first)
    assert not torch.allclose(_sample(scheduler_name, seed=1), first)


@pytest.mark.parametrize("scheduler_name", list(SCHEDULERS))
def test_sample_feeds_the_condition_at_every_step(scheduler_name: str) -> None:
    model = RecordingModel(scale=0.1)
    _sample(scheduler_name, seed=0, model=model)
    expected = SCHEDULERS[scheduler_name]().timesteps
    assert [int(c["timesteps"][0]) for c in model.calls] == expected.tolist()
    assert all(c["x"].shape == (2, 3, 4, 4, 4) and bool((c["x"][:, 1:] == 1).all()) for c in model.calls)
    assert all(c["timesteps"].shape == (2,) and c["timesteps"].dtype == torch.long for c in model.calls)


@pytest.mark.parametrize(
    "scheduler_name, start_timestep, visited",
    [
        ("ddim_clipped", None, [9, 7, 5, 2, 0]),
        ("ddim_clipped", 9, [9, 7, 5, 2, 0]),
        ("ddim_clipped", 6, [5, 2, 0]),
        ("ddim_clipped", 0, [0]),
        ("monai_ddpm", 3, [3, 2, 1, 0]),
    ],
)
def test_start_timestep_skips_the_steps_above_it(
    scheduler_name: str, start_timestep: int | None, visited: list[int]
) -> None:
    model = RecordingModel(scale=0.1)
    inferer = ConditionalDiffusionInferer(DDPMScheduler(num_train_timesteps=T))
    inferer.sample(
        normal(IMAGE_SHAPE, 0),
        model,
        SCHEDULERS[scheduler_name](),
        conditioning=torch.zeros(CONDITION_SHAPE),
        generator=torch.Generator().manual_seed(0),
        start_timestep=start_timestep,
    )
    assert [int(c["timesteps"][0]) for c in model.calls] == visited


def test_sample_defaults_to_the_inferer_scheduler() -> None:
    model = RecordingModel()
    ConditionalDiffusionInferer(DDPMScheduler(num_train_timesteps=4)).sample(
        normal(IMAGE_SHAPE, 0), model, conditioning=torch.zeros(CONDITION_SHAPE)
    )
    assert [int(c["timesteps"][0]) for c in model.calls] == [3, 2, 1, 0]


def test_sample_concat_without_condition_raises() -> None:
    inferer = ConditionalDiffusionInferer(DDPMScheduler(num_train_timesteps=T), mode="concat")
    with pytest.raises(ValueError, match="mode 'concat' needs a condition tensor, got None"):
        inferer.sample(normal(IMAGE_SHAPE, 0), RecordingModel())


def test_sample_crossattn_passes_context() -> None:
    model = RecordingModel()
    context = normal((2, 3, 8), 1)
    inferer = ConditionalDiffusionInferer(DDPMScheduler(num_train_timesteps=T), mode="crossattn")
    inferer.sample(normal(IMAGE_SHAPE, 0), model, ddim(2), conditioning=context)
    assert len(model.calls) == 2
    assert all(c["context"] is context and c["x"].shape == IMAGE_SHAPE for c in model.calls)


# ------------------------------------------------------------------------------------------------------- noising


@pytest.mark.parametrize("timestep", [0, 4, 9])
def test_noise_to_matches_add_noise(timestep: int) -> None:
    scheduler = DDPMScheduler(num_train_timesteps=T)
    inferer = ConditionalDiffusionInferer(scheduler)
    reference = normal(IMAGE_SHAPE, 0).clamp(-1, 1)
    noised = inferer.noise_to(reference, timestep, generator=torch.Generator().manual_seed(5))
    expected = scheduler.add_noise(reference, normal(IMAGE_SHAPE, 5), torch.full((2,), timestep))
    assert torch.allclose(noised, expected)
    assert not torch.allclose(noised, reference)
