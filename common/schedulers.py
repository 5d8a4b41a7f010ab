"""Respaced and fast samplers for epsilon/x0/v-trained diffusion models, on top of MONAI's noise schedules.

MONAI 1.6.1's ``DDPMScheduler`` keeps the single-step ``beta_t`` and ``alpha_bar_{t-1}`` when ``set_timesteps(n < T)``
skips steps, and its ``DDIMScheduler`` keeps the unclipped noise estimate after clipping x0, which breaks
deterministic sampling on the cosine schedule (``alpha_bar`` near 0 at the first step). The samplers here subclass
``monai.networks.schedulers.Scheduler`` (so every registered ``NoiseSchedules`` entry works: "linear_beta",
"scaled_linear_beta", "sigmoid_beta", "cosine", ...) and keep MONAI's sampling interface (``timesteps``,
``set_timesteps(n)``, ``step(model_output, timestep, sample, generator) -> (prev_sample, pred_original_sample)``),
so ``monai.inferers.DiffusionInferer.sample`` drives them unchanged.

===============================  ==============================================================================
sampler                          use it when
===============================  ==============================================================================
``RespacedDDPMScheduler``        the reference: ancestral sampling; n = T reproduces MONAI's ``DDPMScheduler``,
                                 n < T is improved-DDPM respacing (e.g. T = 4000 sampled with 500 steps); its
                                 respaced tables serve learned-variance models. Stochastic; the most steps.
``DDIMClippedScheduler``         a deterministic map from noise to sample (fixed seeds, interpolation, noise
                                 seeding) with fewer steps than DDPM; ``eta`` > 0 adds DDPM-like noise
                                 (``eta = 1`` is ``RespacedDDPMScheduler`` with "fixed_small").
``DPMSolverMultistepScheduler``  the fewest steps for a deterministic sample (the paper: 10-25 steps);
                                 ``solver_order=1`` is ``DDIMClippedScheduler(eta=0)``.
``LearnedRangeScheduler``        ancestral sampling of a learned-variance model (2C-channel output: noise, then
                                 the variance interpolation value v; Nichol & Dhariwal 2021, MT-DDPM Eq. 16).
===============================  ==============================================================================

Every sampler takes ``learned_variance=True`` for a model with a 2C-channel output: it then uses the first C
channels (the noise / x0 / v prediction) and ignores the variance channels (``LearnedRangeScheduler`` uses them).

The registered noise schedule ``"t_scaled_linear_beta"`` is improved-diffusion's linear schedule for any T: the
linear betas of DDPM (``1e-4`` to ``0.02`` at T = 1000) multiplied by ``1000 / T``, so that T = 4000 (MT-DDPM) gives
about the same ``alpha_bar`` curve as DDPM's T = 1000.

Step counts for a given quality depend on the model and data: compare a fast sampler's samples with
``RespacedDDPMScheduler`` at n = T before relying on it.

Timestep spacing (every sampler, ``timestep_spacing``): for T training steps and n sampling steps (1 <= n <= T) the
kept timesteps are, for ``i = 0, ..., n - 1`` (``[T - 1]`` when n = 1), descending and unique from ``T - 1`` down to
``0``:

- ``"even"`` (default; improved-DDPM respacing): ``t_i = floor((T - 1) * (n - 1 - i) / (n - 1) + 1/2)``, evenly spaced,
  computed in exact integer arithmetic (ties round up);
- ``"quadratic"`` (the quadratic selection of DDIM, Song et al. 2021, Sec. 5 / App. D.2, here spanning all of
  ``[0, T - 1]``): ``t_i = round((T - 1) * ((n - 1 - i) / (n - 1))^2)``, then raised where needed so that every
  ``t_i`` is at least ``t_{i+1} + 1``: dense steps near the data, where a few-step sampler otherwise ends on one
  long jump (e.g. T = 4000, n = 50: the last kept steps are 27, 15, 7, 2, 0 instead of 245, 163, 82, 0).

The step at ``t_i`` moves to ``t_{i+1}``; the step at the last kept timestep moves to the clean data
(``alpha_bar = 1``) and returns the x0 estimate.

The ``alpha_bar`` table is recomputed in float64 as ``cumprod(1 - betas)`` from the schedule's betas; every
coefficient is computed from it in float64 and applied as a Python float, so the sample's dtype and device decide the
arithmetic of ``step``.

References: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM); Nichol & Dhariwal 2021, "Improved
Denoising Diffusion Probabilistic Models" (respacing); Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM);
Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from monai.networks.schedulers import DDPMScheduler, NoiseSchedules, Scheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType
from monai.utils import StrEnum

__all__ = [
    "check_sampler_steps",
    "FixedVarianceType",
    "SchedulerStepOutput",
    "respaced_timesteps",
    "TimestepSpacing",
    "RespacedSampler",
    "RespacedDDPMScheduler",
    "DDIMClippedScheduler",
    "DPMSolverMultistepScheduler",
    "PosteriorTables",
    "posterior_tables",
    "LearnedRangeScheduler",
    "learned_range_log_variance",
    "t_scaled_linear_beta",
    "predict_original",
]


@NoiseSchedules.add_def("t_scaled_linear_beta", "Linear betas scaled by 1000 / T (improved DDPM, any T)")
def t_scaled_linear_beta(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """Linear betas from ``beta_start * 1000 / T`` to ``beta_end * 1000 / T`` (float32, shape (T,)).

    Nichol & Dhariwal 2021 (improved-diffusion's "linear" schedule) scale DDPM's T = 1000 betas by ``1000 / T`` so the
    schedule keeps its shape at another T: MT-DDPM's T = 4000 gives betas from 2.5e-5 to 5e-3.

    Raises:
        ValueError: ``num_train_timesteps`` < 1, or the scaled betas are not in (0, 1).
    """
    if num_train_timesteps < 1:
        raise ValueError(f"`num_train_timesteps` must be >= 1, got {num_train_timesteps}.")
    scale = 1000.0 / num_train_timesteps
    low, high = scale * beta_start, scale * beta_end
    if not (0.0 < low < 1.0 and 0.0 < high < 1.0):
        raise ValueError(
            f"`beta_start`, `beta_end` scaled by 1000 / T = {scale:g} must be in (0, 1), got {low:g} and {high:g} "
            f"(beta_start={beta_start}, beta_end={beta_end}, num_train_timesteps={num_train_timesteps})."
        )
    return torch.linspace(low, high, num_train_timesteps, dtype=torch.float64).float()


class FixedVarianceType(StrEnum):
    """Reverse-step variance of ``RespacedDDPMScheduler`` (Ho et al. 2020, section 3.2).

    fixed_small: the posterior variance ``beta_tilde = beta' * (1 - alpha_bar_prev) / (1 - alpha_bar)``.
    fixed_large: the (respaced) forward variance ``beta'``.
    """

    FIXED_SMALL = "fixed_small"
    FIXED_LARGE = "fixed_large"


class SchedulerStepOutput(NamedTuple):
    """Result of one sampler step; unpacks like MONAI's ``(prev_sample, pred_original_sample)`` tuple.

    prev_sample: the sample at the next (less noisy) kept timestep, shape of the input sample.
    pred_original_sample: the (clipped) x0 estimate the step used, same shape.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _check_choice(name: str, value: str, allowed: type[StrEnum]) -> None:
    """Raise a ValueError naming ``name``, ``value`` and the allowed values unless ``value`` is allowed."""
    choices = tuple(str(member) for member in allowed)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


class TimestepSpacing(StrEnum):
    """How ``set_timesteps(n)`` picks its n timesteps among the T training steps (module docstring)."""

    EVEN = "even"
    QUADRATIC = "quadratic"


def respaced_timesteps(
    num_train_timesteps: int, num_inference_steps: int, spacing: str = TimestepSpacing.EVEN
) -> torch.Tensor:
    """Descending timesteps from ``T - 1`` down to ``0`` with the given spacing (the module docstring gives the rules).

    Args:
        num_train_timesteps: T, the number of training timesteps.
        num_inference_steps: n, the number of kept timesteps, 1 <= n <= T.
        spacing: a ``TimestepSpacing``, "even" (default) or "quadratic".

    Returns:
        LongTensor of shape (n,), strictly decreasing, first ``T - 1``, last ``0`` (``[T - 1]`` for n = 1).

    Raises:
        ValueError: n outside [1, T], or an unknown ``spacing`` (named as the config key ``timestep_spacing``).
    """
    _check_choice("timestep_spacing", spacing, TimestepSpacing)
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"`num_inference_steps` must be in [1, num_train_timesteps={num_train_timesteps}], "
            f"got {num_inference_steps}."
        )
    if num_inference_steps == 1:
        return torch.tensor([num_train_timesteps - 1], dtype=torch.long)
    intervals = num_inference_steps - 1
    remaining = torch.arange(intervals, -1, -1, dtype=torch.long)
    if spacing == TimestepSpacing.EVEN:
        return (2 * (num_train_timesteps - 1) * remaining + intervals) // (2 * intervals)
    fraction = remaining.to(torch.float64) / intervals
    timesteps = torch.round((num_train_timesteps - 1) * fraction**2).long()
    for i in range(intervals - 1, -1, -1):  # from the data end: keep every kept step above the next one
        timesteps[i] = max(int(timesteps[i]), int(timesteps[i + 1]) + 1)
    return timesteps


class RespacedSampler(Scheduler):
    """Base of the samplers here: kept timesteps, the float64 ``alpha_bar`` table and the clipped x0 estimate.

    Subclasses implement ``step``. ``add_noise`` and ``get_velocity`` are MONAI's (its float32 tables, as in
    training). After ``set_timesteps(n)`` (called with n = T at construction):

    - ``timesteps``: LongTensor (n,), the kept training timesteps, descending (see ``respaced_timesteps``).
    - ``respaced_alphas_cumprod``: float64 (n,), ``alpha_bar(t_i)``.
    - ``respaced_alphas_cumprod_prev``: float64 (n,), ``alpha_bar(t_{i+1})``, and 1 for the last kept step.

    Args:
        num_train_timesteps: T, number of diffusion steps the model was trained with. Default 1000.
        schedule: name of a ``monai.networks.schedulers.NoiseSchedules`` entry. Default "linear_beta".
        prediction_type: what the model predicts, a ``DDPMPredictionType``: "epsilon" (the noise), "sample" (x0)
            or "v_prediction" (``v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x0``). Default "epsilon".
        clip_sample: clip the x0 estimate to ``[clip_sample_min, clip_sample_max]``. Default True.
        clip_sample_min: lower clipping bound. Default -1.
        clip_sample_max: upper clipping bound, greater than ``clip_sample_min``. Default 1.
        learned_variance: the model output has 2C channels (the prediction, then C variance channels); ``step`` uses
            the first C. Default False (C channels).
        timestep_spacing: a ``TimestepSpacing``, how ``set_timesteps(n)`` picks its timesteps: "even" (default)
            or "quadratic" (module docstring).
        schedule_args: keyword arguments of the schedule function (e.g. ``beta_start``, ``beta_end``, ``s``).

    Raises:
        ValueError: unknown ``prediction_type`` or ``timestep_spacing``; ``clip_sample_min >= clip_sample_max`` while
            clipping; a schedule whose betas are not all in (0, 1), i.e. whose ``alpha_bar`` is not strictly
            decreasing in (0, 1).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        prediction_type: str = DDPMPredictionType.EPSILON,
        clip_sample: bool = True,
        clip_sample_min: float = -1.0,
        clip_sample_max: float = 1.0,
        learned_variance: bool = False,
        timestep_spacing: str = TimestepSpacing.EVEN,
        **schedule_args,
    ) -> None:
        super().__init__(num_train_timesteps, schedule, **schedule_args)
        self.learned_variance = bool(learned_variance)
        _check_choice("timestep_spacing", timestep_spacing, TimestepSpacing)
        self.timestep_spacing = str(timestep_spacing)
        _check_choice("prediction_type", prediction_type, DDPMPredictionType)
        if clip_sample and clip_sample_min >= clip_sample_max:
            raise ValueError(
                f"`clip_sample_min` must be smaller than `clip_sample_max`, got {clip_sample_min} >= {clip_sample_max}."
            )
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.clip_sample_values = (clip_sample_min, clip_sample_max)
        self.train_alphas_cumprod = torch.cumprod(1.0 - self.betas.to(torch.float64), dim=0)
        _check_alphas_cumprod(schedule, self.train_alphas_cumprod)
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Keep ``num_inference_steps`` timesteps (``timestep_spacing``) and recompute the respaced tables.

        Args:
            num_inference_steps: n, 1 <= n <= ``num_train_timesteps``.
            device: device of ``timesteps``; the float64 tables stay on the CPU.
        """
        timesteps = respaced_timesteps(self.num_train_timesteps, num_inference_steps, self.timestep_spacing)
        self.num_inference_steps = num_inference_steps
        self.timesteps = timesteps.to(device)
        self.respaced_alphas_cumprod = self.train_alphas_cumprod[timesteps]
        self.respaced_alphas_cumprod_prev = torch.cat(
            [self.respaced_alphas_cumprod[1:], torch.ones(1, dtype=torch.float64)]
        )
        self._step_indices = {timestep: index for index, timestep in enumerate(timesteps.tolist())}

    def step_index(self, timestep: int | torch.Tensor) -> int:
        """Position of ``timestep`` in ``timesteps``; ValueError if it is not a kept timestep."""
        index = self._step_indices.get(int(timestep))
        if index is None:
            raise ValueError(
                f"`timestep` must be one of this scheduler's timesteps (set_timesteps({self.num_inference_steps})), "
                f"got {int(timestep)}."
            )
        return index

    def prediction_channels(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The first C channels of a learned-variance model's 2C-channel output; ``model_output`` otherwise.

        Raises:
            ValueError: ``learned_variance`` and ``model_output`` does not have 2C channels for a C-channel sample.
        """
        if not self.learned_variance:
            return model_output
        channels = sample.shape[1]
        if model_output.dim() != sample.dim() or model_output.shape[1] != 2 * channels:
            raise ValueError(
                f"a learned-variance scheduler needs a model output of 2 x {channels} channels (prediction, then "
                f"variance values; network out_channels = 2 * image channels), got shape {tuple(model_output.shape)} "
                f"for a sample of shape {tuple(sample.shape)}."
            )
        return model_output[:, :channels]

    def predict_original_sample(
        self, model_output: torch.Tensor, sample: torch.Tensor, alpha_cumprod: float
    ) -> torch.Tensor:
        """The x0 estimate from the model output at ``alpha_bar = alpha_cumprod``, clipped if ``clip_sample``.

        Args:
            model_output: the network output, shape of ``sample`` (2C channels with ``learned_variance``).
            sample: x_t, shape (B, C, *spatial).
            alpha_cumprod: ``alpha_bar`` of the sample's timestep.

        Returns:
            x0 estimate, shape of ``sample``.
        """
        model_output = self.prediction_channels(model_output, sample)
        if model_output.shape != sample.shape:
            raise ValueError(
                f"`model_output` must have the shape of `sample` {tuple(sample.shape)}, got {tuple(model_output.shape)}"
                " (split a learned-variance output before calling step)."
            )
        alpha, sigma = math.sqrt(alpha_cumprod), math.sqrt(1.0 - alpha_cumprod)
        if self.prediction_type == DDPMPredictionType.EPSILON:
            original = (sample - sigma * model_output) / alpha
        elif self.prediction_type == DDPMPredictionType.SAMPLE:
            original = model_output
        else:
            original = alpha * sample - sigma * model_output
        if self.clip_sample:
            original = original.clamp(*self.clip_sample_values)
        return original

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> SchedulerStepOutput:
        """One sampling step from the kept timestep ``t_i`` to ``t_{i+1}`` (MONAI's ``Scheduler.step`` interface).

        Args:
            model_output: network output at ``timestep``, shape (B, C, *spatial).
            timestep: the current kept timestep ``t_i`` (int or 0-d tensor, e.g. an element of ``timesteps``).
            sample: ``x_{t_i}``, shape (B, C, *spatial).
            generator: source of the step's noise for the stochastic samplers; no noise is drawn on the last step.

        Returns:
            ``(x_{t_{i+1}}, x0 estimate)``; on the last step (to the clean data) both are the x0 estimate.
        """
        index = self.step_index(timestep)
        original = self.predict_original_sample(model_output, sample, self.respaced_alphas_cumprod[index].item())
        if index == len(self.respaced_alphas_cumprod) - 1:
            return SchedulerStepOutput(original, original)
        return SchedulerStepOutput(self._next_sample(index, original, sample, generator), original)

    def _next_sample(
        self, index: int, original: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``x_{t_{index+1}}`` from ``x_{t_index}`` and its clipped x0 estimate (not called on the last step)."""
        raise NotImplementedError

    def _alphas_cumprod_at(self, index: int) -> tuple[float, float]:
        """``(alpha_bar(t_index), alpha_bar(t_{index+1}))`` as Python floats."""
        return self.respaced_alphas_cumprod[index].item(), self.respaced_alphas_cumprod_prev[index].item()


def _check_alphas_cumprod(schedule: str, alphas_cumprod: torch.Tensor) -> None:
    """Require ``alpha_bar`` strictly decreasing in (0, 1), so that every alpha, sigma and log-SNR is finite."""
    inside = bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all())
    if not inside or not bool((alphas_cumprod.diff() < 0).all()):
        raise ValueError(
            f"`schedule` {schedule!r} must give betas in (0, 1) (alpha_bar strictly decreasing in (0, 1)), got "
            f"alpha_bar from {alphas_cumprod[0].item():.3g} to {alphas_cumprod[-1].item():.3g}."
        )


def _standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise with the shape, dtype, layout and device of ``like`` (draws as MONAI's DDPM step)."""
    return torch.randn(like.size(), dtype=like.dtype, layout=like.layout, generator=generator, device=like.device)


class PosteriorTables(NamedTuple):
    """Forward and posterior tables of a (respaced) chain, float64, one entry per step ``t_i -> t_{i+1}``.

    betas: ``beta'_i = 1 - alpha_bar_i / alpha_bar_prev_i``.
    posterior_variance: ``beta_tilde_i = beta'_i (1 - alpha_bar_prev_i) / (1 - alpha_bar_i)`` (0 into the data).
    posterior_log_variance_clipped: ``log beta_tilde``, where ``beta_tilde`` is 0 (the step into the data) the
        value of the step before it in the table (improved-diffusion's clipping; MT-DDPM Eq. 16's second term).
    log_betas: ``log beta'`` (Eq. 16's first term).
    mean_coef_original, mean_coef_sample: the posterior mean is ``mean_coef_original * x0 + mean_coef_sample * x_t``.
    """

    betas: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    log_betas: torch.Tensor
    mean_coef_original: torch.Tensor
    mean_coef_sample: torch.Tensor


def posterior_tables(alphas_cumprod: torch.Tensor, alphas_cumprod_prev: torch.Tensor) -> PosteriorTables:
    """The :class:`PosteriorTables` of the steps from ``alpha_bar`` to ``alpha_bar_prev`` (float64, shape (n,)).

    The tables are ordered as the inputs, descending in t (the step into the data last), as ``timesteps`` are. The
    clipped log posterior variance of the step into the data is that of the step just before it (the next to last
    entry); with a single step (n = 1) it is ``log beta'``.
    """
    alpha_bar, alpha_bar_prev = alphas_cumprod.double(), alphas_cumprod_prev.double()
    betas = 1.0 - alpha_bar / alpha_bar_prev
    posterior_variance = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    clipped = posterior_variance.clone()
    if len(clipped) > 1:
        clipped[-1] = clipped[-2]
    else:
        clipped[-1] = betas[-1]
    return PosteriorTables(
        betas=betas,
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=torch.log(clipped),
        log_betas=torch.log(betas),
        mean_coef_original=alpha_bar_prev.sqrt() * betas / (1.0 - alpha_bar),
        # sqrt(1 - beta') from the ratio itself: 1 - beta' cancels where alpha_bar is tiny (cosine, first step)
        mean_coef_sample=(alpha_bar / alpha_bar_prev).sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
    )


class RespacedDDPMScheduler(RespacedSampler):
    """Ancestral DDPM sampling on a respaced subset of the training timesteps (Ho et al. 2020; Nichol & Dhariwal 2021).

    The step from ``t_i`` to ``t_{i+1}`` uses the respaced forward variance ``beta'_i = 1 - alpha_bar(t_i) /
    alpha_bar(t_{i+1})`` and samples the posterior ``q(x_{t_{i+1}} | x_{t_i}, x0)`` at the clipped x0 estimate:
    mean ``c0_i * x0 + ct_i * x_t`` with ``c0_i = sqrt(alpha_bar_prev) * beta'_i / (1 - alpha_bar)`` and
    ``ct_i = sqrt(1 - beta'_i) * (1 - alpha_bar_prev) / (1 - alpha_bar)``, variance by ``variance_type``. With
    n = T, ``beta'`` is the schedule's beta and the step is MONAI's ``DDPMScheduler.step``.

    The last kept step (t = 0) returns the x0 estimate (the posterior mean there) and adds no noise under both
    variance types, so improved-diffusion's replacement of the first fixed_large variance by ``beta_tilde_1`` (which
    only matters for the likelihood at t = 0) does not change samples and is not applied; ``respaced_betas`` holds
    the raw ``beta'``.

    Respaced tables (float64, shape (n,), aligned with the descending ``timesteps``), for learned-variance models:
    ``respaced_betas`` (``beta'``), ``respaced_alphas_cumprod``, ``respaced_alphas_cumprod_prev``,
    ``respaced_posterior_variance`` (``beta_tilde``, 0 at the last step), ``respaced_posterior_mean_coef_original``
    (``c0``) and ``respaced_posterior_mean_coef_sample`` (``ct``). Ascending, ``cumprod(1 - beta')`` gives
    ``alpha_bar`` at the kept timesteps.

    Args:
        num_train_timesteps: T. Default 1000.
        schedule: ``NoiseSchedules`` name. Default "linear_beta".
        variance_type: a ``FixedVarianceType``, "fixed_small" or "fixed_large". Default "fixed_small". Learned
            variances need their own step (MONAI's "learned_range" interpolates variances, not log-variances).
        kwargs: ``prediction_type``, ``clip_sample``, ``clip_sample_min``, ``clip_sample_max`` and the schedule's
            arguments, see ``RespacedSampler``.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        variance_type: str = FixedVarianceType.FIXED_SMALL,
        **kwargs,
    ) -> None:
        _check_choice("variance_type", variance_type, FixedVarianceType)
        super().__init__(num_train_timesteps, schedule, **kwargs)
        self.variance_type = variance_type

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Keep ``num_inference_steps`` timesteps and recompute the respaced betas and posterior tables."""
        super().set_timesteps(num_inference_steps, device)
        tables = posterior_tables(self.respaced_alphas_cumprod, self.respaced_alphas_cumprod_prev)
        self.respaced_tables = tables
        self.respaced_betas = tables.betas
        self.respaced_posterior_variance = tables.posterior_variance
        self.respaced_posterior_mean_coef_original = tables.mean_coef_original
        self.respaced_posterior_mean_coef_sample = tables.mean_coef_sample

    def _next_sample(
        self, index: int, original: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """A draw from the respaced posterior ``q(x_{t_{i+1}} | x_{t_i}, x0)``."""
        mean = (
            self.respaced_posterior_mean_coef_original[index].item() * original
            + self.respaced_posterior_mean_coef_sample[index].item() * sample
        )
        if self.variance_type == FixedVarianceType.FIXED_SMALL:
            variance = self.respaced_posterior_variance[index].item()
        else:
            variance = self.respaced_betas[index].item()
        return mean + math.sqrt(variance) * _standard_normal(sample, generator)


class DDIMClippedScheduler(RespacedSampler):
    """DDIM sampling (Song et al. 2021, eq. 12) with the noise estimate made consistent with the clipped x0.

    Each step predicts x0, clips it, recomputes ``eps = (x_t - sqrt(alpha_bar) * x0) / sqrt(1 - alpha_bar)`` and sets
    ``x_prev = sqrt(alpha_bar_prev) * x0 + sqrt(1 - alpha_bar_prev - s^2) * eps + s * z`` with
    ``s = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))`` (eq. 16) and
    ``z ~ N(0, I)`` drawn only when ``s > 0``. The last step (``alpha_bar_prev = 1``) returns the x0 estimate.
    Without the recomputation, a clipped x0 and an unclipped eps disagree wherever ``alpha_bar`` is near 0, the
    failure of MONAI's ``DDIMScheduler`` on the cosine schedule.

    Args:
        num_train_timesteps: T. Default 1000.
        schedule: ``NoiseSchedules`` name. Default "linear_beta".
        eta: weight of the stochastic term, in [0, 1]; 0 is deterministic DDIM, 1 has the DDPM posterior variance.
            Default 0.
        kwargs: ``prediction_type``, ``clip_sample``, ``clip_sample_min``, ``clip_sample_max`` and the schedule's
            arguments, see ``RespacedSampler``.
    """

    def __init__(
        self, num_train_timesteps: int = 1000, schedule: str = "linear_beta", eta: float = 0.0, **kwargs
    ) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"`eta` must be in [0, 1], got {eta}.")
        super().__init__(num_train_timesteps, schedule, **kwargs)
        self.eta = eta

    def _next_sample(
        self, index: int, original: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The DDIM update with the noise estimate recomputed from the clipped x0."""
        alpha_bar, alpha_bar_prev = self._alphas_cumprod_at(index)
        noise = (sample - math.sqrt(alpha_bar) * original) / math.sqrt(1.0 - alpha_bar)
        std = self.eta * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))
        direction = math.sqrt(max(1.0 - alpha_bar_prev - std**2, 0.0))
        prev_sample = math.sqrt(alpha_bar_prev) * original + direction * noise
        if std > 0:
            prev_sample = prev_sample + std * _standard_normal(sample, generator)
        return prev_sample


class DPMSolverMultistepScheduler(RespacedSampler):
    """DPM-Solver++ (2M): multistep data-prediction solver of the diffusion ODE (Lu et al. 2022, algorithm 2).

    With ``alpha = sqrt(alpha_bar)``, ``sigma = sqrt(1 - alpha_bar)`` and the half log-SNR
    ``lambda = log(alpha / sigma)`` of the discrete schedule (``respaced_log_snr``, float64), the step from
    ``t_i`` to ``t_{i+1}`` with ``h = lambda_{i+1} - lambda_i`` is

    ``x_{i+1} = (sigma_{i+1} / sigma_i) * x_i - alpha_{i+1} * expm1(-h) * D``

    where ``D = x0_i`` (first order) or ``D = x0_i + (x0_i - x0_{i-1}) / (2 r)`` with
    ``r = (lambda_i - lambda_{i-1}) / h`` (second order). Every data prediction ``x0_i`` is clipped first. The first
    step (no ``x0_{i-1}`` yet), the step into the last kept timestep (t = 0) and every step of ``solver_order=1``
    (which is DDIM with eta = 0) are first order: with the evenly spaced timesteps the last interval is the longest
    in ``lambda`` (e.g. from 0.97 to 4.6 for "linear_beta", T = 1000, n = 10) and the second-order extrapolation over
    it (``r`` ~ 0.2) loses accuracy, as in DPM-Solver's ``lower_order_final``. The step at t = 0 (to
    ``lambda = +inf``) returns the t = 0 data prediction. The previous data prediction is the multistep state:
    ``set_timesteps`` clears it, and it is used only when it comes from the step just before.

    The alpha_bar table is strictly positive (checked at construction), so ``lambda`` stays finite even at the
    cosine schedule's last training step (``alpha_bar`` ~ 2e-9 for T = 1000).

    Args:
        num_train_timesteps: T. Default 1000.
        schedule: ``NoiseSchedules`` name. Default "linear_beta".
        solver_order: 1 or 2. Default 2.
        kwargs: ``prediction_type``, ``clip_sample``, ``clip_sample_min``, ``clip_sample_max`` and the schedule's
            arguments, see ``RespacedSampler``.
    """

    def __init__(
        self, num_train_timesteps: int = 1000, schedule: str = "linear_beta", solver_order: int = 2, **kwargs
    ) -> None:
        if solver_order not in (1, 2):
            raise ValueError(f"`solver_order` must be one of (1, 2), got {solver_order}.")
        super().__init__(num_train_timesteps, schedule, **kwargs)
        self.solver_order = solver_order

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Keep ``num_inference_steps`` timesteps, compute their log-SNR and clear the multistep state."""
        super().set_timesteps(num_inference_steps, device)
        alpha_bar = self.respaced_alphas_cumprod
        self.respaced_log_snr = 0.5 * (torch.log(alpha_bar) - torch.log1p(-alpha_bar))
        self._previous_original: tuple[int, torch.Tensor] | None = None

    def _next_sample(
        self, index: int, original: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The DPM-Solver++ update; deterministic, so ``generator`` is unused."""
        alpha_bar, alpha_bar_next = self._alphas_cumprod_at(index)
        h = self.respaced_log_snr[index + 1].item() - self.respaced_log_snr[index].item()
        data = self._solver_data_term(index, original, h)
        self._previous_original = (index, original)
        sigma_ratio = math.sqrt((1.0 - alpha_bar_next) / (1.0 - alpha_bar))
        return sigma_ratio * sample - math.sqrt(alpha_bar_next) * math.expm1(-h) * data

    def _solver_data_term(self, index: int, original: torch.Tensor, h: float) -> torch.Tensor:
        """``D`` of the step from ``t_index`` (log-SNR increment ``h``): second order where the docstring says so."""
        previous = self._previous_original
        second_order = self.solver_order == 2 and index + 2 < len(self.respaced_log_snr)
        if not second_order or previous is None or previous[0] != index - 1:
            return original
        ratio = (self.respaced_log_snr[index] - self.respaced_log_snr[index - 1]).item() / h
        return original + (original - previous[1]) / (2.0 * ratio)


def learned_range_log_variance(
    variance_values: torch.Tensor, log_beta: torch.Tensor | float, log_posterior_variance: torch.Tensor | float
) -> torch.Tensor:
    """MT-DDPM Eq. 16 / Nichol & Dhariwal 2021 Eq. 15: ``f log beta + (1 - f) log beta_tilde`` with ``f = (v + 1) / 2``.

    The network's raw output ``v`` (nominally in [-1, 1]; not clamped) is mapped to the interpolation weight
    ``f = (v + 1) / 2``, so v = +1 gives the fixed_large variance ``beta`` and v = -1 the fixed_small variance
    ``beta_tilde`` (clipped at the step into the data, see :class:`PosteriorTables`). The slide version of Eq. 16 uses
    ``v`` itself as the weight; improved-diffusion (which the paper follows) maps it as here. MONAI 1.6's
    ``learned_range`` interpolates the variances instead of their logarithms.

    Args:
        variance_values: v, (B, C, *spatial).
        log_beta: ``log beta'`` of the step, a float or a tensor broadcasting against ``v``.
        log_posterior_variance: the clipped ``log beta_tilde`` of the step, likewise.

    Returns:
        The log-variance, shape of ``variance_values``.
    """
    fraction = (variance_values + 1.0) / 2.0
    return fraction * log_beta + (1.0 - fraction) * log_posterior_variance


class LearnedRangeScheduler(RespacedDDPMScheduler):
    """Ancestral sampling of a learned-variance model on respaced timesteps (MT-DDPM Eq. 16 and its sampling step).

    The model output has 2C channels: the noise prediction (``prediction_type``) and the variance values v. The step
    from ``t_i`` to ``t_{i+1}`` draws from ``N(mean, Sigma)`` with the respaced posterior mean of the clipped x0
    estimate (as :class:`RespacedDDPMScheduler`) and ``log Sigma = f log beta'_i + (1 - f) log beta_tilde_i``,
    ``f = (v + 1) / 2`` (:func:`learned_range_log_variance`) on the respaced tables, so the variance range follows
    the respacing (improved-diffusion's respace). The step into the data returns the x0 estimate (the mean).

    ``train_tables`` holds the :class:`PosteriorTables` of all T training steps indexed by t (ascending) for the
    hybrid loss (:class:`common.losses.HybridDiffusionLoss`); ``respaced_tables`` those of the kept timesteps.

    Args:
        num_train_timesteps: T. Default 1000 (MT-DDPM: 4000 with "t_scaled_linear_beta").
        schedule: ``NoiseSchedules`` name. Default "linear_beta".
        kwargs: ``prediction_type``, ``clip_sample``, ``clip_sample_min``, ``clip_sample_max`` and the schedule's
            arguments, see ``RespacedSampler`` (``learned_variance`` is always True here).

    Raises:
        ValueError: ``learned_variance=False`` or a ``variance_type`` is given.
    """

    def __init__(self, num_train_timesteps: int = 1000, schedule: str = "linear_beta", **kwargs) -> None:
        if not kwargs.pop("learned_variance", True):
            raise ValueError("`learned_variance` must be True for LearnedRangeScheduler (it reads the variance output)")
        if "variance_type" in kwargs:
            raise ValueError(
                f"LearnedRangeScheduler learns its variance: remove `variance_type` (got {kwargs['variance_type']!r})"
                "; use RespacedDDPMScheduler for a fixed variance."
            )
        super().__init__(num_train_timesteps, schedule, learned_variance=True, **kwargs)
        self.variance_type = "learned_range"
        full = posterior_tables(self.train_alphas_cumprod.flip(0), self._train_alphas_cumprod_prev().flip(0))
        self.train_tables = PosteriorTables(*(table.flip(0) for table in full))

    def _train_alphas_cumprod_prev(self) -> torch.Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.train_alphas_cumprod[:-1]])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> SchedulerStepOutput:
        """One step with the learned variance: ``model_output`` is (B, 2C, *spatial) for a (B, C, *spatial) sample."""
        index = self.step_index(timestep)
        original = self.predict_original_sample(model_output, sample, self.respaced_alphas_cumprod[index].item())
        if index == len(self.respaced_alphas_cumprod) - 1:
            return SchedulerStepOutput(original, original)
        tables = self.respaced_tables
        mean = tables.mean_coef_original[index].item() * original + tables.mean_coef_sample[index].item() * sample
        log_variance = self.log_variance(model_output[:, sample.shape[1] :], index)
        noise = _standard_normal(sample, generator)
        return SchedulerStepOutput(mean + torch.exp(0.5 * log_variance) * noise, original)

    def log_variance(self, variance_values: torch.Tensor, index: int) -> torch.Tensor:
        """The learned log-variance of the step at position ``index`` of ``timesteps`` (respaced tables)."""
        tables = self.respaced_tables
        return learned_range_log_variance(
            variance_values, tables.log_betas[index].item(), tables.posterior_log_variance_clipped[index].item()
        )


def _alpha_bar(scheduler: Scheduler, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    alphas_cumprod = scheduler.alphas_cumprod.to(device=like.device, dtype=like.dtype)
    return alphas_cumprod[timesteps].reshape(-1, *(1,) * (like.dim() - 1))


def predict_original(
    scheduler: Scheduler, noisy: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, clip: bool = True
) -> torch.Tensor:
    """x0 estimate from an epsilon prediction (the inverse of the forward process), clipped to [-1, 1] if ``clip``."""
    alpha_bar = _alpha_bar(scheduler, timesteps, noisy)
    original = (noisy - (1.0 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()
    return original.clamp(-1.0, 1.0) if clip else original


def check_sampler_steps(scheduler: Scheduler, num_inference_steps: int) -> None:
    """Refuse MONAI's ``DDPMScheduler`` with fewer steps than it was trained with (its respaced step is wrong)."""
    if isinstance(scheduler, DDPMScheduler) and num_inference_steps != scheduler.num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps}: MONAI's DDPMScheduler is only correct with all "
            f"{scheduler.num_train_timesteps} steps; use sampler 'respaced_ddpm', 'ddim' or 'dpm_solver' for fewer"
        )
