"""Joint sampling of paired diffusion networks (one denoiser per modality), with noise seeding and agreement
refinement."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from monai.inferers import Inferer
from monai.networks.schedulers import Scheduler
from torch import nn
from tqdm import tqdm

from common.inferers.per_sample import PerSampleScheduler, per_sample_noise
from common.networks.paired_denoiser import check_paired_networks, stack_conditions

__all__ = ["PairedDiffusionInferer"]


class PairedDiffusionInferer(Inferer):
    """Joint sampling of paired denoisers, with optional noise seeding from a real sample.

    Args:
        scheduler: the training noise scheduler (its ``add_noise`` is the forward process used for seeding).
        modalities: modality keys in condition order. Default ("ct", "pet", "mask").

    ``__call__(inputs, network, timesteps)`` predicts every modality's noise for a dict of noisy images;
    ``sample(...)`` runs the joint reverse process.
    """

    def __init__(self, scheduler: Scheduler, modalities: Sequence[str] = ("ct", "pet", "mask")) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.modalities = list(modalities)

    def __call__(  # type: ignore[override]
        self, inputs: Mapping[str, torch.Tensor], network: nn.ModuleDict, timesteps: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Each network's prediction for the noisy images ``inputs`` at ``timesteps`` (B,)."""
        return {
            m: network[m](inputs[m], timesteps, stack_conditions(inputs, self.modalities, m)) for m in self.modalities
        }

    def seed_timestep(self, scheduler: Scheduler, fraction: float) -> int:
        """The first timestep of a seeded run: the largest kept timestep <= ``fraction * (T - 1)``."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"seed fraction must be in (0, 1], got {fraction}")
        limit, kept = self._kept_up_to(scheduler, fraction, lowest=0)
        if kept is None:
            raise ValueError(f"no sampling timestep <= {limit} (fraction {fraction}); use more sampling steps")
        return kept

    def _kept_up_to(self, scheduler: Scheduler, fraction: float, lowest: int) -> tuple[int, int | None]:
        """``(limit, t)``: ``limit = round(fraction * (T - 1))`` and the largest kept timestep ``lowest <= t <= limit``
        of ``scheduler`` (None if there is none)."""
        limit = round(fraction * (self.scheduler.num_train_timesteps - 1))
        kept = scheduler.timesteps[(scheduler.timesteps <= limit) & (scheduler.timesteps >= lowest)]
        return limit, int(kept[0]) if len(kept) else None

    @torch.no_grad()
    def sample(
        self,
        shape: Sequence[int],
        network: nn.ModuleDict,
        scheduler: Scheduler | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        reference: Mapping[str, torch.Tensor] | None = None,
        seed_fraction: float | None = None,
        device: str | torch.device = "cpu",
        verbose: bool = False,
        refine_rounds: int = 0,
        refine_fraction: float = 0.1,
    ) -> dict[str, torch.Tensor]:
        """Sample every modality jointly.

        Args:
            shape: (B, C, *spatial) of each modality's sample.
            network: ``nn.ModuleDict`` of denoisers keyed by modality.
            scheduler: sampler with ``timesteps`` set (``RespacedDDPMScheduler``, ``DPMSolverMultistepScheduler``,
                ...); default the inferer's scheduler. Each modality steps with its own deep copy.
            generator: random generator (on ``device``) of the start noise and of the stochastic steps, or one per
                batch row (each row's noise then does not depend on the batch, see
                :mod:`common.inferers.per_sample`).
            reference: noise seeding: real images per modality, each of ``shape``, scaled like the training data.
            seed_fraction: noise seeding: start at the largest kept timestep <= ``seed_fraction * (T - 1)`` from the
                reference noised to it (the paper: 0.8-0.9). Both or neither of ``reference``/``seed_fraction``.
            device: device of the samples.
            verbose: progress bar.
            refine_rounds: agreement refinement: after sampling, this many times noise the finished triple again to
                the largest non-zero kept timestep <= ``refine_fraction * (T - 1)`` (fresh noise per modality, the
                forward process) and run the sampler down from there. At low noise each network sees the others'
                nearly finished images, so a mask and a PET hot spot that disagree get further steps to agree. Each
                round costs the sampler's kept timesteps at and below that one (``refinement_evaluations``). It must
                restart below a seeded start. Default 0 (off).
            refine_fraction: agreement refinement: the fraction of the schedule each round goes back to.

        Returns:
            dict modality -> (B, C, *spatial) sample.
        """
        check_paired_networks(network, self.modalities)
        if (reference is None) != (seed_fraction is None):
            raise ValueError("noise seeding needs both `reference` and `seed_fraction` (or neither)")
        scheduler = scheduler or self.scheduler
        refine_start = self.refinement_start(scheduler, refine_rounds, refine_fraction)
        timesteps = scheduler.timesteps
        shape = tuple(int(s) for s in shape)
        if isinstance(generator, Sequence):
            scheduler, generators, generator = PerSampleScheduler(scheduler, generator), generator, None
        else:
            generators = None

        def noise() -> torch.Tensor:
            if generators is not None:
                return per_sample_noise(shape, generators, device)
            return torch.randn(shape, generator=generator, device=device)

        states = {m: noise() for m in self.modalities}
        if reference is not None:
            start = self.seed_timestep(scheduler, float(seed_fraction))
            if refine_start >= start:
                raise ValueError(
                    f"refine_fraction {refine_fraction} restarts refinement at timestep {refine_start}, not below the "
                    f"seeded start {start} (seed_fraction {seed_fraction}): it would undo the seeding; lower it"
                )
            timesteps = timesteps[timesteps <= start]
            start_t = torch.full((shape[0],), start, dtype=torch.long, device=device)
            for m in self.modalities:
                image = torch.as_tensor(reference[m]).to(device=device, dtype=states[m].dtype)
                if tuple(image.shape) != shape:
                    raise ValueError(f"reference '{m}' must have shape {shape}, got {tuple(image.shape)}")
                states[m] = self.scheduler.add_noise(image, states[m], start_t)
        states = self._denoise(states, network, scheduler, timesteps, generator, verbose, "sampling")
        for round_index in range(int(refine_rounds)):
            restart = torch.full((shape[0],), refine_start, dtype=torch.long, device=device)
            for m in self.modalities:
                states[m] = self.scheduler.add_noise(states[m], noise(), restart)
            states = self._denoise(
                states,
                network,
                scheduler,
                scheduler.timesteps[scheduler.timesteps <= refine_start],
                generator,
                verbose,
                f"refinement {round_index + 1}/{refine_rounds}",
            )
        return states

    def refinement_start(self, scheduler: Scheduler, rounds: int, fraction: float) -> int:
        """The timestep each agreement-refinement round restarts from (-1 when ``rounds`` is 0)."""
        if isinstance(rounds, bool) or not isinstance(rounds, (int, float)) or int(rounds) != rounds or rounds < 0:
            raise ValueError(f"refine_rounds must be a non-negative integer, got {rounds}")
        if rounds == 0:
            return -1
        if not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
            raise ValueError(f"refine_fraction must be in (0, 1), got {fraction}")
        limit, kept = self._kept_up_to(scheduler, fraction, lowest=1)
        if kept is None:
            raise ValueError(
                f"refine_fraction {fraction}: no sampling timestep in (0, {limit}]; raise it or raise "
                "num_inference_steps"
            )
        return kept

    def refinement_evaluations(self, scheduler: Scheduler, rounds: int, fraction: float) -> int:
        """Network evaluations per modality that ``rounds`` refinement rounds add (``scheduler.timesteps`` set)."""
        start = self.refinement_start(scheduler, rounds, fraction)
        return int(rounds) * int((scheduler.timesteps <= start).sum())

    def _denoise(
        self,
        states: dict[str, torch.Tensor],
        network: nn.ModuleDict,
        scheduler: Scheduler,
        timesteps: torch.Tensor,
        generator: torch.Generator | None,
        verbose: bool,
        description: str,
    ) -> dict[str, torch.Tensor]:
        """Step every modality jointly along ``timesteps`` (each with a fresh copy of ``scheduler``)."""
        schedulers = {m: copy.deepcopy(scheduler) for m in self.modalities}
        batch = next(iter(states.values())).shape[0]
        device = next(iter(states.values())).device
        for t in tqdm(timesteps, disable=not verbose, desc=description, leave=False):
            batch_t = torch.full((batch,), int(t), dtype=torch.long, device=device)
            predictions = self(states, network, batch_t)
            for m in self.modalities:
                states[m], _ = schedulers[m].step(predictions[m], t, states[m], generator=generator)
        return states
