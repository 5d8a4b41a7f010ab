"""Benchmark of the swin_ddpm bundle (issue 16): Swin vs convolutional U-Net at matched parameters, learned vs fixed
variance, the VLB weight, 50 vs 500 respaced steps, the bits/dim of our learned range vs MONAI's, the bundle
trainer's overhead against a bare loop, and peak memory.

Every arm trains the same number of iterations on the same 32 x 32 chest-radiograph phantoms (DRR of the thorax CT
phantom) from the same seed, and is scored with the same feature extractor: FID on a frozen, seeded random
``SmallConvFeatures`` trunk (global-average-pooled ReLU maps of its three stages), samples against held-out phantoms
(twice as many as samples; the FID of another held-out set of the sample size is printed as the noise floor).
At this budget the figures compare the arms with each other, not with the paper.

- 50 vs 500 steps: the paper arm sampled with both step counts from the same initial noise, for ``step_seeds``
  sampling seeds; mean, spread and the ratio of the means. 500 steps are evenly spaced (the paper); 50 steps are read
  twice, evenly spaced (the first rule) and with the quadratic spacing (``timestep_spacing="quadratic"``, dense near
  the data; added after the first runs, where 50 even steps read 2.7x (150 iterations) and 7.4x (an exploratory
  1000-iteration run) the 500-step FID). Every arm is also scored at 50 quadratic steps.
- VLB (bits/dim) of the paper arm, ours (log-variance interpolation) vs MONAI 1.6's
  ``DDPMScheduler(variance_type="learned_range")``: the whole 4000-step chain (exact terms where beta_tilde / beta is
  far from 1, a stratified estimate of the rest) and the 50-step respaced chain with MONAI's own ``set_timesteps``
  and step tables; the first reading (mean per-step term at 40 evenly spaced t) is kept.
- Overhead: the bundle trainer and a bare loop of the same math, alternating rounds.
- Peak memory: ``tools.bench.memory.measure_peak_rss`` of the bundle's training and inference in fresh processes.

    python -m tools.bench swin_ddpm [--iterations 1000] [--num_samples 64] [--step_seeds 2]
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import DDPMScheduler
from monai.utils import set_determinism

from common.data.images2d import find_images
from common.data.phantoms.slices import write_slice_phantoms
from common.engines.prepare_batch import HybridLossPrepareBatch
from common.inferers.conditional import ConditionalDiffusionInferer
from common.losses.hybrid import HybridDiffusionLoss, discretised_gaussian_log_likelihood, normal_kl
from common.metrics.fid import feature_fid
from common.networks.feature_extractors import SmallConvFeatures
from common.networks.swin_diffusion_unet import SwinDiffusionUNet
from common.schedulers import (
    DPMSolverMultistepScheduler,
    LearnedRangeScheduler,
    RespacedDDPMScheduler,
    posterior_tables,
)
from tools.bench.harness import (
    bundle_intervals,
    bundle_workflow,
    config_files,
    loop_intervals,
    markdown_table,
    target_entry,
)
from tools.bench.memory import measure_peak_rss

__all__ = ["bench_swin_ddpm"]

SIZE = 32
T = 4000
SWIN = {"channels": (32, 64, 64), "swin_levels": (False, True, True), "num_heads": 2, "window_size": 4}
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # compare algorithms, not glibc's heap growth (tools.bench.memory)
EXTRACTOR = "random-weight SmallConvFeatures (8, 16, 32), seed 0, global-average-pooled, 56 features"


def _network(layout: dict[str, Any], learned: bool) -> SwinDiffusionUNet:
    return SwinDiffusionUNet(2, 1, 2 if learned else 1, [SIZE, SIZE], norm_num_groups=8, **layout)


def _parameters(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def _matched_conv_layout() -> dict[str, Any]:
    """The all-convolutional layout (w, c, c) whose parameter count is closest to the Swin U-Net's."""
    target = _parameters(_network(SWIN, True))
    widths = [(w, c, c) for w in (24, 32, 40) for c in range(32, 97, 8)]
    layouts = [{"channels": width, "swin_levels": (False, False, False)} for width in widths]
    return min(layouts, key=lambda layout: abs(_parameters(_network(layout, True)) - target))


def _images(folder: Path) -> torch.Tensor:
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged

    load = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            ScaleIntensityRanged("image", 0.0, 255.0, -1.0, 1.0, clip=True),
        ]
    )
    return torch.stack([torch.as_tensor(load(case)["image"]).float() for case in find_images(folder)])


def _train(network, scheduler, loss, prepare, images: torch.Tensor, iterations: int, batch: int) -> float:
    """Train ``iterations`` steps of AdamW (lr 5e-4); returns seconds per iteration."""
    inferer = ConditionalDiffusionInferer(scheduler, mode="crossattn")
    optimiser = torch.optim.AdamW(network.parameters(), lr=5e-4)
    generator = torch.Generator().manual_seed(0)
    network.train()
    start = time.perf_counter()
    for _ in range(iterations):
        rows = torch.randint(0, len(images), (batch,), generator=generator)
        inputs, target, _, kwargs = prepare({"image": images[rows]}, "cpu")
        optimiser.zero_grad()
        value = loss(inferer(inputs, network, **kwargs), target)
        value.backward()
        optimiser.step()
    return (time.perf_counter() - start) / iterations


def _sampler(learned: bool, spacing: str):
    """The sampler of an arm: the learned range for a learned-variance network, fixed_small otherwise."""
    if learned:
        return LearnedRangeScheduler(T, "t_scaled_linear_beta", timestep_spacing=spacing)
    return RespacedDDPMScheduler(T, "t_scaled_linear_beta", variance_type="fixed_small", timestep_spacing=spacing)


@torch.no_grad()
def _sample(network, scheduler, steps: int, count: int, seed: int) -> tuple[torch.Tensor, float]:
    """``count`` samples with ``steps`` respaced steps; the initial noise depends on ``seed`` only (the same for
    every step count), the step noise on ``seed`` too."""
    network.eval()
    scheduler.set_timesteps(steps)
    noise = torch.randn((count, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(1 + 100 * seed))
    inferer = ConditionalDiffusionInferer(scheduler, mode="crossattn")
    start = time.perf_counter()
    images = inferer.sample(noise, network, scheduler, generator=torch.Generator().manual_seed(2 + 100 * seed))
    return images.clamp(-1, 1), (time.perf_counter() - start) / count


Transition = Callable[[torch.Tensor, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


def _our_transition(scheduler: LearnedRangeScheduler, linear: bool = False) -> Transition:
    """Mean and log-variance of our learned-range step ``t_i -> t_{i+1}`` (its respaced tables after
    ``set_timesteps``); ``linear``: the same mean with the variances, not their logarithms, interpolated (MONAI's
    formula on correct respaced tables, which isolates the interpolation from MONAI's respacing slip)."""

    def transition(output: torch.Tensor, sample: torch.Tensor, index: int, timestep: int):
        channels = sample.shape[1]
        tables = scheduler.respaced_tables
        original = scheduler.predict_original_sample(output, sample, scheduler.respaced_alphas_cumprod[index].item())
        mean = tables.mean_coef_original[index].item() * original + tables.mean_coef_sample[index].item() * sample
        values = output[:, channels:]
        if not linear:
            return mean, scheduler.log_variance(values, index)
        fraction = (values + 1.0) / 2.0
        beta, beta_tilde = tables.betas[index].item(), tables.posterior_log_variance_clipped[index].exp().item()
        return mean, torch.log((fraction * beta + (1.0 - fraction) * beta_tilde).clamp(min=1e-20))

    return transition


def _monai_transition(scheduler: DDPMScheduler) -> Transition:
    """Mean and log-variance of MONAI's own ``DDPMScheduler(variance_type="learned_range").step`` at ``timestep``,
    as set up by its user (``set_timesteps(n)``): the x0 estimate from its ``step``, the mean and variance from the
    ``_get_mean`` / ``_get_variance`` that ``step`` calls, checked against the sample ``step`` draws. At t = 0 its
    variance is ``f * beta_0`` (its unclipped posterior variance there is 0); a variance at or below 0 (v <= -1 there,
    or far outside [-1, 1] elsewhere) is floored at 1e-20, the floor of its fixed_small variance."""

    def transition(output: torch.Tensor, sample: torch.Tensor, index: int, timestep: int):
        channels = sample.shape[1]
        seed = 1000 + index
        drawn, original = scheduler.step(output, timestep, sample, generator=torch.Generator().manual_seed(seed))
        mean = scheduler._get_mean(timestep, original, sample)
        variance = scheduler._get_variance(timestep, output[:, channels:])
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(seed)) if timestep > 0 else 0.0
        if not torch.allclose(drawn, mean + variance.sqrt() * noise, atol=1e-4, equal_nan=True):
            raise RuntimeError(f"MONAI's DDPMScheduler.step at t={timestep} is not N(_get_mean, _get_variance)")
        return mean, torch.log(variance.clamp(min=1e-20))

    return transition


@torch.no_grad()
def _chain_vlb(
    network: torch.nn.Module,
    images: torch.Tensor,
    timesteps: list[int],
    evaluated: list[tuple[int, float]],
    transitions: dict[str, Transition],
    seed: int,
) -> dict[str, dict[str, float]]:
    """The variational bound (bits/dim) of the sampling chain over the kept ``timesteps`` (descending, ending at 0).

    ``sum_i w_i L_i + L_prior``: ``L_i`` is ``KL(q(x_{t_{i+1}} | x_{t_i}, x_0) || p(x_{t_{i+1}} | x_{t_i}))`` (exact
    respaced posterior, ``common.schedulers.posterior_tables``), or at the last kept step (t = 0) the discretised
    negative log-likelihood of x_0; ``evaluated`` lists (index i, weight w_i) (all steps with weight 1, or a
    stratified sample). Every transition sees the same noisy images and network output. Returns per transition
    the weighted KL sum, the decoder term, the prior term and their total.
    """
    network.eval()
    kept = torch.tensor(timesteps)
    alphas_cumprod = torch.cumprod(1.0 - LearnedRangeScheduler(T, "t_scaled_linear_beta").betas.double(), 0)[kept]
    previous = torch.cat([alphas_cumprod[1:], torch.ones(1, dtype=torch.float64)])
    posterior = posterior_tables(alphas_cumprod, previous)
    last = alphas_cumprod[0].item()
    prior = normal_kl(math.sqrt(last) * images, torch.tensor(math.log(1.0 - last)), torch.zeros(()), torch.zeros(()))
    prior_bits = prior.mean().item() / math.log(2.0)
    totals = {name: {"kl": 0.0, "decoder": 0.0} for name in transitions}
    generator = torch.Generator().manual_seed(seed)
    for index, weight in evaluated:
        alpha_bar = alphas_cumprod[index].item()
        noise = torch.randn(images.shape, generator=generator)
        sample = math.sqrt(alpha_bar) * images + math.sqrt(1.0 - alpha_bar) * noise
        output = network(sample, torch.full((len(images),), timesteps[index], dtype=torch.long))
        for name, transition in transitions.items():
            mean, log_variance = transition(output, sample, index, timesteps[index])
            if index == len(timesteps) - 1:
                nll = -discretised_gaussian_log_likelihood(images, mean, 0.5 * log_variance)
                totals[name]["decoder"] += weight * nll.mean().item() / math.log(2.0)
                continue
            true_mean = posterior.mean_coef_original[index].item() * images
            true_mean = true_mean + posterior.mean_coef_sample[index].item() * sample
            true_log_variance = torch.tensor(math.log(posterior.posterior_variance[index].item()))
            kl = normal_kl(true_mean, true_log_variance, mean, log_variance)
            totals[name]["kl"] += weight * kl.mean().item() / math.log(2.0)
    return {
        name: {**terms, "prior": prior_bits, "total": terms["kl"] + terms["decoder"] + prior_bits}
        for name, terms in totals.items()
    }


def _vlb_readings(network: torch.nn.Module, images: torch.Tensor, exact: int = 32, strata: int = 48) -> dict:
    """Three readings of the VLB, ours (log-variance interpolation) vs MONAI 1.6 ``learned_range``: (1) the first
    reading, the mean per-step term at 40 evenly spaced t of T (kept for comparison); (2) the whole T-step chain:
    the terms of t < ``exact`` exactly (where beta_tilde / beta is far from 1), the other T - ``exact`` KL terms by
    a stratified estimate (``strata`` equal strata, one random t each, weighted by the stratum size), plus the
    prior term; (3) the 50-step respaced chain the sampler runs, every term, with MONAI's scheduler after its own
    ``set_timesteps(50)`` and with the linear interpolation on correct respaced tables."""
    ours = LearnedRangeScheduler(T, "t_scaled_linear_beta")
    monai = DDPMScheduler(T, "t_scaled_linear_beta", variance_type="learned_range", clip_sample=True)
    readings: dict[str, Any] = {}
    loss = HybridDiffusionLoss(ours)
    readings["first_reading_mean_per_step_40_t"] = {
        "log interpolation (ours)": _vlb_bits(loss, network, images),
        "linear interpolation (MONAI 1.6)": _vlb_bits(_MonaiLinearRange(ours), network, images),
    }
    ours.set_timesteps(T)
    monai.set_timesteps(T)
    full = list(range(T - 1, -1, -1))
    rest = T - exact
    bounds = [exact + (rest * k) // strata for k in range(strata + 1)]
    draw = torch.Generator().manual_seed(5)
    sampled = [lo + int(torch.randint(0, hi - lo, (1,), generator=draw)) for lo, hi in zip(bounds, bounds[1:])]
    evaluated = [(T - 1 - t, 1.0) for t in range(exact)]
    evaluated += [(T - 1 - t, float(hi - lo)) for t, lo, hi in zip(sampled, bounds, bounds[1:])]
    readings["full_chain_4000"] = _chain_vlb(
        network,
        images,
        full,
        evaluated,
        {
            "log interpolation (ours)": _our_transition(ours),
            "MONAI 1.6 DDPMScheduler learned_range": _monai_transition(monai),
        },
        seed=6,
    )
    ours.set_timesteps(50)
    monai.set_timesteps(50)
    if ours.timesteps.tolist() != monai.timesteps.tolist():
        raise RuntimeError("our and MONAI's 50 kept timesteps differ: the chains are not comparable")
    readings["respaced_chain_50"] = _chain_vlb(
        network,
        images,
        ours.timesteps.tolist(),
        [(i, 1.0) for i in range(50)],
        {
            "log interpolation (ours)": _our_transition(ours),
            "MONAI 1.6 DDPMScheduler learned_range, set_timesteps(50)": _monai_transition(monai),
            "linear interpolation on correct respaced tables": _our_transition(ours, linear=True),
        },
        seed=7,
    )
    return readings


class _MonaiLinearRange(HybridDiffusionLoss):
    """The VLB with MONAI 1.6's learned_range: the variances, not their logarithms, interpolated."""

    def model_log_variance(self, variance_values: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        tables = self.scheduler.train_tables
        shape = (-1, *(1,) * (variance_values.dim() - 1))
        beta = tables.betas[timesteps].to(variance_values.dtype).reshape(shape)
        beta_tilde = tables.posterior_log_variance_clipped[timesteps].exp().to(variance_values.dtype).reshape(shape)
        fraction = (variance_values + 1.0) / 2.0
        return torch.log(fraction * beta + (1.0 - fraction) * beta_tilde)


@torch.no_grad()
def _vlb_bits(loss: HybridDiffusionLoss, network, images: torch.Tensor, points: int = 40) -> float:
    """Mean per-step VLB term (bits/dim) over ``points`` evenly spaced t, same noise for every call."""
    network.eval()
    generator = torch.Generator().manual_seed(3)
    terms = []
    for t in torch.linspace(0, T - 1, points).round().long().tolist():
        timesteps = torch.full((len(images),), t, dtype=torch.long)
        noise = torch.randn(images.shape, generator=generator)
        noisy = loss.scheduler.add_noise(images, noise, timesteps)
        output = network(noisy, timesteps)
        terms.append(loss.vlb_terms(output[:, :1], output[:, 1:], images, noisy, timesteps).mean().item())
    return statistics.fmean(terms)


def _features(trunk: SmallConvFeatures):
    def features(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([a.mean(dim=(2, 3)) for a in trunk(x)], dim=1)

    return features


def _overhead_parts(folder: Path, work: Path) -> tuple[Any, Any, Callable[[dict], None]]:
    """(bundle trainer, its loader, one bare step): the bundle's train.yaml + demo.yaml and a bare loop doing the same
    math (the same network, hybrid loss, inferer, optimiser and batches) without engine, handlers or EMA."""
    workflow = bundle_workflow(
        config_files("swin_ddpm", "train", "demo"),
        "train",
        bundle_root=str(work),
        dataset_dir=str(folder),
        val_interval=10**6,
        save_interval=10**6,
    )
    parser = workflow.parser
    network, loss = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    optimiser, prepare = parser.get_parsed_content("optimizer"), parser.get_parsed_content("prepare_batch")
    inferer = parser.get_parsed_content("inferer")

    def step(batch: dict) -> None:
        inputs, target, _, kwargs = prepare(batch, "cpu")
        optimiser.zero_grad(set_to_none=True)
        loss(inferer(inputs, network, **kwargs), target).backward()
        optimiser.step()

    return parser.get_parsed_content("train#trainer"), parser.get_parsed_content("train#dataloader"), step


def _bundle_overhead(folder: Path, work: Path, rounds: int, epochs: int) -> dict[str, Any]:
    """Median seconds per iteration of the bundle's trainer and of the bare loop, measured in alternating rounds
    (``epochs`` epochs of each per round, the order swapped every round) after one warm-up epoch of each."""
    trainer, loader, step = _overhead_parts(folder, work)
    bundle_intervals(trainer, 1)
    loop_intervals(loader, step, len(loader))
    bundle: list[float] = []
    bare: list[float] = []
    for index in range(rounds):
        for arm in ("bundle", "bare") if index % 2 == 0 else ("bare", "bundle"):
            if arm == "bundle":
                bundle += bundle_intervals(trainer, trainer.state.epoch + epochs)
            else:
                bare += loop_intervals(loader, step, epochs * len(loader))
    return {
        "bundle_s": statistics.median(bundle),
        "bare_s": statistics.median(bare),
        "iterations": [len(bundle), len(bare)],
        "rounds": rounds,
    }


def _peak_training(folder: str, work: str, iterations: int) -> None:
    """``iterations`` iterations of the bundle trainer (train.yaml + demo.yaml, all handlers); for
    :func:`tools.bench.memory.measure_peak_rss` (a fresh process)."""
    from ignite.engine import Events

    trainer, _, _ = _overhead_parts(Path(folder), Path(work))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=iterations), lambda engine: engine.terminate())
    trainer.run()


def _peak_sampling(root: str, steps: int, num_samples: int) -> None:
    """The bundle's inference.yaml + demo.yaml on ``root/models/model.pt``: ``num_samples`` samples (one batch)
    with ``steps`` respaced steps, written as NIfTI; for :func:`tools.bench.memory.measure_peak_rss`."""
    workflow = bundle_workflow(
        config_files("swin_ddpm", "inference", "demo"),
        None,
        bundle_root=root,
        output_dir=str(Path(root) / f"samples_{steps}"),
        num_inference_steps=steps,
        num_samples=num_samples,
        sample_batch_size=num_samples,
    )
    workflow.run()


def _peak_memory(folder: Path, work: Path, network: torch.nn.Module) -> dict[str, float]:
    """Peak resident memory (MiB above a fresh process's baseline): the bundle trainer for 24 iterations, and the
    bundle's inference of one batch of 8 samples at 50 steps on the paper arm's weights."""
    (work / "models").mkdir(parents=True)
    torch.save(network.state_dict(), work / "models" / "model.pt")
    train_work = str(work / "train")
    return {
        "training_24_iterations": measure_peak_rss(
            _peak_training, str(folder), train_work, 24, keep_result=False, env=ALLOCATOR
        )[1],
        "sampling_8_images_50_steps": measure_peak_rss(
            _peak_sampling, str(work), 50, 8, keep_result=False, env=ALLOCATOR
        )[1],
    }


def _bound(name: str, value: float, relation: str, bound: float) -> dict[str, Any]:
    """A ``targets`` entry for ``value <= bound`` or ``value < bound`` (``relation``), its bound written as text."""
    met = value <= bound if relation == "<=" else value < bound
    return target_entry(name, value, f"{relation} {bound:g}", met)


def _fid_spread(values: list[float]) -> dict[str, Any]:
    return {"values": values, "mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def bench_swin_ddpm(
    iterations: int = 1000,
    num_samples: int = 64,
    batch_size: int = 8,
    step_seeds: int = 2,
    overhead_rounds: int = 4,
) -> tuple[str, dict[str, Any]]:
    """Run the arms (module docstring); returns (markdown, results with a ``targets`` list)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        train_dir = write_slice_phantoms("chest_xray", work / "train", n=96, size=SIZE, seed=0)
        real_dir = write_slice_phantoms("chest_xray", work / "real", n=2 * num_samples, size=SIZE, seed=1)
        floor_dir = write_slice_phantoms("chest_xray", work / "floor", n=num_samples, size=SIZE, seed=2)
        images, real, floor_set = _images(train_dir), _images(real_dir), _images(floor_dir)
        overhead = _bundle_overhead(train_dir, work / "bundle", overhead_rounds, 2)
        trunk = SmallConvFeatures(seed=0).eval()
        fid_of = _features(trunk)

        def fid(samples: torch.Tensor) -> float:
            return feature_fid(real, samples, fid_of, batch_size=32)

        learned = LearnedRangeScheduler(T, "t_scaled_linear_beta")
        fixed = RespacedDDPMScheduler(T, "t_scaled_linear_beta", variance_type="fixed_small")
        arms = {
            "Swin U-Net, learned variance, gamma 0.01 (paper)": (SWIN, True, 0.01),
            "conv U-Net (matched parameters), learned variance, gamma 0.01": (_matched_conv_layout(), True, 0.01),
            "Swin U-Net, fixed variance (MSE only)": (SWIN, False, 0.0),
            "Swin U-Net, learned variance, gamma 4.0 (authors' code: T / 1000)": (SWIN, True, 4.0),
        }
        results: dict[str, Any] = {
            "arms": {},
            "feature_extractor": EXTRACTOR,
            "iterations": iterations,
            "batch": batch_size,
            "num_samples": num_samples,
            "real_images": len(real),
        }
        rows, networks = [], {}
        for name, (layout, is_learned, gamma) in arms.items():
            set_determinism(seed=0)
            network = _network(layout, is_learned)
            if is_learned:
                loss, prepare = HybridDiffusionLoss(learned, vlb_weight=gamma), HybridLossPrepareBatch(T)
            else:
                loss, prepare = torch.nn.MSELoss(), DiffusionPrepareBatch(T)
            schedule = learned if is_learned else fixed
            seconds = _train(network, schedule, loss, prepare, images, iterations, batch_size)
            samples, per_sample = _sample(network, _sampler(is_learned, "even"), 50, num_samples, seed=0)
            value = fid(samples)
            quadratic = fid(_sample(network, _sampler(is_learned, "quadratic"), 50, num_samples, seed=0)[0])
            networks[name] = network
            results["arms"][name] = {
                "parameters": _parameters(network),
                "train_s_per_iteration": seconds,
                "fid_50_steps": value,
                "fid_50_steps_quadratic": quadratic,
                "sample_s_50_steps": per_sample,
            }
            row = [name, f"{_parameters(network) / 1e6:.3f} M", f"{seconds:.3f}", f"{value:.3f}", f"{quadratic:.3f}"]
            rows.append(row + [f"{per_sample:.3f}"])
        paper = next(iter(arms))
        paper_network = networks[paper]
        steps: dict[str, list[float]] = {
            "50": [results["arms"][paper]["fid_50_steps"]],
            "50q": [results["arms"][paper]["fid_50_steps_quadratic"]],
            "500": [],
        }
        step_seconds: dict[str, list[float]] = {"50": [results["arms"][paper]["sample_s_50_steps"]], "500": []}
        plans = {"50": (50, "even"), "50q": (50, "quadratic"), "500": (500, "even")}
        for seed in range(step_seeds):
            for key in ("50", "50q", "500") if seed > 0 else ("500",):
                count, spacing = plans[key]
                samples, per_sample = _sample(paper_network, _sampler(True, spacing), count, num_samples, seed=seed)
                steps[key].append(fid(samples))
                step_seconds.setdefault(key, []).append(per_sample)
        ratios = [a / b for a, b in zip(steps["50"], steps["500"])]
        ratios_quadratic = [a / b for a, b in zip(steps["50q"], steps["500"])]
        samples_dpm, per_sample_dpm = _sample(
            paper_network,
            DPMSolverMultistepScheduler(T, "t_scaled_linear_beta", learned_variance=True),
            50,
            num_samples,
            seed=0,
        )
        fid_dpm = fid(samples_dpm)
        fid_floor = fid(floor_set)
        vlb = _vlb_readings(paper_network, real[:32])
        memory = _peak_memory(train_dir, work / "memory", paper_network)
    arm = results["arms"]
    results["steps_50_vs_500"] = {
        "seeds": list(range(step_seeds)),
        "fid_50_steps": _fid_spread(steps["50"]),
        "fid_50_steps_quadratic": _fid_spread(steps["50q"]),
        "fid_500_steps": _fid_spread(steps["500"]),
        "ratio_per_seed": ratios,
        "ratio_of_means": statistics.fmean(steps["50"]) / statistics.fmean(steps["500"]),
        "ratio_quadratic_per_seed": ratios_quadratic,
        "ratio_quadratic_of_means": statistics.fmean(steps["50q"]) / statistics.fmean(steps["500"]),
        "sample_s": {str(k): statistics.fmean(v) for k, v in step_seconds.items()},
    }
    results["fid_floor_real_vs_real"] = fid_floor
    results["dpm_solver_50_steps"] = {"fid": fid_dpm, "sample_s": per_sample_dpm}
    results["vlb_bits_per_dim"] = vlb
    results["bundle_overhead"] = overhead
    results["peak_rss_mib"] = memory
    swin, conv = arm[paper]["fid_50_steps"], arm[list(arms)[1]]["fid_50_steps"]
    fixed_fid = arm[list(arms)[2]]["fid_50_steps"]
    swin_q, conv_q = arm[paper]["fid_50_steps_quadratic"], arm[list(arms)[1]]["fid_50_steps_quadratic"]
    fixed_q = arm[list(arms)[2]]["fid_50_steps_quadratic"]
    ratio_quadratic = results["steps_50_vs_500"]["ratio_quadratic_of_means"]
    overhead_ratio = overhead["bundle_s"] / overhead["bare_s"]
    full = vlb["full_chain_4000"]
    respaced = vlb["respaced_chain_50"]
    first = vlb["first_reading_mean_per_step_40_t"]
    ours_key = "log interpolation (ours)"
    monai_full = full["MONAI 1.6 DDPMScheduler learned_range"]["total"]
    monai_50 = respaced["MONAI 1.6 DDPMScheduler learned_range, set_timesteps(50)"]["total"]
    linear_50 = respaced["linear interpolation on correct respaced tables"]["total"]
    ratio_of_means = results["steps_50_vs_500"]["ratio_of_means"]
    vlb_full = full[ours_key]["total"] - monai_full
    vlb_50 = respaced[ours_key]["total"] - monai_50
    results["targets"] = [
        _bound("FID Swin / FID conv U-Net (matched parameters), 50 steps", swin / conv, "<=", 1),
        _bound("FID learned / FID fixed variance, 50 steps", swin / fixed_fid, "<", 1),
        _bound("VLB bits/dim, whole 4000-step chain: ours (log) - MONAI DDPMScheduler learned_range", vlb_full, "<", 0),
        _bound(
            "VLB bits/dim, 50-step respaced chain: ours - MONAI DDPMScheduler learned_range, set_timesteps(50)",
            vlb_50,
            "<",
            0,
        ),
        _bound(f"FID 50 steps / FID 500 steps (mean over {step_seeds} sampling seeds)", ratio_of_means, "<=", 1.1),
        _bound(
            f"FID 50 steps, quadratic spacing / FID 500 steps, even (mean over {step_seeds} sampling seeds)",
            ratio_quadratic,
            "<=",
            1.1,
        ),
        _bound("FID Swin / FID conv U-Net (matched parameters), 50 steps, quadratic spacing", swin_q / conv_q, "<=", 1),
        _bound("FID learned / FID fixed variance, 50 steps, quadratic spacing", swin_q / fixed_q, "<", 1),
        _bound("bundle trainer / bare loop, s per iteration", overhead_ratio, "<=", 1.1),
    ]
    header = [
        "arm",
        "parameters",
        "train s/it",
        f"FID ({EXTRACTOR}), 50 even steps, seed 0",
        "FID, 50 quadratic steps, seed 0",
        "s/sample",
    ]
    extra = [
        [
            f"{paper}, 500 even steps (the paper's sampler), seed 0",
            "",
            "",
            f"{steps['500'][0]:.4f}",
            "",
            f"{step_seconds['500'][0]:.3f}",
        ],
        [f"{paper}, DPM-Solver++ 50 steps (first C channels)", "", "", f"{fid_dpm:.4f}", "", f"{per_sample_dpm:.3f}"],
        [f"reference: {num_samples} other held-out phantoms (real vs real)", "", "", f"{fid_floor:.4f}", "", ""],
    ]

    def spread(values: list[float]) -> str:
        return f"{statistics.fmean(values):.4f} ({min(values):.4f} - {max(values):.4f})"

    step_rows = [
        [
            str(seed),
            f"{steps['50'][seed]:.4f}",
            f"{steps['50q'][seed]:.4f}",
            f"{steps['500'][seed]:.4f}",
            f"{ratios[seed]:.3f}",
            f"{ratios_quadratic[seed]:.3f}",
        ]
        for seed in range(step_seeds)
    ]
    step_rows.append(
        [
            "mean (min - max)",
            spread(steps["50"]),
            spread(steps["50q"]),
            spread(steps["500"]),
            f"{ratio_of_means:.3f} (ratio of means)",
            f"{ratio_quadratic:.3f} (ratio of means)",
        ]
    )
    vlb_rows = [
        [
            "4000-step chain (exact t < 32, stratified rest)",
            name,
            f"{v['kl']:.4f}",
            f"{v['decoder']:.4f}",
            f"{v['prior']:.1e}",
            f"{v['total']:.4f}",
        ]
        for name, v in full.items()
    ] + [
        [
            "50-step respaced chain (all terms)",
            name,
            f"{v['kl']:.4f}",
            f"{v['decoder']:.4f}",
            f"{v['prior']:.1e}",
            f"{v['total']:.4f}",
        ]
        for name, v in respaced.items()
    ]
    targets = markdown_table(
        [[t["name"], f"{t['value']:.4f}", t["target"], "yes" if t["met"] else "no"] for t in results["targets"]],
        ["target", "value", "wanted", "met"],
    )
    markdown = "\n\n".join(
        [
            "# swin_ddpm benchmark (`python -m tools.bench swin_ddpm`)",
            f"32 x 32 chest-radiograph phantoms (96 training, {len(real)} held-out as the real set of every FID), "
            f"T = 4000 (t_scaled_linear_beta), {iterations} iterations of batch {batch_size}, AdamW 5e-4, raw weights "
            f"(no EMA), {num_samples} samples per arm, CPU. Every FID uses the same extractor: {EXTRACTOR}.",
            markdown_table(rows + extra, header),
            f"## 50 vs 500 respaced steps (paper arm, {num_samples} samples per step count and seed; both step counts "
            "start from the same initial noise of each seed)",
            "500 steps are evenly spaced (the paper). 50 steps are read twice: evenly spaced (the first rule) and "
            "with the quadratic spacing (`timestep_spacing: quadratic`, DDIM's quadratic selection over [0, T - 1]: "
            "the last kept steps are 27, 15, 7, 2, 0 instead of 245, 163, 82, 0). The quadratic reading was added "
            "after the first runs, where 50 even steps read 2.7x (150 iterations) and 7.4x (an exploratory "
            "1000-iteration run) the 500-step FID; both readings are kept, each with its target entry.",
            markdown_table(
                step_rows,
                [
                    "sampling seed",
                    "FID 50 even steps",
                    "FID 50 quadratic steps",
                    "FID 500 even steps",
                    "50 even / 500",
                    "50 quadratic / 500",
                ],
            ),
            "## Variational bound (bits/dim) of the paper arm on 32 held-out images: ours vs MONAI 1.6 learned_range",
            "The first reading (mean per-step term at 40 evenly spaced t of T = 4000) gave "
            f"{first[ours_key]:.4f} (ours) vs {first['linear interpolation (MONAI 1.6)']:.4f} (MONAI's linear "
            "interpolation): at those t, beta_tilde_t and beta_t are nearly equal, so the two interpolations cannot "
            "differ there. After seeing that number the evaluation rule was changed to the two readings below (the "
            "old one is kept here and in the JSON): the bound of the whole 4000-step chain, where the two differ at "
            "small t, and the bound of the 50-step chain the sampler runs, with MONAI's DDPMScheduler("
            "variance_type='learned_range') set up as a user would (its own set_timesteps(50) and step tables).",
            markdown_table(
                vlb_rows, ["chain", "model transition", "sum of KL terms", "decoder (t = 0)", "prior", "total"]
            ),
            "The last row is a diagnostic, not a target: MONAI's formula (variances interpolated linearly) applied "
            "to the same network output on correct respaced tables, which separates the interpolation from MONAI's "
            f"respacing slip (ours - it: {respaced[ours_key]['total'] - linear_50:+.4f} bits/dim). The network was "
            "trained for the log-variance map, so this row reads its v under a map it was not trained for.",
            f"Bundle trainer (train.yaml + demo.yaml, all handlers) {overhead['bundle_s'] * 1000:.1f} ms per "
            f"iteration, bare loop (same network, hybrid loss, optimiser and batches) {overhead['bare_s'] * 1000:.1f} "
            f"ms (medians of {overhead['iterations'][0]} / {overhead['iterations'][1]} iterations in "
            f"{overhead['rounds']} alternating rounds).",
            f"Peak resident memory above a fresh process (MiB, tools.bench.memory): bundle training, 24 iterations "
            f"of batch {batch_size}: {memory['training_24_iterations']:.0f}; bundle inference, one batch of 8 samples "
            f"at 50 steps: {memory['sampling_8_images_50_steps']:.0f}.",
            targets,
        ]
    )
    return markdown + "\n", results
