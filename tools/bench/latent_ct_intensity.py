"""A/B of the latent_ct intensity scale (run through ``python -m tools.bench latent_ct_intensity``).

The thesis trained on the HU values themselves ("not scaled between 0 and 1 but on its original scale between
-1000,1000 Hounsfield units", Ch. 8) with the loss ``L1 + 1e-6 KL + 1e-3 perceptual + 1e-2 adversarial``; the base
configs map the HU window to [-1, 1] with the same weights (``intensity_range``), and ``configs/hu_scale.yaml`` is
the thesis' scale. This bench trains both arms the same way at the ``demo.yaml`` sizes (the same phantoms, seed,
epochs and sampler; the random perceptual extractor of the demo), samples each, and compares, all in HU:

- reconstruction L1 and MSE in HU of every phantom through each arm's autoencoder (and the held-out case of
  ``evaluate.yaml``);
- the 2D-slice latent FID (``LatentEvaluation.latent_fid``, axial latent slices averaged to ``fid_pool`` squared)
  of each arm's samples against the real phantoms, measured with EACH arm's encoder (an arm's own latents alone
  would compare two different feature spaces);
- the samples' HU statistics against the real phantoms' (the outputs come back in HU for both arms).

Each arm is one call (``--intensity unit`` or ``--intensity hu``, a few minutes each) that leaves its models, samples
and figures under ``--workdir``; ``--intensity both`` runs the arms not there yet and writes the comparison with a
``targets`` list computed from the figures.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tools.bench.harness import bundle_workflow, config_files, markdown_table
from tools.bench.latent_ct import train_stage

__all__ = ["bench_latent_ct_intensity"]


BUNDLE = "latent_ct"


ARMS = {"unit": (), "hu": ("hu_scale",)}  # overlays after demo.yaml; unit = the base configs' [-1, 1]


ARM_LABELS = {"unit": "[-1, 1] (base configs)", "hu": "HU (hu_scale.yaml, the thesis)"}


def _names(stage: tuple[str, ...], arm: str) -> list[str]:
    return config_files(BUNDLE, *stage, "demo", *ARMS[arm])


def _sample(arm_root: Path, arm: str, seed: int, num_samples: int, sampler: str, steps: int) -> dict[str, Any]:
    workflow = bundle_workflow(
        _names(("inference",), arm),
        None,
        bundle_root=str(arm_root),
        output_dir=str(arm_root / "samples"),
        seed=seed,
        num_samples=num_samples,
        sampler=sampler,
        num_inference_steps=steps,
    )
    start = time.perf_counter()
    workflow.run()
    return {"seconds": time.perf_counter() - start}


def _evaluation(encoder_root: Path, encoder_arm: str, sample_dir: str, seed: int, fid_pool: int) -> Any:
    """``evaluate.yaml``'s LatentEvaluation with the autoencoder of ``encoder_arm`` on the samples in ``sample_dir``."""
    (encoder_root / "eval").mkdir(parents=True, exist_ok=True)
    workflow = bundle_workflow(
        _names(("evaluate",), encoder_arm),
        None,
        bundle_root=str(encoder_root),
        dataset_dir=str(encoder_root / "data" / "phantoms_thorax_48"),
        sample_dir=sample_dir,
        output_dir=str(encoder_root / "eval"),
        seed=seed,
        fid_pool=fid_pool,
    )
    return workflow.parser.get_parsed_content("evaluation")


@torch.no_grad()
def _reconstruction_all(evaluation: Any) -> dict[str, float]:
    """L1 / MSE in HU of every real phantom through the arm's autoencoder (training and held-out cases)."""
    l1, mse = [], []
    for volume in evaluation.stack(evaluation.real):
        x = volume[None].to(evaluation.device)
        reconstruction = evaluation.autoencoder(x)[0].clamp(*evaluation.intensity_range)
        error = (reconstruction - x).cpu() * evaluation.hu_per_unit
        l1.append(float(error.abs().mean()))
        mse.append(float(error.pow(2).mean()))
    return {"l1_hu": sum(l1) / len(l1), "mse_hu2": sum(mse) / len(mse), "cases": len(l1)}


def _hu_stats(evaluation: Any) -> dict[str, float]:
    """Mean / std / range in HU of the samples (as written) and of the real phantoms (window-clipped)."""
    low, hu_low = evaluation.intensity_range[0], evaluation.hu_window[0]
    stats = {}
    for name, items in (("samples", evaluation.samples), ("real", evaluation.real)):
        hu = (evaluation.stack(items) - low) * evaluation.hu_per_unit + hu_low
        stats[name] = {"mean": float(hu.mean()), "std": float(hu.std()), "min": float(hu.min()), "max": float(hu.max())}
    return stats


def _run_arm(work: Path, arm: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Train, sample and evaluate one arm; its figures go to ``<work>/<arm>/arm.json`` (reused when settings match)."""
    arm_root = work / arm
    record = arm_root / "arm.json"
    if record.is_file():
        done = json.loads(record.read_text())
        if done["settings"] == settings:
            return done
    seed = settings["seed"]
    overlays = ("demo", *ARMS[arm])
    training = {
        "autoencoder": train_stage(
            arm_root, ("train_autoencoder", *overlays), settings["autoencoder_epochs"], seed=seed
        )
    }
    training["diffusion"] = train_stage(
        arm_root, ("train_autoencoder", "train_diffusion", *overlays), settings["diffusion_epochs"], seed=seed
    )
    sampling = _sample(arm_root, arm, seed, settings["num_samples"], settings["sampler"], settings["steps"])
    evaluation = _evaluation(arm_root, arm, str(arm_root / "samples"), seed, settings["fid_pool"])
    report = evaluation.evaluate()
    report["samples"].pop("tsne_png")  # a path in the work folder
    result = {
        "arm": arm,
        "settings": settings,
        "training": training,
        "sampling": sampling,
        "held_out": report["reconstruction"],
        "all_cases": _reconstruction_all(evaluation),
        "own_encoder_samples": report["samples"],
        "hu": _hu_stats(evaluation),
    }
    arm_root.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result, indent=2))
    return result


def _cross_fid(work: Path, results: dict[str, dict[str, Any]], seed: int, fid_pool: int) -> dict[str, dict[str, float]]:
    """FID of each arm's samples (columns) with each arm's encoder (rows)."""
    table: dict[str, dict[str, float]] = {}
    for encoder_arm in results:
        table[encoder_arm] = {}
        for sample_arm in results:
            evaluation = _evaluation(
                work / encoder_arm, encoder_arm, str(work / sample_arm / "samples"), seed, fid_pool
            )
            real = evaluation.encode(evaluation.stack(evaluation.real))
            fake = evaluation.encode(evaluation.stack(evaluation.samples))
            table[encoder_arm][sample_arm] = evaluation.latent_fid(real, fake)
    return table


def _targets(results: dict[str, dict[str, Any]], fid: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    unit, hu = results["unit"], results["hu"]
    samples = hu["hu"]["samples"]
    in_hu = samples["min"] >= -1000.0 and samples["max"] <= 1000.0 and samples["std"] > 0.0
    l1_ratio = unit["all_cases"]["l1_hu"] / hu["all_cases"]["l1_hu"]
    fid_ratios = [fid[encoder]["unit"] / fid[encoder]["hu"] for encoder in fid]
    fid_ratio = float(torch.tensor(fid_ratios).log().mean().exp())  # geometric mean over the two encoders
    return [
        {
            "name": "hu_scale overlay runs end to end (train both stages, sample, evaluate) with samples in HU",
            "value": in_hu,
            "target": True,
            "met": in_hu,
        },
        {
            "name": "reconstruction L1 in HU, [-1, 1] / HU (all phantoms): the default reconstructs at least as well",
            "value": round(l1_ratio, 3),
            "target": "<= 1.0",
            "met": l1_ratio <= 1.0,
        },
        {
            "name": "latent FID of the samples, [-1, 1] / HU (geometric mean over both arms' encoders)",
            "value": round(fid_ratio, 3),
            "target": "<= 1.0",
            "met": fid_ratio <= 1.0,
        },
    ]


def _markdown(results: dict[str, dict[str, Any]], fid: dict[str, dict[str, float]], targets: list, command: str) -> str:
    settings = next(iter(results.values()))["settings"]
    arms = list(results)
    recon_rows = [
        [
            ARM_LABELS[arm],
            f"{r['all_cases']['l1_hu']:.1f}",
            f"{r['all_cases']['mse_hu2']:.0f}",
            f"{r['held_out']['l1_hu']:.1f}",
            f"{r['held_out']['psnr_db']:.2f}",
            f"{r['held_out']['ssim']:.3f}",
            f"{r['training']['autoencoder']['seconds'] / 60:.1f} + {r['training']['diffusion']['seconds'] / 60:.1f}",
        ]
        for arm, r in results.items()
    ]
    fid_rows = [[f"{ARM_LABELS[encoder]} encoder"] + [f"{fid[encoder][arm]:.3f}" for arm in arms] for encoder in fid]
    hu_rows = [
        [ARM_LABELS[arm]] + [f"{r['hu']['samples'][k]:.0f}" for k in ("mean", "std", "min", "max")]
        for arm, r in results.items()
    ]
    real = next(iter(results.values()))["hu"]["real"]
    hu_rows.append(["real phantoms"] + [f"{real[k]:.0f}" for k in ("mean", "std", "min", "max")])
    target_lines = [
        f"- {t['name']}: {t['value']} (target {t['target']}: {'met' if t['met'] else 'NOT met'})" for t in targets
    ]
    return "\n".join(
        [
            "# latent_ct intensity scale: [-1, 1] (base configs) vs HU (hu_scale.yaml, the thesis)",
            "",
            f"Command: `{command}`  ",
            f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Both arms: "
            f"`demo.yaml` sizes (16 thorax phantoms at 32^3, small networks, the random perceptual extractor), seed "
            f"{settings['seed']}, {settings['autoencoder_epochs']} autoencoder + {settings['diffusion_epochs']} "
            f"diffusion epochs, {settings['num_samples']} samples with {settings['sampler']} ({settings['steps']} "
            "steps); the thesis' loss weights in both (L1 + 1e-6 KL + 1e-3 perceptual + 1e-2 adversarial).",
            "",
            "## Reconstruction (HU)",
            "",
            markdown_table(
                recon_rows,
                [
                    "arm",
                    "L1, all phantoms (HU)",
                    "MSE, all phantoms (HU^2)",
                    "L1, held-out (HU)",
                    "PSNR held-out (dB)",
                    "SSIM held-out",
                    "training min (AE + DM)",
                ],
            ),
            "",
            f"## Latent FID of the samples (2D axial latent slices averaged to {settings['fid_pool']} x "
            f"{settings['fid_pool']}; lower is better)",
            "",
            "Rows: whose encoder measures; columns: whose samples. Each arm's own latents alone would compare two "
            "different feature spaces, so both encoders measure both sets.",
            "",
            markdown_table(fid_rows, ["encoder \\ samples"] + [ARM_LABELS[arm] for arm in arms]),
            "",
            "## Samples in HU (as written to NIfTI) vs the real phantoms (window-clipped)",
            "",
            markdown_table(hu_rows, ["", "mean", "std", "min", "max"]),
            "",
            "## Targets",
            "",
            *target_lines,
            "",
        ]
    )


def bench_latent_ct_intensity(
    intensity: str = "both",
    autoencoder_epochs: int = 40,
    diffusion_epochs: int = 100,
    num_samples: int = 8,
    sampler: str = "dpm_solver",
    steps: int = 25,
    fid_pool: int = 2,
    seed: int = 0,
    workdir: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Run one arm (``unit`` or ``hu``) or both and the comparison; returns (markdown, raw figures).

    ``workdir`` keeps each arm's models, samples and ``arm.json`` (needed to split the arms over calls; None: a
    temporary folder, for ``both`` in one call)."""
    if intensity not in ("unit", "hu", "both"):
        raise ValueError(f"--intensity must be 'unit', 'hu' or 'both', got {intensity!r}")
    if workdir is None and intensity != "both":
        raise ValueError(f"--intensity {intensity} runs one arm for a later --intensity both: give --workdir")
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="bench_latent_ct_intensity_") as tmp:
            return bench_latent_ct_intensity(
                intensity, autoencoder_epochs, diffusion_epochs, num_samples, sampler, steps, fid_pool, seed, tmp
            )
    settings = {
        "autoencoder_epochs": int(autoencoder_epochs),
        "diffusion_epochs": int(diffusion_epochs),
        "num_samples": int(num_samples),
        "sampler": sampler,
        "steps": int(steps),
        "fid_pool": int(fid_pool),
        "seed": int(seed),
    }
    work = Path(workdir)
    arms = list(ARMS) if intensity == "both" else [intensity]
    results = {arm: _run_arm(work, arm, settings) for arm in arms}
    command = (
        f"python -m tools.bench latent_ct_intensity --intensity {intensity} --autoencoder_epochs {autoencoder_epochs} "
        f"--diffusion_epochs {diffusion_epochs} --num_samples {num_samples} --sampler {sampler} --steps {steps} "
        f"--fid_pool {fid_pool} --seed {seed}"
    )
    if intensity != "both":
        line = json.dumps({k: results[intensity][k] for k in ("all_cases", "held_out", "own_encoder_samples", "hu")})
        return f"# latent_ct intensity arm '{intensity}' (run --intensity both to compare)\n\n{line}\n", results
    fid = _cross_fid(work, results, settings["seed"], settings["fid_pool"])
    targets = _targets(results, fid)
    raw = {"settings": settings, "arms": results, "fid_cross": fid, "targets": targets}
    return _markdown(results, fid, targets, command), raw
