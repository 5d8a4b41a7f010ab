"""Tests of common.inferers.per_sample: per-row noise and per-row scheduler steps do not depend on the batch."""

from __future__ import annotations

import copy

import pytest
import torch

from common.inferers.per_sample import PerSampleScheduler, per_sample_noise
from common.schedulers import DDIMClippedScheduler, DPMSolverMultistepScheduler


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_per_sample_noise_rows_are_their_generators_draws() -> None:
    noise = per_sample_noise((3, 2, 4), generators(5, 6, 7))
    for row, seed in zip(noise, (5, 6, 7)):
        assert torch.equal(row[None], torch.randn((1, 2, 4), generator=torch.Generator().manual_seed(seed)))
    with pytest.raises(ValueError, match=r"per-sample noise of shape \(3, 2\) needs 3 generators, got 1"):
        per_sample_noise((3, 2), generators(1))


@pytest.mark.parametrize("scheduler_class", [DDIMClippedScheduler, DPMSolverMultistepScheduler])
def test_a_row_steps_the_same_alone_or_in_a_batch(scheduler_class: type) -> None:
    scheduler = scheduler_class(
        num_train_timesteps=20, **({"eta": 1.0} if scheduler_class is DDIMClippedScheduler else {})
    )
    scheduler.set_timesteps(4)
    torch.manual_seed(0)
    x, outputs = torch.randn(3, 1, 8), [torch.randn(3, 1, 8) for _ in scheduler.timesteps]
    batch = PerSampleScheduler(scheduler, generators(1, 2, 3))
    alone = PerSampleScheduler(scheduler, generators(2))
    together, single = x, x[1:2]
    for t, output in zip(scheduler.timesteps, outputs):
        together, _ = batch.step(output, t, together)
        single, _ = alone.step(output[1:2], t, single)
    assert torch.equal(together[1:2], single)
    assert not torch.equal(together[0], together[1])
    assert torch.equal(batch.timesteps, scheduler.timesteps) and batch.num_train_timesteps == 20


def test_a_copy_shares_the_generators_and_checks_its_arguments() -> None:
    scheduler = DDIMClippedScheduler(num_train_timesteps=10)
    wrapped = PerSampleScheduler(scheduler, generators(1, 2))
    twin = copy.deepcopy(wrapped)
    assert twin.generators[0] is wrapped.generators[0] and twin.rows[0] is not wrapped.rows[0]
    with pytest.raises(ValueError, match="pass generator=None"):
        wrapped.step(torch.zeros(2, 1), 9, torch.zeros(2, 1), generator=torch.Generator())
    with pytest.raises(ValueError, match="a batch of 3 rows for 2 per-sample generators"):
        wrapped.step(torch.zeros(3, 1), 9, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="needs at least one generator"):
        PerSampleScheduler(scheduler, [])
