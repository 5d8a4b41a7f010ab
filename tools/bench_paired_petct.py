"""Benchmark of the paired_petct bundle (run through ``python -m tools.bench paired_petct``).

On 64 x 64 head-and-neck phantom slices (the bundle's ``demo.yaml`` overlay), CPU, side by side in one process:

1. training iterations/s of the paired trainer through the bundle (``monai.bundle`` workflow: PairedDiffusionTrainer,
   EMA, TensorBoard, progress bar) against a bare PyTorch loop doing the same step with the same three networks,
   data and batch, alternating rounds;
2. a fixed CPU training budget through the demo overlay, then ``num_samples`` triples with the full ancestral sampler
   (all T = 1000 steps) and two fast samplers (ancestral respaced to few steps, and DPM-Solver++ 2M), each without
   and with noise seeding (held-out real triples noised to 80 % of the schedule): seconds per triple, network evaluations and the pairing Dice
   (generated mask vs the generated PET's hot spot, ``common.paired_evaluation.pairing_metrics``); the same figure on
   the held-out real slices is the reference.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.networks.schedulers import DDPMScheduler

from common.noise import offset_noise
from common.paired_engine import stack_conditions
from common.paired_evaluation import pairing_metrics
from common.paired_sampling import from_unit_range
from tools.bench import _bundle_intervals, _configs, _IterationClock, _table, _workflow

__all__ = ["bench_paired_petct"]

BUNDLE = "paired_petct"
MODALITIES = ("ct", "pet", "mask")
FAST_SAMPLERS = {
    "respaced_ddpm": "respaced_ddpm (ancestral, posterior variance)",
    "dpm_solver": "dpm_solver (DPM-Solver++ 2M)",
}


def _bare_loop_intervals(
    network: torch.nn.ModuleDict, loader: Any, iterations: int, lr: float, timesteps: int, offset: float
) -> list[float]:
    """The reference: a plain PyTorch loop doing the paired training step (shared noise loss, one optimiser each)."""
    scheduler = DDPMScheduler(num_train_timesteps=timesteps)
    optimizers = {m: torch.optim.Adam(network[m].parameters(), lr=lr) for m in MODALITIES}
    clock, done = _IterationClock(), 0
    network.train()
    while done < iterations:
        clock.epoch_started()
        for batch in loader:
            t = torch.randint(0, timesteps, (batch["ct"].shape[0],))
            noise = {m: offset_noise(batch[m], offset) for m in MODALITIES}
            noisy = {m: scheduler.add_noise(batch[m], noise[m], t) for m in MODALITIES}
            loss = sum(
                torch.nn.functional.mse_loss(network[m](noisy[m], t, stack_conditions(noisy, MODALITIES, m)), noise[m])
                for m in MODALITIES
            )
            for optimizer in optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers.values():
                optimizer.step()
            clock.tick()
            done += 1
            if done >= iterations:
                break
    return clock.intervals


def _measure_overhead(work: Path, rounds: int, epochs: int) -> dict[str, Any]:
    overrides = {
        "bundle_root": str(work),
        "val_interval": 10**6,
        "save_interval": 0,
        "max_epochs": epochs,
        "perceptual_start_epoch": 10**6,
    }
    workflow = _workflow(_configs(BUNDLE, "train", "demo"), "train", **overrides)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    network_def = workflow.parser.get_parsed_content("network_def", instantiate=True)
    loader = workflow.parser.get_parsed_content("train#dataloader")
    lr = workflow.parser.get_parsed_content("learning_rate")
    timesteps = workflow.parser.get_parsed_content("num_train_timesteps")
    offset = workflow.parser.get_parsed_content("offset_noise_scale")
    bundle, bare = [], []
    for _ in range(rounds):
        bundle += _bundle_intervals(trainer, epochs)
        bare += _bare_loop_intervals(network_def, loader, epochs * len(loader), lr, timesteps, offset)
    bundle_s, bare_s = statistics.median(bundle), statistics.median(bare)
    return {
        "bundle_it_s": 1.0 / bundle_s,
        "bare_it_s": 1.0 / bare_s,
        "overhead": bundle_s / bare_s - 1.0,
        "iterations": (len(bundle), len(bare)),
        "batch_size": workflow.parser.get_parsed_content("batch_size"),
    }


def _train(work: Path, minutes: float) -> tuple[Path, dict[str, Any]]:
    """Train through the demo overlay until the CPU budget is spent (checked at epoch ends), then save model.pt."""
    workflow = _workflow(
        _configs(BUNDLE, "train", "demo"), "train", bundle_root=str(work), save_interval=0, max_epochs=10**4
    )
    trainer = workflow.parser.get_parsed_content("train#trainer")
    start = time.perf_counter()

    @trainer.on(Events.EPOCH_COMPLETED)
    def _stop_when_spent(engine) -> None:
        if time.perf_counter() - start >= 60.0 * minutes:
            engine.terminate()  # COMPLETED still fires: the checkpointer writes model.pt

    trainer.run()
    seconds = time.perf_counter() - start
    ckpt = Path(workflow.parser.get_parsed_content("ckpt_dir")) / "model.pt"
    return ckpt, {
        "train_seconds": seconds,
        "train_epochs": trainer.state.epoch,
        "train_iterations": trainer.state.iteration,
        "batch_size": workflow.parser.get_parsed_content("batch_size"),
        "perceptual_start_epoch": trainer.perceptual_start_epoch,
    }


def _sample(
    work: Path,
    ckpt: Path,
    name: str,
    sampler: str,
    steps: int,
    seed_fraction: float | None,
    num_samples: int,
    hot_spot_suv: float,
) -> dict[str, Any]:
    overrides = {
        "bundle_root": str(work),
        "ckpt_path": str(ckpt),
        "output_dir": str(work / f"samples_{sampler}_{steps}_{seed_fraction}"),
        "sampler": sampler,
        "num_inference_steps": steps,
        "seed_fraction": seed_fraction,
        "num_samples": num_samples,
        "sample_batch_size": num_samples,
    }
    workflow = _workflow(_configs(BUNDLE, "inference", "demo"), None, **overrides)
    sampling = workflow.parser.get_parsed_content("sampling")
    sampling.verbose = False
    scheduler = workflow.parser.get_parsed_content("scheduler")
    scheduler.set_timesteps(steps)
    evaluations = len(scheduler.timesteps)
    if seed_fraction is not None:
        start_t = sampling.inferer.seed_timestep(scheduler, seed_fraction)
        evaluations = int((scheduler.timesteps <= start_t).sum())
    start = time.perf_counter()
    samples = {m: [] for m in MODALITIES}
    for first in range(0, num_samples, sampling.batch_size):
        count = min(sampling.batch_size, num_samples - first)
        batch, _ = sampling.generate(first, count)
        for m in MODALITIES:
            samples[m].append(batch[m])
    seconds = (time.perf_counter() - start) / num_samples
    values = sampling.to_output_units({m: torch.cat(v) for m, v in samples.items()})
    pairing = pairing_metrics(values["ct"], values["pet"], values["mask"].float(), hot_spot_suv, -500.0)
    return {"sampler": name, "evaluations_per_network": evaluations, "s_per_triple": seconds, **pairing}


def _real_reference(work: Path, hot_spot_suv: float) -> dict[str, Any]:
    workflow = _workflow(_configs(BUNDLE, "evaluate", "demo"), None, bundle_root=str(work))
    real = workflow.parser.get_parsed_content("real_data")
    ct_window = workflow.parser.get_parsed_content("ct_window")
    pet_window = workflow.parser.get_parsed_content("pet_window")
    items = [real[i] for i in range(len(real))]
    ct = from_unit_range(torch.stack([i["ct"] for i in items]), ct_window)
    pet = from_unit_range(torch.stack([i["pet"] for i in items]), pet_window)
    mask = (torch.stack([i["mask"] for i in items]) > 0).float()
    return {"n_slices": len(items), **pairing_metrics(ct, pet, mask, hot_spot_suv, -500.0)}


def bench_paired_petct(
    train_minutes: float = 10.0,
    num_samples: int = 8,
    fast_steps: int = 25,
    seed_fraction: float = 0.8,
    hot_spot_suv: float = 4.0,
    overhead_rounds: int = 2,
    overhead_epochs: int = 1,
    workdir: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Run the paired_petct benchmark; returns (markdown, raw numbers)."""
    import platform

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench_paired_petct_") as tmp:
        work = Path(workdir or tmp)
        overhead = _measure_overhead(work / "overhead", overhead_rounds, overhead_epochs)
        quality = work / "quality"
        ckpt, training = _train(quality, train_minutes)
        args = (num_samples, hot_spot_suv)
        samplers = [_sample(quality, ckpt, "ddpm, full ancestral", "ddpm", 1000, None, *args)]
        for name, label in FAST_SAMPLERS.items():
            samplers.append(_sample(quality, ckpt, label, name, fast_steps, None, *args))
            samplers.append(
                _sample(quality, ckpt, f"{label}, seeded at {seed_fraction:g}", name, fast_steps, seed_fraction, *args)
            )
        reference = _real_reference(quality, hot_spot_suv)
    full = samplers[0]
    results = {"overhead": overhead, "training": training, "samplers": samplers, "real": reference}
    rows = [
        [
            s["sampler"],
            str(s["evaluations_per_network"]),
            f"{full['evaluations_per_network'] / s['evaluations_per_network']:.0f}x",
            f"{s['s_per_triple']:.2f}",
            f"{full['s_per_triple'] / s['s_per_triple']:.1f}x",
            f"{s['pairing_dice_mean']:.3f}",
            f"{s['pairing_dice_mean'] - full['pairing_dice_mean']:+.3f}",
            f"{s['mask_in_body']:.3f}",
            f"{s['empty_mask_fraction']:.2f}",
        ]
        for s in samplers
    ]
    command = (
        f"python -m tools.bench paired_petct --train_minutes {train_minutes:g} --num_samples {num_samples} "
        f"--fast_steps {fast_steps} --seed_fraction {seed_fraction:g}"
    )
    markdown = "\n\n".join(
        [
            "# paired_petct benchmark (paired CT / PET / mask diffusion, 64 x 64 head-and-neck phantom slices, CPU)",
            f"Command: `{command}`  \n"
            f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}; networks and sizes from `configs/demo.yaml`.",
            "## Training throughput of the paired trainer (three networks, same data and batch; median of "
            "per-iteration times, alternating rounds)",
            _table(
                [
                    [
                        f"{overhead['bundle_it_s']:.2f}",
                        f"{overhead['bare_it_s']:.2f}",
                        f"{100 * overhead['overhead']:+.1f} %",
                        str(overhead["batch_size"]),
                        f"{overhead['iterations'][0]} / {overhead['iterations'][1]}",
                    ]
                ],
                ["bundle it/s", "bare loop it/s", "bundle overhead", "batch", "iterations timed (bundle / bare)"],
            ),
            f"## Samplers after {training['train_seconds'] / 60:.1f} CPU minutes of training "
            f"(demo overlay: {training['train_epochs']} epochs, {training['train_iterations']} iterations of batch "
            f"{training['batch_size']}, perceptual loss from epoch {training['perceptual_start_epoch']}; EMA weights)",
            f"{num_samples} triples per sampler. Pairing Dice: generated mask vs the generated PET's hot spot (SUV > "
            f"{hot_spot_suv:g}), mean over triples where either is non-empty. The held-out real slices score "
            f"{reference['pairing_dice_mean']:.3f} ({reference['n_slices']} slices; mask in body "
            f"{reference['mask_in_body']:.3f}).",
            _table(
                rows,
                [
                    "sampler",
                    "evaluations per network",
                    "fewer evaluations",
                    "s / triple",
                    "speed-up",
                    "pairing Dice",
                    "vs full sampler",
                    "mask in body",
                    "empty masks",
                ],
            ),
        ]
    )
    return markdown + "\n", results
