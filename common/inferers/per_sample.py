"""Per-sample randomness for batched sampling: each row of a batch draws its noise from its own generator.

A batch of B samples drawn with one ``torch.Generator`` gets noise that depends on B and on the row: the same sample
id drawn in another batch (another batch size, another shard of a multi-process run) would get other noise.
With one generator per row, seeded from (seed, item key, sample index), a sample's start noise and every stochastic
step's noise are the same whatever batch it is drawn in; only the network's batched forward may differ (by float
rounding) from a forward of the row alone.

:func:`per_sample_noise` draws start noise row by row; :class:`PerSampleScheduler` wraps any MONAI-style scheduler
(``timesteps``, ``step(model_output, t, sample, generator)``) so that ``step`` runs row by row, each row with its own
copy of the scheduler (multistep solvers keep per-sample history) and its own generator. The inferers drive it as
any scheduler.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.schedulers import Scheduler

__all__ = ["per_sample_noise", "PerSampleScheduler"]


def per_sample_noise(
    shape: Sequence[int], generators: Sequence[torch.Generator], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Standard normal noise of ``shape`` = (B, ...), row ``k`` drawn from ``generators[k]``.

    Raises:
        ValueError: ``len(generators)`` is not B.
    """
    shape = tuple(int(s) for s in shape)
    if len(generators) != shape[0]:
        raise ValueError(f"per-sample noise of shape {shape} needs {shape[0]} generators, got {len(generators)}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device) for g in generators])


class PerSampleScheduler:
    """A scheduler whose ``step`` runs each batch row with its own scheduler copy and its own generator.

    Attributes other than ``step`` (``timesteps``, ``num_train_timesteps``, ``add_noise``, ...) are those of the
    wrapped scheduler. A deep copy (as :class:`common.inferers.paired.PairedDiffusionInferer` makes per modality)
    copies the scheduler state but shares the generators, so a row's draws stay one stream in call order.

    Args:
        scheduler: the sampling scheduler, ``set_timesteps`` already called.
        generators: one generator per batch row.
    """

    def __init__(self, scheduler: Scheduler, generators: Sequence[torch.Generator]) -> None:
        if not generators:
            raise ValueError("PerSampleScheduler needs at least one generator (one per batch row), got none")
        self.scheduler = scheduler
        self.generators = list(generators)
        self.rows = [copy.deepcopy(scheduler) for _ in self.generators]

    def __getattr__(self, name: str) -> Any:
        if name in ("scheduler", "generators", "rows"):  # not set yet (during copying): no recursion
            raise AttributeError(name)
        return getattr(self.scheduler, name)

    def __deepcopy__(self, memo: dict) -> PerSampleScheduler:
        twin = PerSampleScheduler.__new__(PerSampleScheduler)
        twin.scheduler = self.scheduler
        twin.generators = self.generators
        twin.rows = [copy.deepcopy(row, memo) for row in self.rows]
        return twin

    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, generator: None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prev_sample, pred_original_sample)`` of the batch, each row stepped alone.

        Raises:
            ValueError: a ``generator`` is passed (the rows' own generators are used) or the batch size is not the
                number of generators.
        """
        if generator is not None:
            raise ValueError("PerSampleScheduler.step draws from its per-row generators; pass generator=None")
        if sample.shape[0] != len(self.rows):
            raise ValueError(f"a batch of {sample.shape[0]} rows for {len(self.rows)} per-sample generators")
        outputs = [
            row.step(model_output[k : k + 1], timestep, sample[k : k + 1], generator=self.generators[k])
            for k, row in enumerate(self.rows)
        ]
        return torch.cat([out[0] for out in outputs]), torch.cat([out[1] for out in outputs])
