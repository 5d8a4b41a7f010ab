"""Whole-chain synthesis inferers: one ``inferer(inputs, network)`` call runs the whole sampler.

MONAI Label's bundle task and MONAI Deploy's bundle operator both treat a bundle as "preprocessed input in, network
output out": they call ``inferer(inputs, network)`` once with the preprocessed tensor (B, C, *spatial) and post-process
what comes back. A diffusion model needs a loop around its network (start noise, timesteps, scheduler steps), so a
plain ``SimpleInferer`` cannot serve it. :class:`WholeChainInferer` is that loop behind the one-call contract: it
checks the input, makes one seeded generator per batch row (a row's sample does not depend on the batch), sets the
sampler's timesteps and hands over to :meth:`WholeChainInferer.generate`, which subclasses implement:

- :class:`MaskConditionedSynthesisInferer` (``semantic_mri``, Med-DDPM): the input is the one-hot label map, the
  output the generated image, sampled from pure noise with the concat-conditioned denoiser.
- A paired seeded inferer (``paired_petct``'s seeded mode, not implemented here) fits the same frame: its input would be
  the real CT, PET and mask stacked along channels (``reference_channels`` of them), split by channel counts into the
  reference dict that :meth:`common.inferers.PairedDiffusionInferer.sample` takes with its ``seed_fraction``, the
  network a ``ModuleDict`` of denoisers, and its ``generate`` would return the new triple stacked along channels.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.networks.schedulers import Scheduler

from common.inferers.conditional import ConditionalDiffusionInferer
from common.inferers.per_sample import per_sample_noise
from common.schedulers import check_sampler_steps

__all__ = ["MaskConditionedSynthesisInferer", "WholeChainInferer"]


class WholeChainInferer(Inferer):
    """Base of the one-call sampling inferers: ``inferer(inputs, network)`` returns the finished sample.

    Args:
        scheduler: the sampling scheduler (the paper's DDPM, a respaced DDPM, DDIM, DPM-Solver, ...); its timesteps are
            set to ``num_inference_steps`` at every call.
        num_inference_steps: sampler steps per call.
        input_channels: channels the preprocessed input must have (one-hot condition channels, or reference images
            followed by condition channels); a request with another count is refused.
        spatial_dims: spatial dimensions of the input.
        seed: seed of the sampler's randomness; batch row ``k`` uses the seed ``seed + k``, so the same input and seed
            give the same sample.
        verbose: show a progress bar.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        num_inference_steps: int,
        input_channels: int,
        spatial_dims: int = 3,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        check_sampler_steps(scheduler, int(num_inference_steps))
        self.scheduler = scheduler
        self.num_inference_steps = int(num_inference_steps)
        self.input_channels = int(input_channels)
        self.spatial_dims = int(spatial_dims)
        self.seed = int(seed)
        self.verbose = verbose

    def check_inputs(self, inputs: torch.Tensor) -> None:
        """Refuse an input that is not (B, ``input_channels``, *spatial) with ``spatial_dims`` spatial axes, or that
        holds NaN/inf."""
        expected = f"(batch, {self.input_channels}, {self.spatial_dims} spatial axes)"
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != self.spatial_dims + 2:
            found = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"{type(self).__name__}: expected an input of shape {expected}, found {found}")
        if inputs.shape[1] != self.input_channels:
            raise ValueError(
                f"{type(self).__name__}: expected {self.input_channels} input channel(s) {expected}, found shape "
                f"{tuple(inputs.shape)}"
            )
        if not bool(torch.isfinite(inputs).all()):
            raise ValueError(f"{type(self).__name__}: the input holds NaN/inf values")

    def generators(self, count: int, device: torch.device) -> list[torch.Generator]:
        """One generator per batch row, row ``k`` seeded with ``seed + k``."""
        return [torch.Generator(device=device).manual_seed(self.seed + row) for row in range(count)]

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """The finished sample for ``inputs`` (B, ``input_channels``, *spatial): (B, C_out, *spatial).

        Raises:
            ValueError: a wrong input shape, channel count or NaN/inf values.
        """
        self.check_inputs(inputs)
        if isinstance(inputs, MetaTensor):  # its meta data plays no part in sampling
            inputs = inputs.as_tensor()
        inputs = inputs.float()
        self.scheduler.set_timesteps(self.num_inference_steps, device=inputs.device)
        return self.generate(inputs, network, self.generators(inputs.shape[0], inputs.device))

    @abstractmethod
    def generate(
        self, inputs: torch.Tensor, network: Callable[..., Any], generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        """Sample for the checked ``inputs`` with the scheduler's timesteps set, one generator per batch row."""
        raise NotImplementedError


class MaskConditionedSynthesisInferer(WholeChainInferer):
    """A one-hot label map in, a generated image out (Med-DDPM): the whole reverse process in one call.

    Args:
        diffusion_inferer: the concat-conditioned sampling loop
            (:class:`common.inferers.ConditionalDiffusionInferer`, mode ``concat``).
        scheduler, num_inference_steps, spatial_dims, seed, verbose: see :class:`WholeChainInferer`.
        condition_channels: one-hot channels of the input (the bundle's ``condition_labels``).
        image_channels: channels of the generated image (one per modality).
    """

    def __init__(
        self,
        diffusion_inferer: ConditionalDiffusionInferer,
        scheduler: Scheduler,
        num_inference_steps: int,
        condition_channels: int,
        image_channels: int,
        spatial_dims: int = 3,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        super().__init__(scheduler, num_inference_steps, condition_channels, spatial_dims, seed, verbose)
        if getattr(diffusion_inferer, "mode", None) != "concat":
            raise ValueError(
                "diffusion_inferer: expected a ConditionalDiffusionInferer with mode 'concat', found "
                f"{type(diffusion_inferer).__name__} mode {getattr(diffusion_inferer, 'mode', None)!r}"
            )
        self.diffusion_inferer = diffusion_inferer
        self.image_channels = int(image_channels)

    def generate(
        self, inputs: torch.Tensor, network: Callable[..., Any], generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        shape = (inputs.shape[0], self.image_channels, *inputs.shape[2:])
        noise = per_sample_noise(shape, generators, inputs.device)
        return self.diffusion_inferer.sample(
            noise, network, self.scheduler, conditioning=inputs, generator=list(generators), verbose=self.verbose
        )
