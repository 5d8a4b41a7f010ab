"""Benchmark of the paired_petct bundle (run through ``python -m tools.bench paired_petct``).

On 64 x 64 head-and-neck phantom slices at 2 mm (the bundle's ``demo.yaml`` overlay), CPU, side by side in one
process:

1. training iterations/s of the paired trainer through the bundle (``monai.bundle`` workflow: PairedDiffusionTrainer,
   EMA, TensorBoard, progress bar) against a bare PyTorch loop doing the same step with the same three networks,
   data and batch, alternating rounds;
2. a fixed training budget through the demo overlay, counted in epochs (wall minutes differ threefold between hosts;
   the default is about 10 minutes on a host doing 1 paired iteration per second), then triples from the full
   ancestral sampler (all T = 1000 steps; ``full_samples`` of them, it is the expensive one) and from two fast
   samplers (ancestral respaced to few steps, and DPM-Solver++ 2M; ``num_samples`` each, at each of ``fast_steps``),
   each without and with noise seeding (real training triples, the inference default ``seed_split: train``, noised
   to ``seed_fraction`` of the schedule), and
   seeded with ``refine_rounds`` rounds of agreement refinement (the finished triple noised again to
   ``refine_fraction`` of the schedule and sampled down; its evaluations counted): seconds per triple, network
   evaluations and the pairing Dice (generated mask vs the generated PET's hot spot,
   ``common.metrics.pairing.pairing_metrics``) with its standard error, and the difference to the full sampler with
   the standard error of that difference. The same figure on the held-out real slices is the reference;
3. peak resident memory (fresh process per figure) of training (bundle vs bare loop) and of sampling one triple.

``--seed`` sets the training, data-split and sampling seed: a rerun with another seed is a second, independent draw
of the model and its samples (same phantoms).

The issue's target (seeded fast sampling at >= 20x fewer evaluations, pairing Dice no worse than the full sampler's) is
judged per seeded fast sampler by ``paired_petct_targets``: the JSON's ``targets`` list and the markdown's table.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.networks.schedulers import DDPMScheduler

from common.engines.prepare_batch import offset_noise
from common.inferers.paired import PairedDiffusionInferer
from common.io import atomic_write_text
from common.metrics.pairing import pairing_metrics
from common.networks.paired_denoiser import stack_conditions
from common.schedulers import RespacedDDPMScheduler
from common.workflows.paired_sampling import from_unit_range
from tools.bench.harness import (
    bundle_intervals,
    bundle_workflow,
    config_files,
    loop_intervals,
    markdown_table,
    mean_standard_error,
    target_entry,
    targets_markdown,
)
from tools.bench.memory import measure_peak_rss

__all__ = [
    "compare_to_reference",
    "generate_and_score",
    "target_verdict",
    "paired_petct_targets",
    "feedback_effect",
    "bench_paired_petct",
    "bench_paired_petct_feedback",
]


BUNDLE = "paired_petct"


MODALITIES = ("ct", "pet", "mask")


FAST_SAMPLERS = {
    "respaced_ddpm": "respaced_ddpm (ancestral, posterior variance)",
    "dpm_solver": "dpm_solver (DPM-Solver++ 2M)",
}


MIN_EVALUATION_REDUCTION = 20.0  # issue 3: seeded fast sampling at >= 20x fewer network evaluations than the full one


ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # compare pipelines, not glibc's heap growth (tools.bench.memory)


def _bare_loop_intervals(
    network: torch.nn.ModuleDict, loader: Any, iterations: int, lr: float, timesteps: int, offset: float
) -> list[float]:
    """The reference: a plain PyTorch loop doing the paired training step (shared noise loss, one optimiser each)."""
    scheduler = DDPMScheduler(num_train_timesteps=timesteps)
    optimizers = {m: torch.optim.Adam(network[m].parameters(), lr=lr) for m in MODALITIES}
    network.train()

    def step(batch: Any) -> None:
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

    return loop_intervals(loader, step, iterations)


def _configs(stage: str, feedback: bool) -> list[str]:
    """The config files of ``stage`` (train | inference | evaluate) at demo size, with the ``feedback.yaml`` overlay
    (the project's condition feedback path) when ``feedback``."""
    return config_files(BUNDLE, stage, "demo", *(("feedback",) if feedback else ()))


def _timing_workflow(work: str | Path, epochs: int, perceptual: bool = False, feedback: bool = True) -> Any:
    """The demo training workflow without validation or periodic checkpoints, perceptual loss from epoch 1 or never."""
    overrides = {
        "bundle_root": str(work),
        "val_interval": 10**6,
        "save_interval": 0,
        "max_epochs": epochs,
        "perceptual_start_epoch": 1 if perceptual else 10**6,
    }
    return bundle_workflow(_configs("train", feedback), "train", **overrides)


def _bare_loop(parser: Any, network: torch.nn.ModuleDict, iterations: int) -> list[float]:
    """:func:`_bare_loop_intervals` with the data, learning rate and schedule of the workflow's ``parser``."""
    return _bare_loop_intervals(
        network,
        parser.get_parsed_content("train#dataloader"),
        iterations,
        parser.get_parsed_content("learning_rate"),
        parser.get_parsed_content("num_train_timesteps"),
        parser.get_parsed_content("offset_noise_scale"),
    )


def _measure_overhead(work: Path, rounds: int, epochs: int, feedback: bool) -> dict[str, Any]:
    workflow = _timing_workflow(work, epochs, feedback=feedback)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    network_def = workflow.parser.get_parsed_content("network_def", instantiate=True)
    epoch_length = len(workflow.parser.get_parsed_content("train#dataloader"))
    bundle, bare = [], []
    for _ in range(rounds):
        bundle += bundle_intervals(trainer, epochs)
        bare += _bare_loop(workflow.parser, network_def, epochs * epoch_length)
    bundle_s, bare_s = statistics.median(bundle), statistics.median(bare)
    return {
        "bundle_it_s": 1.0 / bundle_s,
        "bare_it_s": 1.0 / bare_s,
        "overhead": bundle_s / bare_s - 1.0,
        "iterations": (len(bundle), len(bare)),
        "batch_size": workflow.parser.get_parsed_content("batch_size"),
    }


def _train(
    work: Path, epochs: int, seed: int = 0, feedback: bool = True, perceptual_start_epoch: int | None = None
) -> tuple[Path, dict[str, Any]]:
    """Train ``epochs`` epochs through the demo overlay (EMA weights saved as model.pt) and time it; ``seed`` is the
    training and data-split seed, ``feedback`` adds the ``feedback.yaml`` overlay, ``perceptual_start_epoch`` (None:
    the demo's) scales the perceptual loss's start to a shorter budget."""
    overrides = {"bundle_root": str(work), "save_interval": 0, "max_epochs": int(epochs), "seed": int(seed)}
    if perceptual_start_epoch is not None:
        overrides["perceptual_start_epoch"] = int(perceptual_start_epoch)
    workflow = bundle_workflow(_configs("train", feedback), "train", **overrides)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    ckpt = Path(workflow.parser.get_parsed_content("ckpt_dir")) / "model.pt"
    network = workflow.parser.get_parsed_content("local_network")
    return ckpt, {
        "condition_feedback": workflow.parser.get_parsed_content("condition_feedback"),
        "parameters": sum(p.numel() for p in network.parameters()),
        "train_seconds": seconds,
        "train_epochs": trainer.state.epoch,
        "train_iterations": trainer.state.iteration,
        "batch_size": workflow.parser.get_parsed_content("batch_size"),
        "perceptual_start_epoch": trainer.perceptual_start_epoch,
    }


def compare_to_reference(sampler: dict[str, Any], reference: dict[str, Any]) -> tuple[float, float]:
    """(mean pairing Dice difference to ``reference``, its standard error): independent samples, errors add in
    quadrature."""
    difference = sampler["pairing_dice_mean"] - reference["pairing_dice_mean"]
    return difference, math.hypot(sampler["pairing_dice_se"], reference["pairing_dice_se"])


def _sampling(
    work: Path,
    ckpt: Path,
    out: str,
    sampler: str,
    steps: int,
    seed_fraction: float | None,
    batch: int,
    refine: tuple[int, float] = (0, 0.1),
    seed: int = 0,
    feedback: bool = True,
    extra: dict[str, Any] | None = None,
) -> tuple[Any, int]:
    """The inference workflow's sampling object for one sampler, and its network evaluations per triple.

    ``refine``: (agreement refinement rounds, fraction of the schedule); ``seed``: sampling and data-split seed;
    ``feedback``: the network was trained with the ``feedback.yaml`` overlay; ``extra``: further config overrides."""
    overrides = {
        "seed": int(seed),
        "seed_of_split": int(seed),
        "refine_rounds": int(refine[0]),
        "refine_fraction": float(refine[1]),
        "bundle_root": str(work),
        "ckpt_path": str(ckpt),
        "output_dir": out,
        "sampler": sampler,
        "num_inference_steps": steps,
        "seed_fraction": seed_fraction,
        "num_samples": batch,
        "sample_batch_size": batch,
        **(extra or {}),
    }
    workflow = bundle_workflow(_configs("inference", feedback), None, **overrides)
    sampling = workflow.parser.get_parsed_content("sampling")
    sampling.verbose = False
    scheduler = workflow.parser.get_parsed_content("scheduler")
    scheduler.set_timesteps(steps)
    evaluations = len(scheduler.timesteps)
    if seed_fraction is not None:
        start_t = sampling.inferer.seed_timestep(scheduler, seed_fraction)
        evaluations = int((scheduler.timesteps <= start_t).sum())
    evaluations += sampling.inferer.refinement_evaluations(scheduler, *refine)
    return sampling, evaluations


def _sample(
    work: Path,
    ckpt: Path,
    name: str,
    sampler: str,
    steps: int,
    seed_fraction: float | None,
    refine: tuple[int, float],
    num_samples: int,
    hot_spot_suv: float,
    seed: int,
    feedback: bool = True,
) -> dict[str, Any]:
    out = str(work / f"samples_{sampler}_{steps}_{seed_fraction}_{refine[0]}")
    sampling, evaluations = _sampling(
        work, ckpt, out, sampler, steps, seed_fraction, num_samples, refine, seed, feedback
    )
    return {
        "sampler": name,
        "num_triples": num_samples,
        "seed_fraction": seed_fraction,
        "refine_rounds": refine[0],
        "evaluations_per_network": evaluations,
        **generate_and_score(sampling, num_samples, hot_spot_suv),
    }


def generate_and_score(sampling: Any, num_samples: int, hot_spot_suv: float) -> dict[str, Any]:
    """Generate ``num_samples`` triples (sample indices 0.., in the sampling object's batches) and score their pairing:
    seconds per triple, triples scored, the standard error of the pairing Dice and ``pairing_metrics``' figures."""
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
    scored, standard_error = mean_standard_error(pairing, num_samples)
    return {"s_per_triple": seconds, "triples_scored": scored, "pairing_dice_se": standard_error, **pairing}


def _peak_training(work: str, bundle: bool, iterations: int, perceptual: bool = False, feedback: bool = True) -> None:
    """Run ``iterations`` training iterations (bundle trainer, with or without the perceptual loss, or the bare loop,
    noise loss only); in a fresh process, for :func:`tools.bench.memory.measure_peak_rss`."""
    workflow = _timing_workflow(work, 1, perceptual, feedback)
    if not bundle:
        _bare_loop(workflow.parser, workflow.parser.get_parsed_content("network_def", instantiate=True), iterations)
        return
    trainer = workflow.parser.get_parsed_content("train#trainer")

    @trainer.on(Events.ITERATION_COMPLETED(once=iterations))
    def _stop(engine) -> None:
        engine.terminate()

    trainer.run()


def _peak_sampling(
    work: str, ckpt: str, sampler: str, steps: int, seed_fraction: float | None, feedback: bool = True
) -> None:
    """Generate one triple with one sampler; in a fresh process, for :func:`tools.bench.memory.measure_peak_rss`."""
    sampling, _ = _sampling(
        Path(work), Path(ckpt), work + "/peak_samples", sampler, steps, seed_fraction, 1, feedback=feedback
    )
    sampling.generate(0, 1)


def _memory(
    overhead_dir: Path,
    quality: Path,
    ckpt: Path,
    configs: list[tuple[str, str, int, float | None]],
    iterations: int,
    feedback: bool,
) -> dict[str, Any]:
    """Peak resident memory (MiB above a fresh process's baseline): training (bundle and bare loop on the noise loss,
    and the bundle with the perceptual loss on) and one triple per sampler."""
    train = {
        label: measure_peak_rss(
            _peak_training,
            str(overhead_dir),
            bundle,
            iterations,
            perceptual,
            feedback,
            keep_result=False,
            env=ALLOCATOR,
        )[1]
        for label, bundle, perceptual in (("bundle", True, False), ("bare", False, False), ("perceptual", True, True))
    }
    sampling = [
        {
            "sampler": name,
            "mib": measure_peak_rss(
                _peak_sampling,
                str(quality),
                str(ckpt),
                sampler,
                steps,
                fraction,
                feedback,
                keep_result=False,
                env=ALLOCATOR,
            )[1],
        }
        for name, sampler, steps, fraction in configs
    ]
    return {"train_iterations": iterations, "train_mib": train, "sampling_mib": sampling}


def _real_reference(work: Path, hot_spot_suv: float, seed: int) -> dict[str, Any]:
    workflow = bundle_workflow(_configs("evaluate", False), None, bundle_root=str(work), seed=int(seed))
    real = workflow.parser.get_parsed_content("real_data")
    ct_window = workflow.parser.get_parsed_content("ct_window")
    pet_window = workflow.parser.get_parsed_content("pet_window")
    items = [real[i] for i in range(len(real))]
    ct = from_unit_range(torch.stack([i["ct"] for i in items]), ct_window)
    pet = from_unit_range(torch.stack([i["pet"] for i in items]), pet_window)
    mask = (torch.stack([i["mask"] for i in items]) > 0).float()
    return {"n_slices": len(items), **pairing_metrics(ct, pet, mask, hot_spot_suv, -500.0)}


def _sampler_rows(samplers: list[dict[str, Any]], full: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in samplers:
        difference, difference_se = compare_to_reference(s, full)
        versus = "reference" if s is full else f"{difference:+.3f} +- {difference_se:.3f}"
        rows.append(
            [
                s["sampler"],
                str(s["evaluations_per_network"]),
                f"{full['evaluations_per_network'] / s['evaluations_per_network']:.0f}x",
                f"{s['s_per_triple']:.2f}",
                f"{full['s_per_triple'] / s['s_per_triple']:.1f}x",
                f"{s['triples_scored']} / {s['num_triples']}",
                f"{s['pairing_dice_mean']:.3f} +- {s['pairing_dice_se']:.3f}",
                versus,
                f"{s['mask_in_body']:.3f}",
                f"{s['empty_mask_fraction']:.2f}",
            ]
        )
    return rows


def _seeded_comparisons(
    samplers: list[dict[str, Any]], full: dict[str, Any], min_reduction: float
) -> list[tuple[dict[str, Any], float, float, float, bool]]:
    """Per seeded fast sampler: (its row, evaluation reduction vs the full sampler, pairing Dice difference to the
    full sampler, the difference's standard error, the issue's target met: >= ``min_reduction`` x fewer evaluations
    and a mean pairing Dice no lower than the full sampler's)."""
    comparisons = []
    for s in samplers:
        if s is full or s.get("seed_fraction") is None:
            continue
        reduction = full["evaluations_per_network"] / s["evaluations_per_network"]
        difference, difference_se = compare_to_reference(s, full)
        comparisons.append((s, reduction, difference, difference_se, reduction >= min_reduction and difference >= 0.0))
    return comparisons


def _in_errors(difference: float, difference_se: float) -> str:
    return f"{difference / difference_se:+.1f}" if difference_se > 0 else "n/a"


def target_verdict(
    samplers: list[dict[str, Any]], full: dict[str, Any], min_reduction: float = MIN_EVALUATION_REDUCTION
) -> str:
    """One sentence per seeded fast sampler: the issue's target (>= ``min_reduction`` x fewer evaluations than the full
    sampler, pairing Dice no worse than the full sampler's mean), with the difference in standard errors."""
    return "\n".join(
        f"- {s['sampler']}: {reduction:.0f}x fewer evaluations, pairing Dice {difference:+.3f} "
        f"({_in_errors(difference, difference_se)} standard errors) vs the full sampler: target "
        f"{'met' if met else 'not met'}."
        for s, reduction, difference, difference_se, met in _seeded_comparisons(samplers, full, min_reduction)
    )


def paired_petct_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's target from the figures of :func:`bench_paired_petct` (``results`` as it returns them or as
    ``benchmarks/results/paired_petct.json`` holds them; ``samplers[0]`` is the full sampler): one entry per seeded
    fast sampler of the run, as :func:`target_verdict` judges it. "No worse than the full sampler's" is read as a mean
    pairing Dice at least the full sampler's (the difference's standard errors are in the name, not in the verdict);
    means are over the scored triples (mask or hot spot non-empty)."""
    samplers = results["samplers"]
    return [
        target_entry(
            f"seeded fast sampling, {s['sampler']} ({reduction:.0f}x fewer evaluations per network): pairing Dice "
            f"minus the full sampler's ('no worse' read as a mean difference >= 0; here "
            f"{_in_errors(difference, difference_se)} standard errors)",
            difference,
            f">= 0 at >= {MIN_EVALUATION_REDUCTION:g}x fewer evaluations",
            met,
        )
        for s, reduction, difference, difference_se, met in _seeded_comparisons(
            samplers, samplers[0], MIN_EVALUATION_REDUCTION
        )
    ]


def _flag(name: str, value: Any) -> bool:
    """A yes/no option as given in Python or on the command line (fire passes ``--x false`` as a bool or a string)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _steps_argument(step_counts: list[int]) -> str:
    """``--fast_steps`` as typed on the command line: one number, or a quoted list."""
    return str(step_counts[0]) if len(step_counts) == 1 else '"[' + ",".join(str(n) for n in step_counts) + ']"'


def bench_paired_petct(
    train_epochs: int = 40,
    num_samples: int = 32,
    full_samples: int = 16,
    fast_steps: int | Sequence[int] = (25, 50),
    seed_fraction: float = 0.8,
    refine_rounds: int = 2,
    refine_fraction: float = 0.1,
    seed: int = 0,
    hot_spot_suv: float = 4.0,
    overhead_rounds: int = 2,
    overhead_epochs: int = 1,
    memory_iterations: int = 3,
    feedback: bool = True,
    workdir: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Run the paired_petct benchmark; returns (markdown, raw numbers).

    ``num_samples`` triples per fast sampler, ``full_samples`` from the full ancestral sampler (1000 steps of three
    networks: the cost of the run). ``fast_steps``: one step count or several (each fast sampler runs at each; the
    default 25 and 50 span 40x-20x fewer evaluations, the target's range). ``refine_rounds`` > 0 adds, per seeded fast
    sampler, a row with that many agreement-refinement rounds back to ``refine_fraction`` of the schedule (their
    evaluations counted). ``seed``: training, data-split and sampling seed (a second seed reruns on the same phantoms
    with another split, training and sampling noise; the overhead and memory figures keep seed 0).
    ``workdir`` keeps the trained model and the samples.
    """
    import platform

    step_counts = [int(fast_steps)] if isinstance(fast_steps, (int, float, str)) else [int(n) for n in fast_steps]
    if not step_counts or min(step_counts) < 1:
        raise ValueError(f"fast_steps must be a positive number of steps or a list of them, got {fast_steps}")
    if int(train_epochs) < 1:
        raise ValueError(f"train_epochs must be a positive number of epochs, got {train_epochs}")
    for name, value in (("num_samples", num_samples), ("full_samples", full_samples)):
        if int(value) < 2:
            raise ValueError(f"{name} must be at least 2 (a standard error needs two triples), got {value}")
    if int(refine_rounds) != refine_rounds or refine_rounds < 0 or not 0.0 < float(refine_fraction) < 1.0:
        raise ValueError(
            f"refine_rounds must be a whole number >= 0 and refine_fraction in (0, 1), got {refine_rounds} and "
            f"{refine_fraction}"
        )
    refine = (int(refine_rounds), float(refine_fraction))
    if refine[0]:  # a fraction below every kept timestep of a step count fails here, not after training
        inferer = PairedDiffusionInferer(DDPMScheduler(1000))
        for steps in step_counts:
            grid = RespacedDDPMScheduler(1000)
            grid.set_timesteps(steps)
            try:
                inferer.refinement_start(grid, *refine)
            except ValueError as error:
                raise ValueError(f"--refine_fraction with --fast_steps {steps}: {error}") from None
    torch.manual_seed(int(seed))
    feedback = _flag("feedback", feedback)
    with tempfile.TemporaryDirectory(prefix="bench_paired_petct_") as tmp:
        work = Path(workdir or tmp)
        overhead = _measure_overhead(work / "overhead", overhead_rounds, overhead_epochs, feedback)
        quality = work / "quality"
        ckpt, training = _train(quality, train_epochs, seed, feedback)
        off = (0, refine[1])
        configs = [("ddpm, full ancestral", "ddpm", 1000, None, off)]
        for steps in step_counts:
            for name, label in FAST_SAMPLERS.items():
                seeded = f"{label}, {steps} steps, seeded at {seed_fraction:g}"
                configs.append((f"{label}, {steps} steps", name, steps, None, off))
                configs.append((seeded, name, steps, seed_fraction, off))
                if refine[0]:
                    configs.append(
                        (f"{seeded}, refined {refine[0]}x at {refine[1]:g}", name, steps, seed_fraction, refine)
                    )
        samplers = [  # the first is the full sampler
            _sample(quality, ckpt, *config, num_samples if index else full_samples, hot_spot_suv, seed, feedback)
            for index, config in enumerate(configs)
        ]
        reference = _real_reference(quality, hot_spot_suv, seed)
        # memory does not depend on the number of steps or refinement: the full sampler and the first step count
        plain = [c[:4] for c in configs if not c[4][0]]
        memory = _memory(
            work / "overhead", quality, ckpt, plain[: 1 + 2 * len(FAST_SAMPLERS)], memory_iterations, feedback
        )
    full = samplers[0]
    results = {"overhead": overhead, "training": training, "samplers": samplers, "real": reference, "memory": memory}
    results["targets"] = paired_petct_targets(results)
    command = (
        f"python -m tools.bench paired_petct --train_epochs {train_epochs} --num_samples {num_samples} "
        f"--full_samples {full_samples} --fast_steps {_steps_argument(step_counts)} --seed_fraction {seed_fraction:g} "
        f"--refine_rounds {refine[0]} --refine_fraction {refine[1]:g} --seed {seed} --feedback {feedback}"
    )
    markdown = "\n\n".join(
        [
            "# paired_petct benchmark (paired CT / PET / mask diffusion, 64 x 64 head-and-neck phantom slices at 2 mm, "
            "CPU)",
            f"Command: `{command}`  \n"
            f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}; networks and sizes from `configs/demo.yaml`"
            + (", condition feedback on (`configs/feedback.yaml`)." if feedback else ", the paper's network."),
            "## Training throughput of the paired trainer (three networks, same data and batch; median of "
            "per-iteration times, alternating rounds)",
            markdown_table(
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
            f"## Samplers after {training['train_epochs']} epochs of training ({training['train_iterations']} "
            f"iterations of batch {training['batch_size']}, {training['train_seconds'] / 60:.1f} CPU minutes here; "
            f"demo overlay, perceptual loss from epoch {training['perceptual_start_epoch']}; EMA weights)",
            f"Pairing Dice: generated mask vs the generated PET's hot spot (SUV > {hot_spot_suv:g}), mean +- standard "
            "error over the triples where either is non-empty (triples scored / generated); the difference to the "
            "full sampler carries the standard error of a difference of independent means. The held-out real "
            f"slices score {reference['pairing_dice_mean']:.3f} ({reference['n_slices']} slices; mask in body "
            f"{reference['mask_in_body']:.3f}). Refined rows: the seeded sampler, then the finished triple noised "
            "again to the largest kept timestep at or below the given fraction of the schedule and sampled down "
            "from there, the given number of times (`refine_rounds`; evaluations included).",
            markdown_table(
                _sampler_rows(samplers, full),
                [
                    "sampler",
                    "evaluations per network",
                    "fewer evaluations",
                    "s / triple",
                    "speed-up",
                    "triples scored",
                    "pairing Dice",
                    "vs full sampler",
                    "mask in body",
                    "empty masks",
                ],
            ),
            "Target (seeded fast sampling, >= 20x fewer evaluations, pairing Dice no worse than the full sampler's):\n"
            + target_verdict(samplers, full),
            "## Peak memory (resident, MiB above a fresh process's baseline; fresh process per figure)",
            f"Training: {memory['train_iterations']} iterations of batch {training['batch_size']}, config parsing and "
            "data loading included. Sampling: one triple (batch 1), loading the checkpoint included.",
            markdown_table(
                [
                    [
                        f"{memory['train_mib']['bundle']:.0f}",
                        f"{memory['train_mib']['bare']:.0f}",
                        f"{memory['train_mib']['bundle'] / memory['train_mib']['bare']:.2f}x",
                        f"{memory['train_mib']['perceptual']:.0f}",
                    ]
                ],
                ["bundle trainer", "bare loop", "bundle / bare", "bundle trainer, perceptual loss on"],
            ),
            markdown_table(
                [
                    [m["sampler"], f"{m['mib']:.0f}", f"{m['mib'] / memory['sampling_mib'][0]['mib']:.2f}x"]
                    for m in memory["sampling_mib"]
                ],
                ["sampler", "peak MiB, one triple", "vs full sampler"],
            ),
            targets_markdown(results["targets"]),
        ]
    )
    return markdown + "\n", results


FEEDBACK_SIDES = {"off": False, "on": True}


def feedback_effect(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """The effect of the feedback path on the pairing Dice: (on - off), its standard error (independent samples) and
    the difference in standard errors; ``within_noise`` when that is under 2 (or undefined)."""
    difference, difference_se = compare_to_reference(on, off)
    z = difference / difference_se if difference_se > 0 else float("nan")
    return {
        "difference": difference,
        "difference_se": difference_se,
        "standard_errors": z,
        "within_noise": not abs(z) >= 2.0,
    }


def _feedback_side(work: Path, side: str, settings: dict[str, Any], hot_spot_suv: float) -> dict[str, Any]:
    """Train and sample one side of the feedback A/B, or read it back from ``work/<side>/result.json`` when an earlier
    run with the same ``settings`` left it there (so the A/B can run as two shorter jobs)."""
    side_dir = work / f"feedback_{side}"
    cached = side_dir / "result.json"
    if cached.is_file():
        result = json.loads(cached.read_text())
        if result.get("settings") == settings:
            return {**result, "reused": True}
    feedback = FEEDBACK_SIDES[side]
    ckpt, training = _train(
        side_dir, settings["train_epochs"], settings["seed"], feedback, settings["perceptual_start_epoch"]
    )
    sample = _sample(
        side_dir,
        ckpt,
        f"feedback {side}",
        settings["sampler"],
        settings["steps"],
        settings["seed_fraction"],
        (0, 0.1),
        settings["num_samples"],
        hot_spot_suv,
        settings["seed"],
        feedback,
    )
    result = {"side": side, "settings": settings, "training": training, "sampling": sample}
    side_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cached, json.dumps(result, indent=2, default=str), overwrite=True)
    return {**result, "reused": False}


def bench_paired_petct_feedback(
    train_epochs: int = 14,
    num_samples: int = 32,
    sampler: str = "respaced_ddpm",
    steps: int = 50,
    seed_fraction: float | None = 0.8,
    perceptual_start_epoch: int | None = None,
    sides: str | Sequence[str] = ("off", "on"),
    seed: int = 0,
    hot_spot_suv: float = 4.0,
    workdir: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """A/B of the project's condition feedback path (``feedback.yaml``) against the paper's network at demo size.

    Both sides train ``train_epochs`` epochs through the demo overlay on the same phantoms, split and ``seed``
    (perceptual loss from ``perceptual_start_epoch``, default half the budget as in the demo's 20 of 40), then draw
    ``num_samples`` triples with the same sampler (default the bundle's ``seeded.yaml``: respaced ancestral, 50
    steps, seeded at 0.8) and seed; the table gives each side's pairing Dice with its standard error and the
    difference with the standard error of a difference of independent means. ``sides``: "off", "on" or both; with a
    ``workdir`` a side measured by an earlier run with the same settings is read back, so the A/B can run as two
    jobs (``--sides off``, then both). Returns (markdown, raw numbers).
    """
    import platform

    chosen = [sides] if isinstance(sides, str) else list(sides)
    if not chosen or any(side not in FEEDBACK_SIDES for side in chosen):
        raise ValueError(f"sides must be 'off', 'on' or both, got {sides!r}")
    if int(train_epochs) < 1:
        raise ValueError(f"train_epochs must be a positive number of epochs, got {train_epochs}")
    if int(num_samples) < 2:
        raise ValueError(f"num_samples must be at least 2 (a standard error needs two triples), got {num_samples}")
    if sampler not in FAST_SAMPLERS and sampler != "ddpm":
        raise ValueError(f"sampler must be one of {['ddpm', *FAST_SAMPLERS]}, got {sampler!r}")
    start = int(train_epochs) // 2 + 1 if perceptual_start_epoch is None else int(perceptual_start_epoch)
    settings = {
        "train_epochs": int(train_epochs),
        "num_samples": int(num_samples),
        "sampler": sampler,
        "steps": int(steps),
        "seed_fraction": seed_fraction,
        "perceptual_start_epoch": start,
        "seed": int(seed),
    }
    with tempfile.TemporaryDirectory(prefix="bench_paired_petct_feedback_") as tmp:
        work = Path(workdir or tmp)
        measured = {
            side: _feedback_side(work, side, settings, hot_spot_suv) for side in FEEDBACK_SIDES if side in chosen
        }
        reference = _real_reference(work / f"feedback_{chosen[0]}", hot_spot_suv, seed)
    rows = [
        [
            side,
            f"{m['training']['parameters'] / 1e6:.2f} M",
            f"{m['training']['train_seconds'] / 60:.1f}",
            f"{m['sampling']['triples_scored']} / {m['sampling']['num_triples']}",
            f"{m['sampling']['pairing_dice_mean']:.3f} +- {m['sampling']['pairing_dice_se']:.3f}",
            f"{m['sampling']['mask_in_body']:.3f}",
            f"{m['sampling']['empty_mask_fraction']:.2f}",
            f"{m['sampling']['s_per_triple']:.2f}",
        ]
        for side, m in measured.items()
    ]
    effect = feedback_effect(measured["off"]["sampling"], measured["on"]["sampling"]) if len(measured) == 2 else None
    if effect is None:
        verdict = "Only one side measured: no comparison (run again with both sides and the same --workdir)."
    else:
        reading = (
            "within noise (under 2 standard errors): no measurable effect at this budget"
            if effect["within_noise"]
            else ("feedback better" if effect["difference"] > 0 else "feedback worse")
            + " by more than 2 standard errors"
        )
        verdict = (
            f"Feedback on - off: pairing Dice {effect['difference']:+.3f} +- {effect['difference_se']:.3f} "
            f"({effect['standard_errors']:+.1f} standard errors): {reading}."
        )
        few = min(m["sampling"]["triples_scored"] for m in measured.values())
        if few < 10:
            verdict += (
                f" Few triples scored ({few} on one side; the others have neither a mask nor a hot spot): the standard "
                "errors are rough, and a side whose scored triples agree has a standard error of 0 that understates "
                "its spread."
            )
    fraction = "unseeded" if seed_fraction is None else f"seeded at {seed_fraction:g}"
    label = FAST_SAMPLERS.get(sampler, "ddpm, full ancestral")
    command = (
        f"python -m tools.bench paired_petct_feedback --train_epochs {settings['train_epochs']} --num_samples "
        f"{settings['num_samples']} --sampler {sampler} --steps {settings['steps']} --seed_fraction {seed_fraction} "
        f"--perceptual_start_epoch {start} --seed {seed}"
    )
    training = next(iter(measured.values()))["training"]
    markdown = "\n\n".join(
        [
            "# paired_petct: condition feedback (`feedback.yaml`, project addition) vs the paper's network",
            f"Command: `{command}`"
            + (
                " (each side measured by its own run, `--sides off` / `--sides on` with `--workdir W`, then both read "
                "back by this command with the same `--workdir W`)"
                if workdir
                else ""
            )
            + f"  \nMachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}; networks and sizes from `configs/demo.yaml`.",
            f"Budget, the same for both sides: {settings['train_epochs']} epochs ({training['train_iterations']} "
            f"iterations of batch {training['batch_size']}; the demo trains 40), perceptual loss from epoch {start}, "
            f"seed {seed} (phantoms, split, sampling noise); EMA weights; {settings['num_samples']} triples each from "
            f"{label}, {settings['steps']} steps, {fraction}. The initial weights and batch order differ between the "
            "sides by the feedback layers' extra random draws. A short budget: the figures compare the two "
            "networks at this budget, not fully trained models. Training minutes and s / triple are wall-clock "
            "times of separate runs on a shared machine (other jobs' load moves them); the pairing figures do not "
            "depend on them.",
            f"Pairing Dice: generated mask vs the generated PET's hot spot (SUV > {hot_spot_suv:g}), mean +- standard "
            "error over the triples where either is non-empty (triples scored / generated). The held-out real "
            f"slices score {reference['pairing_dice_mean']:.3f} ({reference['n_slices']} slices).",
            markdown_table(
                rows,
                [
                    "feedback",
                    "parameters (3 networks)",
                    "training minutes",
                    "triples scored",
                    "pairing Dice",
                    "mask in body",
                    "empty masks",
                    "s / triple",
                ],
            ),
            verdict,
            "Target: none set by the issue (it asks for the measured effect); the `targets` entry records that both "
            "sides were measured and scored.",
        ]
    )
    both_scored = len(measured) == 2 and all(m["sampling"]["triples_scored"] >= 2 for m in measured.values())
    results = {
        "settings": settings,
        "sides": measured,
        "real": reference,
        "effect": effect,
        "targets": [
            {
                "name": "feedback effect measured (no numeric target set): pairing Dice on - off, in standard errors",
                "value": None if effect is None else effect["standard_errors"],
                "target": "both sides measured with >= 2 scored triples each",
                "met": both_scored,
            }
        ],
    }
    return markdown + "\n", results
