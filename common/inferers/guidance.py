"""Multi-condition ILVR guidance (Krishna et al. 2024, paper 003; Choi et al. 2021, ILVR) for any MONAI-style sampler.

An unconditional denoiser is steered at sampling time by M references. After each sampler step from the kept timestep
``t`` to the next kept timestep ``t'`` (``t' = t - 1`` for the full ancestral sampler), each condition ``s`` with
``t >= a_s`` pulls the low frequencies of the sample towards those of its reference noised to ``t'``:

- Eq. 3 (ILVR): ``x_{t'} <- x_{t'} + phi_N(y_{t'}) - phi_N(x_{t'})``;
- Eq. 4 (several conditions): ``x_{t'} <- x_{t'} + sum_s [t >= a_s] (phi_{N_s}(y_{s,t'}) - phi_{N_s}(x_{t'}))``;
- Eq. 5 (a weighted pathology patch): the term of ``s`` multiplied by its weight map ``W_s``.

``y_{s,t'} = sqrt(abar_{t'}) y_s + sqrt(1 - abar_{t'}) eps`` with fresh noise ``eps`` at every step (the scheduler's
own ``add_noise``, i.e. the training forward process); after the last step (to the clean data) the reference is used
as it is. ``a_s`` is in training-timestep units, so a respaced or fast sampler (fewer kept timesteps) guides over the
same part of the schedule as the full one.

Where two weight maps overlap (the whole-image anatomy condition and a pathology patch), the literal sum of Eq. 4
corrects the shared low frequencies twice. ``combine="sequential"`` applies the conditions one after the other, each
on the sample the previous one corrected (with the area filter and unit weights, the last condition's low
frequencies then hold exactly inside its support).

``LowPassFilter`` is ``phi_N``: ``"area"`` (mean over N x N blocks, then nearest upsampling) is an exact linear
projection (``phi(phi(x)) = phi(x)``), so one correction makes ``phi_N(x) == phi_N(y_t)`` exactly; ``"bicubic"``
(antialiased bicubic down- and upsampling, as ILVR's public resizer) is smoother but only approximately a projection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler
from monai.utils import StrEnum
from tqdm import tqdm

from common.inferers.per_sample import PerSampleScheduler, per_sample_noise

__all__ = [
    "LowPassMode",
    "GuidanceCombine",
    "LowPassFilter",
    "GuidanceCondition",
    "MultiConditionGuidance",
    "GuidedDiffusionInferer",
    "gaussian_patch_weight",
]


class LowPassMode(StrEnum):
    """How ``phi_N`` down- and upsamples: ``area`` (block mean + nearest, exact projection) or ``bicubic``
    (antialiased bicubic both ways, 2D only)."""

    AREA = "area"
    BICUBIC = "bicubic"


class GuidanceCombine(StrEnum):
    """How several conditions combine: ``sum`` (Eq. 4 literally, all terms from the same sample) or ``sequential``
    (one condition after the other, each on the corrected sample)."""

    SUM = "sum"
    SEQUENTIAL = "sequential"


def _choice(value: str, allowed: type[StrEnum], config_key: str) -> str:
    if value not in [m.value for m in allowed]:
        raise ValueError(f"config key '{config_key}': expected one of {[m.value for m in allowed]}, got {value!r}")
    return str(value)


class LowPassFilter:
    """``phi_N(x) = up_N(down_N(x))``: the low-pass filter of ILVR with downsampling factor ``N``.

    Args:
        factor: N >= 1; every spatial size of the filtered tensors must be a multiple of it (N = 1 is the identity).
        mode: a ``LowPassMode``: "area" (default) or "bicubic" (2D inputs only).
        config_key: the config key named in errors about ``factor``.

    Raises:
        ValueError: ``factor`` < 1 or not an integer; unknown ``mode``.
    """

    def __init__(self, factor: int, mode: str = LowPassMode.AREA, config_key: str = "factor") -> None:
        if isinstance(factor, bool) or int(factor) != factor or int(factor) < 1:
            raise ValueError(f"config key '{config_key}': expected an integer downsampling factor >= 1, got {factor!r}")
        self.factor = int(factor)
        self.mode = _choice(mode, LowPassMode, f"{config_key} mode")
        self.config_key = config_key

    def check_shape(self, spatial_shape: Sequence[int]) -> None:
        """ValueError naming the config key unless every size in ``spatial_shape`` is a multiple of the factor."""
        if any(int(size) % self.factor for size in spatial_shape):
            raise ValueError(
                f"config key '{self.config_key}': the factor {self.factor} must divide the image size "
                f"{tuple(int(s) for s in spatial_shape)}"
            )
        if self.mode == LowPassMode.BICUBIC and len(spatial_shape) != 2:
            raise ValueError(f"config key '{self.config_key}': bicubic low-pass needs 2D images, got {spatial_shape}")

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, C, *spatial / N)."""
        if self.mode == LowPassMode.AREA:
            pool = F.avg_pool2d if x.dim() == 4 else F.avg_pool3d
            return pool(x, self.factor)
        return F.interpolate(x, scale_factor=1.0 / self.factor, mode="bicubic", antialias=True, align_corners=False)

    def up(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial / N) -> (B, C, *spatial)."""
        size = [s * self.factor for s in x.shape[2:]]
        if self.mode == LowPassMode.AREA:
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``phi_N(x)`` of a (B, C, H, W) or (B, C, D, H, W) tensor, same shape."""
        if x.dim() not in (4, 5):
            raise ValueError(f"low-pass input must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}")
        self.check_shape(x.shape[2:])
        if self.factor == 1:
            return x
        return self.up(self.down(x))


def gaussian_patch_weight(
    spatial_shape: Sequence[int],
    patch_shape: Sequence[int],
    corner: Sequence[int],
    sigma_fraction: float = 0.25,
    peak: float = 1.0,
) -> torch.Tensor:
    """W of Eq. 5: zero outside the patch, a spherical Gaussian inside it centred on the patch centre.

    ``W(p) = peak * exp(-|p - c|^2 / (2 sigma^2))`` for pixels ``p`` inside the patch box, with ``c`` the box centre
    (``corner + (patch_shape - 1) / 2``) and ``sigma = sigma_fraction * min(patch_shape)``; 0 elsewhere. An odd patch
    size puts ``peak`` exactly on the centre pixel.

    Args:
        spatial_shape: image size (H, W) or (D, H, W).
        patch_shape: patch size, same length; the box must lie inside the image.
        corner: index of the patch's first pixel in the image.
        sigma_fraction: sigma as a share of the smallest patch side (> 0). Default 0.25 (a project choice: the paper
            says only "a variance based on the size of the patch").
        peak: the weight at the centre (> 0; 1 is Eq. 5 as written).

    Returns:
        float32 tensor (1, *spatial_shape).

    Raises:
        ValueError: mismatched lengths, a box outside the image, ``sigma_fraction`` or ``peak`` <= 0.
    """
    spatial_shape, patch_shape, corner = (tuple(int(v) for v in s) for s in (spatial_shape, patch_shape, corner))
    if not len(spatial_shape) == len(patch_shape) == len(corner):
        raise ValueError(f"image {spatial_shape}, patch {patch_shape} and corner {corner} need the same dimensions")
    if any(c < 0 or c + p > s for s, p, c in zip(spatial_shape, patch_shape, corner)) or min(patch_shape) < 1:
        raise ValueError(
            f"config key 'patch_size': a patch of size {patch_shape} at {corner} does not fit the image {spatial_shape}"
        )
    if not sigma_fraction > 0 or not peak > 0:
        raise ValueError(
            f"config keys 'patch_sigma_fraction' / 'pathology_weight': expected values > 0, got {sigma_fraction} and "
            f"{peak}"
        )
    sigma = float(sigma_fraction) * min(patch_shape)
    dims = len(patch_shape)
    axes = [
        (torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0).reshape([-1 if k == i else 1 for k in range(dims)])
        for i, size in enumerate(patch_shape)
    ]
    squared = sum(a**2 for a in axes)
    inside = float(peak) * torch.exp(-squared / (2.0 * sigma**2))
    weight = torch.zeros(spatial_shape, dtype=torch.float64)
    weight[tuple(slice(c, c + p) for c, p in zip(corner, patch_shape))] = inside
    return weight.float()[None]


@dataclass
class GuidanceCondition:
    """One condition ``s`` of Eq. 4: a reference, its low-pass factor ``N_s``, stop timestep ``a_s`` and weight map.

    Attributes:
        name: the condition's name; errors name its config keys ``<name>_factor``, ``<name>_stop``, ``<name>_weight``
            and ``<name>_reference``.
        reference: ``y_s``, (1 or B, C, *spatial), in the model's intensity units (e.g. [-1, 1]).
        factor: ``N_s``.
        stop_timestep: ``a_s`` in training timesteps: the condition acts on steps from a kept timestep ``t >= a_s``.
        weight: ``W_s``, (1 or B, 1, *spatial) or None (1 everywhere: Eq. 3/4).
        mode: the filter's ``LowPassMode``.
    """

    name: str
    reference: torch.Tensor
    factor: int
    stop_timestep: int
    weight: torch.Tensor | None = None
    mode: str = LowPassMode.AREA

    def __post_init__(self) -> None:
        self.filter = LowPassFilter(self.factor, self.mode, config_key=f"{self.name}_factor")

    def check(self, sample_shape: Sequence[int], num_train_timesteps: int) -> None:
        """ValueError naming the config key for a reference that does not fit ``sample_shape`` (B, C, *spatial),
        a non-finite reference, a factor not dividing the size, ``a_s`` outside [0, T) or a bad weight map."""
        shape = tuple(int(s) for s in sample_shape)
        ref = self.reference
        if ref.dim() != len(shape) or tuple(ref.shape[1:]) != shape[1:] or ref.shape[0] not in (1, shape[0]):
            raise ValueError(
                f"config key '{self.name}_reference': expected a reference of shape (1 or {shape[0]}, {shape[1]}, "
                f"{', '.join(map(str, shape[2:]))}) (the model grid), got {tuple(ref.shape)}"
            )
        if not bool(torch.isfinite(ref).all()):
            bad = int((~torch.isfinite(ref)).sum())
            raise ValueError(f"config key '{self.name}_reference': the reference holds {bad} NaN/inf value(s)")
        self.filter.check_shape(shape[2:])
        if isinstance(self.stop_timestep, bool) or not 0 <= int(self.stop_timestep) < int(num_train_timesteps):
            raise ValueError(
                f"config key '{self.name}_stop': a_s must be a training timestep in [0, {int(num_train_timesteps)}), "
                f"got {self.stop_timestep!r}"
            )
        if self.weight is not None:
            w = self.weight
            fits = w.dim() == len(shape) and w.shape[1] == 1 and tuple(w.shape[2:]) == shape[2:]
            if not fits or w.shape[0] not in (1, shape[0]):
                raise ValueError(
                    f"config key '{self.name}_weight': expected a weight map of shape (1 or {shape[0]}, 1, "
                    f"{', '.join(map(str, shape[2:]))}), got {tuple(w.shape)}"
                )
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
                raise ValueError(f"config key '{self.name}_weight': weights must be finite and >= 0")

    def active(self, timestep: int) -> bool:
        """Whether the step from kept timestep ``timestep`` is guided by this condition (``t >= a_s``)."""
        return int(timestep) >= int(self.stop_timestep)

    def term(self, sample: torch.Tensor, noisy_reference: torch.Tensor) -> torch.Tensor:
        """``W_s * (phi(y_{s,t'}) - phi(x_{t'}))``, the shape of ``sample``."""
        difference = self.filter(noisy_reference) - self.filter(sample)
        return difference if self.weight is None else difference * self.weight.to(sample)


NoiseSource = Callable[[torch.Size], torch.Tensor]
"""``shape -> standard normal tensor``: where the reference noise of a step comes from."""


class MultiConditionGuidance:
    """The correction of Eq. 4/5 applied after a sampler step (see the module docstring).

    Args:
        conditions: the conditions, in order (the order matters for ``sequential``).
        scheduler: the scheduler whose ``add_noise`` noises the references (the training forward process; any
            MONAI scheduler or the project's respaced samplers, which keep the training tables).
        combine: a ``GuidanceCombine``: "sum" (Eq. 4 literally) or "sequential".

    Raises:
        ValueError: unknown ``combine``; condition names not unique.
    """

    def __init__(
        self, conditions: Sequence[GuidanceCondition], scheduler: Scheduler, combine: str = GuidanceCombine.SUM
    ) -> None:
        names = [c.name for c in conditions]
        if len(set(names)) != len(names):
            raise ValueError(f"guidance condition names must be unique, got {names}")
        self.conditions = list(conditions)
        self.scheduler = scheduler
        self.combine = _choice(combine, GuidanceCombine, "guidance_combine")

    def check(self, sample_shape: Sequence[int]) -> None:
        """Check every condition against the sample shape and the scheduler's T (errors name the config key)."""
        for condition in self.conditions:
            condition.check(sample_shape, self.scheduler.num_train_timesteps)

    def noised(self, reference: torch.Tensor, timestep: int | None, noise: NoiseSource, batch: int) -> torch.Tensor:
        """``y_{t'}``: the reference (expanded to ``batch``) noised to training timestep ``timestep`` with fresh noise;
        the reference itself when ``timestep`` is None (the step to the clean data)."""
        reference = reference.expand(batch, *reference.shape[1:])
        if timestep is None:
            return reference
        eps = noise(reference.shape).to(reference)
        t = torch.full((batch,), int(timestep), device=reference.device, dtype=torch.long)
        return self.scheduler.add_noise(reference, eps, t)

    def __call__(
        self, sample: torch.Tensor, timestep: int, next_timestep: int | None, noise: NoiseSource
    ) -> torch.Tensor:
        """The guided ``x_{t'}`` after the sampler step from kept timestep ``timestep`` to ``next_timestep``.

        Args:
            sample: ``x_{t'}`` from the sampler step, (B, C, *spatial).
            timestep: ``t``, the kept timestep the step started from (decides ``t >= a_s``).
            next_timestep: ``t'``, the kept timestep the step went to, or None for the clean data.
            noise: source of the fresh reference noise (one draw per active condition and step).
        """
        active = [c for c in self.conditions if c.active(timestep)]
        if not active:
            return sample
        references = [self.noised(c.reference.to(sample), next_timestep, noise, sample.shape[0]) for c in active]
        if self.combine == GuidanceCombine.SUM:
            return sample + sum(c.term(sample, y) for c, y in zip(active, references))
        for condition, reference in zip(active, references):
            sample = sample + condition.term(sample, reference)
        return sample


def _next_timesteps(timesteps: torch.Tensor) -> list[int | None]:
    following = [int(t) for t in timesteps[1:]]
    return [*following, None]


class GuidedDiffusionInferer(DiffusionInferer):
    """``DiffusionInferer`` for an unconditional denoiser whose sampling loop applies a ``MultiConditionGuidance``
    after every scheduler step; seeded per sample (one ``torch.Generator`` per batch row).

    Training uses MONAI's ``DiffusionInferer.__call__`` unchanged (no condition).
    """

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self,
        input_noise: torch.Tensor,
        diffusion_model: Callable[..., torch.Tensor],
        scheduler: Scheduler | None = None,
        guidance: MultiConditionGuidance | None = None,
        generator: Sequence[torch.Generator] | None = None,
        verbose: bool = False,
    ) -> torch.Tensor:
        """Reverse process from ``input_noise`` over ``scheduler.timesteps`` with guidance after each step.

        Args:
            input_noise: (B, C, *spatial) start noise.
            diffusion_model: the unconditional denoiser ``model(x, timesteps=t)``.
            scheduler: sampling scheduler with ``timesteps`` set (MONAI's DDPM/DDIM, the project's respaced DDPM,
                DDIM or DPM-Solver); default the inferer's.
            guidance: the conditions; None samples unguided.
            generator: one generator per batch row: the step noise and the reference noise of row k come from
                ``generator[k]`` (a row's sample does not depend on the batch); None uses the global generator.
            verbose: progress bar.

        Returns:
            (B, C, *spatial) sample.
        """
        scheduler = scheduler or self.scheduler
        if guidance is not None:
            guidance.check(input_noise.shape)
        step_scheduler, step_generator = scheduler, None
        if generator is not None:
            step_scheduler = PerSampleScheduler(scheduler, generator)

            def noise(shape: torch.Size) -> torch.Tensor:
                return per_sample_noise(shape, generator, input_noise.device)

        else:

            def noise(shape: torch.Size) -> torch.Tensor:
                return torch.randn(shape, device=input_noise.device)

        image = input_noise
        timesteps = scheduler.timesteps
        for t, following in tqdm(
            list(zip(timesteps, _next_timesteps(timesteps))), disable=not verbose, desc="sampling", leave=False
        ):
            steps = torch.full((image.shape[0],), int(t), device=image.device, dtype=torch.long)
            model_output = diffusion_model(image, timesteps=steps)
            image, _ = step_scheduler.step(model_output, t, image, generator=step_generator)
            if guidance is not None:
                image = guidance(image, int(t), following, noise)
        return image
