"""Tests of common.inferers.synthesis: the one-call (serving) sampling inferer matches the sampling workflow's loop,
is seeded per row, and refuses inputs it cannot sample for."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.networks.schedulers import DDPMScheduler

from common.inferers import ConditionalDiffusionInferer, MaskConditionedSynthesisInferer
from common.inferers.per_sample import per_sample_noise
from common.schedulers import RespacedDDPMScheduler

T = 10


class ConcatModel(torch.nn.Module):
    """Stub denoiser of (noisy image + condition) channels: a fixed mix of both, so the sample depends on each."""

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return 0.3 * x[:, :1] - 0.2 * x[:, 1:].sum(dim=1, keepdim=True) + 0.01 * timesteps.float().view(-1, 1, 1, 1, 1)


def make(seed: int = 0, steps: int = 5) -> MaskConditionedSynthesisInferer:
    scheduler = RespacedDDPMScheduler(num_train_timesteps=T)
    diffusion = ConditionalDiffusionInferer(DDPMScheduler(num_train_timesteps=T), mode="concat")
    return MaskConditionedSynthesisInferer(diffusion, scheduler, steps, 2, image_channels=1, seed=seed)


def one_hot(batch: int = 1, shape: tuple[int, ...] = (6, 5, 4)) -> torch.Tensor:
    label = torch.zeros((batch, *shape), dtype=torch.long)
    label[:, 1:5, 1:4, 1:3] = 1
    label[:, 2:3, 2:3, 1:2] = 2
    return torch.stack([(label == 1), (label == 2)], dim=1).float()


def test_one_call_equals_the_sampling_loop() -> None:
    """inferer(condition, network) is the workflow's sample(): same start noise, scheduler and per-row generators."""
    inferer, network, condition = make(seed=7), ConcatModel(), one_hot()
    out = inferer(condition, network)
    scheduler = RespacedDDPMScheduler(num_train_timesteps=T)
    scheduler.set_timesteps(5)
    generators = [torch.Generator().manual_seed(7)]
    noise = per_sample_noise((1, 1, 6, 5, 4), generators)
    expected = inferer.diffusion_inferer.sample(noise, network, scheduler, conditioning=condition, generator=generators)
    assert out.shape == (1, 1, 6, 5, 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_seeded_per_row_and_conditioned() -> None:
    network = ConcatModel()
    batch = make(seed=3)(one_hot(batch=2), network)
    torch.testing.assert_close(batch[1:], make(seed=4)(one_hot(), network))  # row k uses seed + k
    assert not torch.equal(batch[0], batch[1])
    torch.testing.assert_close(make(seed=3)(one_hot(), network), batch[:1])  # same seed, same sample
    assert not torch.equal(make(seed=3)(torch.zeros_like(one_hot()), network), batch[:1])  # the mask matters


def test_meta_tensor_input_gives_a_plain_sample() -> None:
    out = make()(MetaTensor(one_hot()), ConcatModel())
    assert out.shape == (1, 1, 6, 5, 4) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (torch.zeros(1, 2, 6, 5), r"shape \(batch, 2, 3 spatial axes\)"),
        (torch.zeros(1, 3, 6, 5, 4), "expected 2 input channel"),
        (torch.full((1, 2, 6, 5, 4), float("nan")), "NaN/inf"),
    ],
    ids=["2d", "channels", "nan"],
)
def test_refuses_inputs_it_cannot_sample_for(inputs: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()(inputs, ConcatModel())


def test_refuses_a_respaced_monai_ddpm_and_a_crossattn_inferer() -> None:
    with pytest.raises(ValueError, match="only correct with all 10 steps"):
        MaskConditionedSynthesisInferer(
            ConditionalDiffusionInferer(DDPMScheduler(num_train_timesteps=T)), DDPMScheduler(T), 5, 2, 1
        )
    with pytest.raises(ValueError, match="mode 'concat'"):
        MaskConditionedSynthesisInferer(
            ConditionalDiffusionInferer(DDPMScheduler(T), mode="crossattn"), RespacedDDPMScheduler(T), 5, 2, 1
        )
