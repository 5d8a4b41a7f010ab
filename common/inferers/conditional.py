"""Diffusion inferer with a fixed conditioning mode, seeded sampling, any MONAI-style scheduler and noise seeding.

MONAI's ``DiffusionInferer`` takes the conditioning mode per call (``crossattn`` by default, which the trainer uses),
samples without a ``torch.Generator`` and always starts from the last training timestep. Mask-conditioned models
(Med-DDPM) concatenate the condition to the noisy image at every call, reproducible sampling needs a generator,
and noise seeding (SDEdit-style) starts part-way through the schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler
from tqdm import tqdm

from common.inferers.per_sample import PerSampleScheduler

__all__ = ["CONDITIONING_MODES", "ConditionalDiffusionInferer"]


CONDITIONING_MODES = ("concat", "crossattn")


class ConditionalDiffusionInferer(DiffusionInferer):
    """``DiffusionInferer`` bound to one conditioning mode, with a seeded, resumable sampling loop.

    Args:
        scheduler: the training noise scheduler (its ``add_noise`` defines the forward process).
        mode: ``"concat"``: the condition is concatenated to the noisy image along channels (Med-DDPM, Eq. in
            Sec. II: x~_t = x_t (+) c); ``"crossattn"``: passed as cross-attention context.
    """

    def __init__(self, scheduler: Scheduler, mode: str = "concat") -> None:
        if mode not in CONDITIONING_MODES:
            raise ValueError(f"mode must be one of {CONDITIONING_MODES}, got '{mode}'")
        super().__init__(scheduler)
        self.mode = mode

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        diffusion_model: Callable[..., torch.Tensor],
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor | None = None,
        mode: str | None = None,
        seg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise ``inputs`` to ``timesteps`` and return the network's prediction (training and validation)."""
        return super().__call__(inputs, diffusion_model, noise, timesteps, condition, mode or self.mode, seg)

    def predict(
        self,
        diffusion_model: Callable[..., torch.Tensor],
        x_t: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor | None,
    ) -> torch.Tensor:
        """One network evaluation at timestep ``t`` (scalar tensor) for the batch ``x_t``."""
        timesteps = torch.full((x_t.shape[0],), int(t), device=x_t.device, dtype=torch.long)
        if self.mode == "concat":
            if condition is None:
                raise ValueError("mode 'concat' needs a condition tensor, got None")
            return diffusion_model(torch.cat([x_t, condition], dim=1), timesteps=timesteps)
        return diffusion_model(x_t, timesteps=timesteps, context=condition)

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self,
        input_noise: torch.Tensor,
        diffusion_model: Callable[..., torch.Tensor],
        scheduler: Scheduler | None = None,
        conditioning: torch.Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        start_timestep: int | None = None,
        verbose: bool = False,
    ) -> torch.Tensor:
        """Run the reverse process from ``input_noise`` over ``scheduler.timesteps``.

        Args:
            input_noise: (B, C, *spatial) start tensor: pure noise, or for noise seeding a reference noised to
                ``start_timestep`` (see :meth:`noise_to`).
            diffusion_model: the denoiser; called as ``model(cat(x_t, c), timesteps=t)`` in concat mode.
            scheduler: sampling scheduler (DDPM, DDIM, DPM-Solver, ...) with ``timesteps`` already set; defaults to
                the inferer's scheduler.
            conditioning: (B, C_c, *spatial) condition (one-hot mask in concat mode).
            generator: random generator for the stochastic steps, so a seed gives the same samples; or one per
                batch row, so a row's step noise does not depend on the batch (see :mod:`common.inferers.per_sample`).
            start_timestep: skip the scheduler timesteps above this value (noise seeding).
            verbose: show a progress bar.

        Returns:
            (B, C, *spatial) sample.
        """
        scheduler = scheduler or self.scheduler
        if isinstance(generator, Sequence):
            scheduler, generator = PerSampleScheduler(scheduler, generator), None
        timesteps = scheduler.timesteps
        if start_timestep is not None:
            timesteps = timesteps[timesteps <= start_timestep]
        image = input_noise
        for t in tqdm(timesteps, disable=not verbose, desc="sampling", leave=False):
            model_output = self.predict(diffusion_model, image, t, conditioning)
            image, _ = scheduler.step(model_output, t, image, generator=generator)
        return image

    def noise_to(
        self, reference: torch.Tensor, timestep: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Forward-noise ``reference`` to ``timestep`` (q(x_t | x_0)): the start of noise-seeded sampling."""
        noise = torch.randn(reference.shape, generator=generator, device=reference.device, dtype=reference.dtype)
        t = torch.full((reference.shape[0],), int(timestep), device=reference.device, dtype=torch.long)
        return self.scheduler.add_noise(reference, noise, t)
