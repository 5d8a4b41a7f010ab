"""Benchmark of the swin_ddpm bundle (issue 16): Swin vs convolutional U-Net at matched parameters, learned vs fixed
variance, the VLB weight, 50 vs 500 respaced steps, the bits/dim of our learned range vs MONAI's linear
interpolation, and the bundle trainer's overhead against a bare loop.

Every arm trains the same number of iterations on the same 32 x 32 chest-radiograph phantoms (DRR of the thorax CT
phantom) from the same seed, and is scored with the same feature extractor: FID on a frozen, seeded random
``SmallConvFeatures`` trunk (global-average-pooled ReLU maps of its three stages), samples against held-out phantoms.
At this budget the figures compare the arms with each other, not with the paper.

    python -m tools.bench swin_ddpm [--iterations 150] [--num_samples 24]
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.utils import set_determinism

from common.data.images2d import find_images
from common.data.phantoms.slices import write_slice_phantoms
from common.engines.prepare_batch import HybridLossPrepareBatch
from common.inferers.conditional import ConditionalDiffusionInferer
from common.losses.hybrid import HybridDiffusionLoss
from common.metrics.fid import feature_fid
from common.networks.feature_extractors import SmallConvFeatures
from common.networks.swin_diffusion_unet import SwinDiffusionUNet
from common.schedulers import DPMSolverMultistepScheduler, LearnedRangeScheduler, RespacedDDPMScheduler
from tools.bench.harness import bundle_intervals, bundle_workflow, config_files, loop_intervals, markdown_table

__all__ = ["bench_swin_ddpm"]

SIZE = 32
T = 4000
SWIN = {"channels": (32, 64, 64), "swin_levels": (False, True, True), "num_heads": 2, "window_size": 4}
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


@torch.no_grad()
def _sample(network, scheduler, steps: int, count: int) -> tuple[torch.Tensor, float]:
    network.eval()
    scheduler.set_timesteps(steps)
    noise = torch.randn((count, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(1))
    inferer = ConditionalDiffusionInferer(scheduler, mode="crossattn")
    start = time.perf_counter()
    images = inferer.sample(noise, network, scheduler, generator=torch.Generator().manual_seed(2))
    return images.clamp(-1, 1), (time.perf_counter() - start) / count


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


def _bundle_overhead(folder: Path, work: Path, iterations: int) -> dict[str, float]:
    """Median seconds per iteration of the bundle's trainer (train.yaml + demo.yaml) and of a bare loop doing the
    same steps (same network, loss, optimiser, loader)."""
    workflow = bundle_workflow(
        config_files("swin_ddpm", "train", "demo"),
        "train",
        bundle_root=str(work),
        dataset_dir=str(folder),
        val_interval=10**6,
        save_interval=10**6,
    )
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    epoch_length = len(parser.get_parsed_content("train#dataloader"))
    bundle = bundle_intervals(trainer, max(2, math.ceil(iterations / epoch_length)))
    network, loss = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    optimiser, prepare = parser.get_parsed_content("optimizer"), parser.get_parsed_content("prepare_batch")
    inferer = parser.get_parsed_content("inferer")

    def step(batch: dict) -> None:
        inputs, target, _, kwargs = prepare(batch, "cpu")
        optimiser.zero_grad()
        loss(inferer(inputs, network, **kwargs), target).backward()
        optimiser.step()

    bare = loop_intervals(parser.get_parsed_content("train#dataloader"), step, len(bundle) + 2)
    return {"bundle_s": statistics.median(bundle), "bare_s": statistics.median(bare)}


def bench_swin_ddpm(iterations: int = 150, num_samples: int = 24, batch_size: int = 8) -> tuple[str, dict[str, Any]]:
    """Run the arms (module docstring); returns (markdown, results with a ``targets`` list)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as work:
        train_dir = write_slice_phantoms("chest_xray", Path(work) / "train", n=96, size=SIZE, seed=0)
        real_dir = write_slice_phantoms("chest_xray", Path(work) / "real", n=num_samples, size=SIZE, seed=1)
        images, real = _images(train_dir), _images(real_dir)
        overhead = _bundle_overhead(train_dir, Path(work) / "bundle", 40)
    trunk = SmallConvFeatures(seed=0).eval()
    fid_of = _features(trunk)
    learned = LearnedRangeScheduler(T, "t_scaled_linear_beta")
    fixed = RespacedDDPMScheduler(T, "t_scaled_linear_beta", variance_type="fixed_small")
    arms = {
        "Swin U-Net, learned variance, gamma 0.01 (paper)": (SWIN, True, 0.01),
        "conv U-Net (matched parameters), learned variance, gamma 0.01": (_matched_conv_layout(), True, 0.01),
        "Swin U-Net, fixed variance (MSE only)": (SWIN, False, 0.0),
        "Swin U-Net, learned variance, gamma 4.0 (authors' code: T / 1000)": (SWIN, True, 4.0),
    }
    rows, results = [], {"arms": {}, "feature_extractor": EXTRACTOR, "iterations": iterations, "batch": batch_size}
    networks = {}
    for name, (layout, is_learned, gamma) in arms.items():
        set_determinism(seed=0)
        network = _network(layout, is_learned)
        if is_learned:
            loss, prepare = HybridDiffusionLoss(learned, vlb_weight=gamma), HybridLossPrepareBatch(T)
            sampler = LearnedRangeScheduler(T, "t_scaled_linear_beta")
        else:
            loss, prepare = torch.nn.MSELoss(), DiffusionPrepareBatch(T)
            sampler = RespacedDDPMScheduler(T, "t_scaled_linear_beta", variance_type="fixed_small")
        seconds = _train(network, fixed if not is_learned else learned, loss, prepare, images, iterations, batch_size)
        samples, per_sample = _sample(network, sampler, 50, num_samples)
        fid = feature_fid(real, samples, fid_of, batch_size=16)
        networks[name] = network
        results["arms"][name] = {
            "parameters": _parameters(network),
            "train_s_per_iteration": seconds,
            "fid_50_steps": fid,
            "sample_s_50_steps": per_sample,
        }
        rows.append([name, f"{_parameters(network) / 1e6:.3f} M", f"{seconds:.3f}", f"{fid:.3f}", f"{per_sample:.3f}"])
    paper = next(iter(arms))
    samples_500, per_sample_500 = _sample(
        networks[paper], LearnedRangeScheduler(T, "t_scaled_linear_beta"), 500, num_samples
    )
    fid_500 = feature_fid(real, samples_500, fid_of, batch_size=16)
    samples_dpm, per_sample_dpm = _sample(
        networks[paper], DPMSolverMultistepScheduler(T, "t_scaled_linear_beta", learned_variance=True), 50, num_samples
    )
    fid_dpm = feature_fid(real, samples_dpm, fid_of, batch_size=16)
    held_out = real[:16]
    ours = _vlb_bits(HybridDiffusionLoss(learned), networks[paper], held_out)
    monai = _vlb_bits(_MonaiLinearRange(learned), networks[paper], held_out)
    arm = results["arms"]
    results["paper_sampler_500_steps"] = {"fid": fid_500, "sample_s": per_sample_500}
    results["dpm_solver_50_steps"] = {"fid": fid_dpm, "sample_s": per_sample_dpm}
    results["vlb_bits_per_dim_per_step"] = {"log interpolation (ours)": ours, "linear interpolation (MONAI 1.6)": monai}
    results["bundle_overhead"] = overhead
    swin, conv = arm[paper]["fid_50_steps"], arm[list(arms)[1]]["fid_50_steps"]
    fixed_fid = arm[list(arms)[2]]["fid_50_steps"]
    overhead_ratio = overhead["bundle_s"] / overhead["bare_s"]
    results["targets"] = [
        {
            "name": "FID Swin / FID conv U-Net (matched parameters), 50 steps",
            "value": swin / conv,
            "target": "<= 1",
            "met": swin / conv <= 1.0,
        },
        {
            "name": "FID learned / FID fixed variance, 50 steps",
            "value": swin / fixed_fid,
            "target": "< 1",
            "met": swin / fixed_fid < 1.0,
        },
        {
            "name": "VLB bits/dim per step: ours (log) - MONAI (linear)",
            "value": ours - monai,
            "target": "< 0",
            "met": ours < monai,
        },
        {
            "name": "FID 50 steps / FID 500 steps",
            "value": swin / fid_500,
            "target": "<= 1.1",
            "met": swin / fid_500 <= 1.1,
        },
        {
            "name": "bundle trainer / bare loop, s per iteration",
            "value": overhead_ratio,
            "target": "<= 1.1",
            "met": overhead_ratio <= 1.1,
        },
    ]
    header = ["arm", "parameters", "train s/it", f"FID ({EXTRACTOR}), 50 steps", "s/sample"]
    extra = [
        [f"{paper}, 500 steps (the paper's sampler)", "", "", f"{fid_500:.3f}", f"{per_sample_500:.3f}"],
        [f"{paper}, DPM-Solver++ 50 steps (first C channels)", "", "", f"{fid_dpm:.3f}", f"{per_sample_dpm:.3f}"],
    ]
    targets = markdown_table(
        [[t["name"], f"{t['value']:.4f}", t["target"], "yes" if t["met"] else "no"] for t in results["targets"]],
        ["target", "value", "wanted", "met"],
    )
    markdown = "\n\n".join(
        [
            "# swin_ddpm benchmark (`python -m tools.bench swin_ddpm`)",
            f"32 x 32 chest-radiograph phantoms (96 training, {num_samples} held-out), T = 4000 "
            f"(t_scaled_linear_beta), {iterations} iterations of batch {batch_size}, AdamW 5e-4, raw weights (no "
            f"EMA), {num_samples} samples per arm, CPU. Every FID uses the same extractor: {EXTRACTOR}.",
            markdown_table(rows + extra, header),
            f"VLB per step on 16 held-out images, 40 evenly spaced t (bits/dim): log interpolation (ours) {ours:.4f}, "
            f"MONAI 1.6's linear interpolation {monai:.4f}.",
            f"Bundle trainer (train.yaml + demo.yaml) {overhead['bundle_s'] * 1000:.1f} ms per iteration, bare loop "
            f"{overhead['bare_s'] * 1000:.1f} ms (medians).",
            targets,
        ]
    )
    return markdown + "\n", results
