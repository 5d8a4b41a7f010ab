"""Benchmark of the downstream-utility experiment (``configs/utility.yaml``) on a bundle's demo phantoms.

Usage::

    python -m tools.bench semantic_mri_utility --ckpt_path bundles/semantic_mri/models/model.pt   # demo weights
    python -m tools.bench semantic_mri_utility --ckpt_path ... --time_limit_minutes 8   # in chunks: rerun to resume
    python -m tools.bench mammo_guidance_utility --ckpt_path bundles/mammo_guidance/models/model.pt   # classifier

Runs the bundle's utility overlay with its demo overlay (``inference.yaml`` + ``utility.yaml`` + ``demo.yaml``) in
``--output_dir`` (default ``bundles/<b>/utility``, git-ignored; a rerun resumes from its ``runs/``), then checks that
one run trained again with the same seed gives the same numbers, and writes the report table with the issue's
targets (computed from the measured figures) to ``benchmarks/results/<b>_utility.md`` / ``.json`` and the plot next
to them. The cost figure is the wall time of every call on this machine, summed (``bench_seconds.json``).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import file_hash
from common.io import atomic_write_text
from tools.bench.harness import REPO_ROOT, RESULTS_DIR, bundle_workflow, config_files

__all__ = [
    "bench_latent_ct_utility",
    "bench_mammo_guidance_utility",
    "bench_paired_petct_utility",
    "bench_semantic_mri_utility",
    "classification_targets",
    "utility_targets",
]


def utility_targets(results: dict[str, Any], rerun_difference: float, wall_minutes: float) -> list[dict[str, Any]]:
    """The issue's targets from the measured figures: harness sanity, determinism, real+synthetic vs real (per N),
    real+synthetic+augmentation vs real+augmentation (per N, the issue asks whether), seeds, cost, held-out test."""
    arms = results["arms"]

    def dice(name: str) -> float:
        return arms[name]["metrics"]["dice"]["mean"]

    sanity = results["sanity"]
    targets = [
        {
            "name": "harness sanity: real_all Dice / ceiling Dice (ceiling: trained on the test cases themselves)",
            "value": sanity["ratio"],
            "target": ">= 0.9",
            "met": sanity["ratio"] is not None and sanity["ratio"] >= 0.9,
        },
        {
            "name": "same seed, same numbers: largest per-case Dice difference of a run trained again",
            "value": rerun_difference,
            "target": "== 0",
            "met": rerun_difference == 0.0,
        },
    ]
    for name in arms:
        if name.startswith("real+syn") and not name.endswith("+aug"):
            difference = dice(name) - dice("real")
            targets.append(
                {"name": f"scarce regime: {name} Dice - real Dice", "value": difference, "target": ">= 0",
                 "met": difference >= 0}
            )  # fmt: skip
    for name in arms:
        if name.startswith("real+syn") and name.endswith("+aug"):
            difference = dice(name) - dice("real+aug")
            targets.append(
                {"name": f"does {name} beat real+aug? Dice difference (reported either way)", "value": difference,
                 "target": "> 0", "met": difference > 0}
            )  # fmt: skip
    overlap = set(results["cases"]["test"]) & (set(results["cases"]["generator"]) | set(results["cases"]["seeding"]))
    targets += [
        {"name": "training seeds per arm", "value": len(results["settings"]["seeds"]), "target": ">= 3",
         "met": len(results["settings"]["seeds"]) >= 3},
        {"name": "whole utility run, wall minutes on this machine (sampling + every arm and seed)",
         "value": wall_minutes, "target": "<= 30", "met": wall_minutes <= 30},
        {"name": "test cases shared with the generator's or the seeding cases", "value": len(overlap),
         "target": "== 0", "met": not overlap},
    ]  # fmt: skip
    return targets


def classification_targets(
    results: dict[str, Any], rerun_difference: float, wall_minutes: float
) -> list[dict[str, Any]]:
    """Issue 15's downstream target from the measured figures: AUC (and F1) of real + synthetic minus real-only, with
    its 95 % interval and permutation p, the sign reported as measured (the paper: +0.083 AUC at +2,500); the same on
    the shifted test set; then the experiment's own checks (seeds, determinism, held-out test set, 10 % positives)."""
    targets = []
    rule = results["settings"].get("f1_threshold", 0.5)
    names = {"auc": "AUC", "f1": "F1 (threshold tuned on validation)" if rule == "tuned" else f"F1 at {rule:g}"}
    for test_set in ("test", "shifted"):
        for arm, figures in results["comparisons"].get(f"vs real ({test_set})", {}).items():
            for metric in ("auc", "f1"):
                found = figures[metric]
                where = "held-out test set" if test_set == "test" else "shifted test set (mini-DDSM stand-in)"
                targets.append(
                    {
                        "name": f"downstream, {where}: {names[metric]} of {arm} minus real-only (sign as measured; "
                        "paper: AUC +0.083, F1 +0.067 at +2,500)",
                        "value": found["difference"],
                        "ci_low": found["ci_low"],
                        "ci_high": found["ci_high"],
                        "p_bonferroni": found["p_bonferroni"],
                        "target": "> 0",
                        "met": found["difference"] is not None and found["difference"] > 0,
                    }
                )
    cases = results["cases"]
    seen = set(cases["generator"]) | set(cases["seeding"]) | set(cases["training"])
    overlap = (set(cases["test"]) | set(cases["shifted"])) & seen
    share = cases["scarce_real_positives"] / results["settings"]["real_count"]
    targets += [
        {"name": "share of positives in the real training set", "value": share,
         "target": f"== {results['settings']['positive_fraction']}",
         "met": abs(share - results["settings"]["positive_fraction"]) < 1e-9},
        {"name": "training seeds per arm", "value": len(results["settings"]["seeds"]), "target": ">= 3",
         "met": len(results["settings"]["seeds"]) >= 3},
        {"name": "same seed, same numbers: largest test probability difference of a run trained again",
         "value": rerun_difference, "target": "== 0", "met": rerun_difference == 0.0},
        {"name": "test images shared with the generator's, the references' or the classifier's training images",
         "value": len(overlap), "target": "== 0", "met": not overlap},
        {"name": "whole utility run, wall minutes on this machine (sampling + every arm and seed)",
         "value": wall_minutes, "target": "<= 30", "met": wall_minutes <= 30},
    ]  # fmt: skip
    return targets


def _rerun_probability_difference(workflow: Any, results: dict[str, Any]) -> float:
    """Train the first seed's 'real' arm again (on its training items: the scarce set but its validation split) and
    compare its test probabilities with the cached run."""
    utility = workflow.parser.get_parsed_content("utility")
    seed = results["settings"]["seeds"][0]
    real = {utility.arms[0].real: utility.real_items(utility.scarce_cases)}
    network = utility.train(utility.training_items(utility.arms[0], real, []), False, seed)
    again = utility.score(network, utility.real_items(utility.test_cases))
    cached = json.loads(utility.run_path(utility.arms[0], seed).read_text())["cases"]
    return max(abs(again[c]["probability"] - cached[c]["probability"]) for c in again)


def _rerun_difference(workflow: Any, results: dict[str, Any]) -> float:
    """Train the first seed's 'real' arm again and compare its per-case Dice with the cached run."""
    utility = workflow.parser.get_parsed_content("utility")
    seed = results["settings"]["seeds"][0]
    items = utility.real_items(utility.scarce_cases)
    network = utility.train(items, False, seed)
    again = utility.score(network, utility.real_items(utility.test_cases))
    cached = json.loads(utility.run_path(utility.arms[0], seed).read_text())["cases"]
    return max(abs((again[c]["dice"] or 0.0) - (cached[c]["dice"] or 0.0)) for c in cached)


def _bench_utility(
    bundle: str,
    configs: tuple[str, ...],
    ckpt_path: str | None,
    output_dir: str | None,
    time_limit_minutes: float | None,
    command: str,
    generator: str,
    targets_of: Callable[[dict[str, Any], float, float], list[dict[str, Any]]] = utility_targets,
    rerun_of: Callable[[Any, dict[str, Any]], float] = _rerun_difference,
    plot_metric: str = "dice",
    issue: int = 14,
    ckpt_key: str = "ckpt_path",
    **overrides: Any,
) -> tuple[str, dict[str, Any]]:
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path '{ckpt_path}': no such weights file (train the demo overlay first)")
        overrides[ckpt_key] = str(ckpt_path)
    out = Path(output_dir) if output_dir else REPO_ROOT / "bundles" / bundle / "utility"
    out.mkdir(parents=True, exist_ok=True)
    clock = out / "bench_seconds.json"
    chunks = json.loads(clock.read_text()) if clock.is_file() else []
    start = time.perf_counter()
    try:
        workflow = bundle_workflow(
            config_files(bundle, *configs),
            None,
            output_dir=str(out),
            time_limit_minutes=time_limit_minutes,
            **overrides,
        )
        results = workflow.run()[0]
    finally:  # an interrupted call's time counts too
        chunks.append(time.perf_counter() - start)
        atomic_write_text(clock, json.dumps(chunks) + "\n", overwrite=True)
    if not results.get("complete"):
        raise SystemExit(
            f"{results['runs_done']} of {results['runs_total']} runs done in '{out}': run the same command again "
            "to resume (nothing written to benchmarks/results yet)"
        )
    rerun = rerun_of(workflow, results)
    wall_minutes = sum(chunks) / 60.0
    targets = targets_of(results, rerun, wall_minutes)
    report = (out / "report.md").read_text().split("\n", 2)[2]
    shutil.copyfile(out / f"utility_{plot_metric}.png", RESULTS_DIR / f"{bundle}_utility.png")
    lines = [
        f"# {bundle}: does the synthetic data help? (downstream utility, demo phantoms, CPU)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; {len(chunks)} call(s), {wall_minutes:.1f} wall minutes in all.  ",
        f"Generator: {generator}" + (f" (sha256 {file_hash(ckpt_path)[:16]}...).  " if ckpt_path else ".  "),
        f"Plot: `{bundle}_utility.png` ({plot_metric.upper() if plot_metric == 'auc' else plot_metric.title()} per "
        "arm, 95 % CI whiskers, the arms left to right as below).",
        "",
        report.strip(),
        "",
        f"## Targets (issue {issue})",
        "",
        *(
            f"- {t['name']}: {t['value'] if not isinstance(t['value'], float) else round(t['value'], 4)} "
            f"(target {t['target']}: {'met' if t['met'] else 'not met'})"
            for t in targets
        ),
    ]
    rerun_name = "rerun_max_probability_difference" if plot_metric == "auc" else "rerun_max_dice_difference"
    raw = {"results": results, rerun_name: rerun, "wall_seconds": chunks, "targets": targets}
    return "\n".join(lines) + "\n", raw


def bench_semantic_mri_utility(
    ckpt_path: str, output_dir: str | None = None, time_limit_minutes: float | None = None, **overrides: Any
) -> tuple[str, dict[str, Any]]:
    """semantic_mri's utility experiment on the demo phantoms (16 training phantoms, 16 held-out test phantoms)
    with the demo generator ``ckpt_path``; returns (markdown, raw numbers)."""
    return _bench_utility(
        "semantic_mri",
        ("inference", "utility", "demo"),
        ckpt_path,
        output_dir,
        time_limit_minutes,
        "python -m tools.bench semantic_mri_utility --ckpt_path <demo model.pt>"
        + (f" --time_limit_minutes {time_limit_minutes:g} (repeated until done)" if time_limit_minutes else ""),
        "the demo overlay's weights (configs/train.yaml + configs/demo.yaml, EMA)",
        **overrides,
    )


def bench_paired_petct_utility(
    ckpt_path: str,
    output_dir: str | None = None,
    time_limit_minutes: float | None = None,
    phantom_cases: int = 40,
    **overrides: Any,
) -> tuple[str, dict[str, Any]]:
    """paired_petct's utility experiment on the 64 x 64 demo phantoms with ``phantom_cases`` patients (the demo's 12
    leave one test case: no statistic) and the demo generator ``ckpt_path``, which must have been trained on the same
    phantom split (``train.yaml`` + ``demo.yaml`` with the same ``--phantom_cases`` and ``--bundle_root``; the run
    stops naming the cases otherwise); returns (markdown, raw numbers)."""
    return _bench_utility(
        "paired_petct",
        ("inference", "utility", "demo"),
        ckpt_path,
        output_dir,
        time_limit_minutes,
        f"python -m tools.bench paired_petct_utility --ckpt_path <demo model.pt> --phantom_cases {phantom_cases}"
        + (f" --time_limit_minutes {time_limit_minutes:g} (repeated until done)" if time_limit_minutes else ""),
        f"the demo overlay's weights (configs/train.yaml + configs/demo.yaml on the same {phantom_cases} phantom "
        "patients, EMA)",
        phantom_cases=phantom_cases,
        **overrides,
    )


def bench_latent_ct_utility(
    generator_root: str | None = None,
    output_dir: str | None = None,
    time_limit_minutes: float | None = None,
    spatial_size: list[int] | None = None,
    **overrides: Any,
) -> tuple[str, dict[str, Any]]:
    """latent_ct's utility experiment on the demo phantoms; returns (markdown, raw numbers).

    Without ``generator_root``: the real arms and the sanity arms only (the paper's sampler writes no masks). With
    it: the bundle root of a generator trained with ``tumour_channel.yaml`` + ``demo.yaml`` (both stages; its
    ``models/`` hold the weights, its ``data/`` the phantoms it saw), whose CT + tumour samples feed the synthetic
    arms. ``spatial_size``: the grid of the generator and the segmenter (the demo's 32^3 when None; the generator
    must have been trained on the same grid)."""
    grid, grid_name = "", ""
    if spatial_size is not None:
        overrides["spatial_size"] = [int(v) for v in spatial_size]
        grid = ' --spatial_size "[' + ",".join(map(str, overrides["spatial_size"])) + ']"'
        grid_name = ", grid " + "x".join(map(str, overrides["spatial_size"]))
    configs = (
        ("train_autoencoder", "inference", "utility") + (("tumour_channel",) if generator_root else ()) + ("demo",)
    )
    ckpt_path = None
    if generator_root is not None:
        overrides["bundle_root"] = str(generator_root)
        ckpt_path = str(Path(generator_root) / "models" / "model.pt")
    return _bench_utility(
        "latent_ct",
        configs,
        ckpt_path,
        output_dir,
        time_limit_minutes,
        "python -m tools.bench latent_ct_utility"
        + (" --generator_root <root of a tumour_channel.yaml + demo.yaml generator>" if generator_root else "")
        + grid
        + (f" --time_limit_minutes {time_limit_minutes:g}" if time_limit_minutes else ""),
        "the tumour_channel.yaml + demo.yaml weights (configs/train_autoencoder.yaml, then with train_diffusion.yaml; "
        f"CT + tumour mask pairs, sampled with 25 DPM-Solver steps{grid_name})"
        if generator_root
        else "none (the paper's sampler writes CT without masks: no synthetic arms)",
        ckpt_key="diffusion_ckpt",
        **overrides,
    )


def bench_mammo_guidance_utility(
    ckpt_path: str, output_dir: str | None = None, time_limit_minutes: float | None = None, **overrides: Any
) -> tuple[str, dict[str, Any]]:
    """mammo_guidance's downstream experiment (paper 003: a cancer classifier on real vs real + k synthetic images)
    on the 64 x 64 demo phantoms with the demo generator ``ckpt_path``; returns (markdown, raw numbers)."""
    return _bench_utility(
        "mammo_guidance",
        ("inference", "utility", "demo"),
        ckpt_path,
        output_dir,
        time_limit_minutes,
        "python -m tools.bench mammo_guidance_utility --ckpt_path <demo model.pt>"
        + (f" --time_limit_minutes {time_limit_minutes:g} (repeated until done)" if time_limit_minutes else ""),
        "the demo overlay's weights (configs/train.yaml + configs/demo.yaml, 110 epochs, EMA)",
        targets_of=classification_targets,
        rerun_of=_rerun_probability_difference,
        plot_metric="auc",
        issue=15,
        **overrides,
    )
