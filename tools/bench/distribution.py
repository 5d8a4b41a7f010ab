"""Benchmarks of the distribution metrics on the demo phantoms: the FID with a project-trained encoder (each bundle's
``configs/fid_project.yaml``), MT-DDPM's FDS and DS, for a demo generator's samples and, as the floor the samples are
read against, for two real sets of the same sizes.

Usage::

    python -m tools.bench semantic_mri_distribution --ckpt_path bundles/semantic_mri/models/model.pt   # demo weights
    python -m tools.bench paired_petct_distribution --utility_dir U --bundle_root R   # after paired_petct_utility

semantic_mri:
Steps, each through the bundle's own configs (with ``demo.yaml``), in ``--output_dir`` (default
``bundles/semantic_mri/distribution``, git-ignored):

1. the feature network: ``utility.yaml`` with seed 0 and no synthetic arms, whose ``real_all`` arm (every real
   training case, never a sample or a test case) is kept as ``utility/feature_network.pt``: the same weights the full
   utility run of ``semantic_mri_utility`` keeps (same settings, same seed);
2. samples: ``inference.yaml`` on every phantom mask (``--num_samples`` per mask, 10 respaced steps as the utility
   run samples);
3. ``evaluate.yaml`` + ``fid_project.yaml``: the samples against the real cases whose masks produced them;
4. the floor: the same metrics (the evaluation's own ``distribution`` object and real preprocessing) of the 16
   held-out test phantoms against the training phantoms: what two real sets of this size score.

paired_petct reads a finished ``paired_petct_utility`` run (its samples and its ``real_all`` U-Net) instead of
drawing again: ``evaluate.yaml`` + ``fid_project.yaml`` (the CT + PET pair as one two-channel image) on the first
``--max_samples`` triples against the test slices, and the floor of as many training slices against them.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import file_hash
from common.data import PairedSliceDataset
from tools.bench.harness import REPO_ROOT, bundle_workflow, config_files

__all__ = ["bench_paired_petct_distribution", "bench_semantic_mri_distribution"]


def _stack(cases: list[dict[str, Any]], preprocessing: Any) -> torch.Tensor:
    """The cases' images through ``preprocessing``, stacked (B, C, *spatial)."""
    return torch.stack([torch.as_tensor(preprocessing(dict(case))["image"]).float() for case in cases])


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


Row = tuple[str, str, dict[str, Any]]  # (image set, what is compared, the metrics DistributionMetrics returned)


def distribution_targets(metric_names: list[str], rows: list[Row]) -> list[dict[str, Any]]:
    """Issue 14's targets for a phantom table: the FID named after the project network, every figure finite."""
    fid_names = [k for k in metric_names if k.startswith("FID") or k.startswith("3D-FID")]
    return [
        {
            "name": "FID on phantoms reported under the project network's name, never the paper's (issue 14)",
            "value": fid_names,
            "target": "one FID named 'FID (project-trained ...)'",
            "met": len(fid_names) == 1 and fid_names[0].startswith("FID (project-trained"),
        },
        {
            "name": "FDS and DS computed for the samples and the floor (finite numbers)",
            "value": [_number(metrics[k]) for _, _, metrics in rows for k in metric_names],
            "target": "finite",
            "met": all(
                isinstance(metrics[k], float) and math.isfinite(metrics[k])
                for _, _, metrics in rows
                for k in metric_names
            ),
        },
    ]


def distribution_table(
    set_header: str, metric_names: list[str], rows: list[Row], targets: list[dict[str, Any]]
) -> list[str]:
    """The markdown below a distribution bench's header: what the metrics are, one row per set and comparison, and the
    targets."""
    return [
        "FDS: KL divergence between Gaussians fitted to the t-SNE embeddings of the real and the synthetic set; DS: KL "
        "divergence between the histograms of nearest-neighbour SSIM within each set (MT-DDPM). Lower is closer for "
        "all three. The floor row scores two real sets of this size against each other: a generator cannot be "
        "expected to go below it.",
        "",
        f"| {set_header} | sets | " + " | ".join(name.replace("|", "\\|") for name in metric_names) + " |",
        "|---|---|" + "---|" * len(metric_names),
        *(
            f"| {name} | {sets} | " + " | ".join(_number(metrics[k]) for k in metric_names) + " |"
            for name, sets, metrics in rows
        ),
        "",
        "## Targets (issue 14)",
        "",
        *(f"- {t['name']}: {t['value']} (target {t['target']}: {'met' if t['met'] else 'not met'})" for t in targets),
    ]


def _evaluate(
    configs: list[str], sample_dir: Path, output_dir: Path, feature_file: Path, **overrides: Any
) -> tuple[Any, dict[str, Any]]:
    """A bundle's evaluation (``evaluate.yaml`` + ``fid_project.yaml``) of ``sample_dir`` with the project FID
    network ``feature_file``: (the workflow, its results)."""
    evaluation = bundle_workflow(
        configs,
        None,
        sample_dir=str(sample_dir),
        output_dir=str(output_dir),
        fid_project_weights=str(feature_file),
        **overrides,
    )
    return evaluation, evaluation.run()[0]


def bench_semantic_mri_distribution(
    ckpt_path: str, output_dir: str | None = None, num_samples: int = 1, **overrides: Any
) -> tuple[str, dict[str, Any]]:
    """FID (project-trained 3D encoder), FDS and DS of the demo generator ``ckpt_path``'s samples and of held-out
    real phantoms (the floor); returns (markdown, raw numbers)."""
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path '{ckpt_path}': no such weights file (train the demo overlay first)")
    out = Path(output_dir) if output_dir else REPO_ROOT / "bundles" / "semantic_mri" / "distribution"
    start = time.perf_counter()
    utility = bundle_workflow(
        config_files("semantic_mri", "inference", "utility", "demo"),
        None,
        output_dir=str(out / "utility"),
        ckpt_path=str(ckpt_path),
        seeds=[0],
        synthetic_multiples=[],
        **overrides,
    )
    utility.run()
    feature_file = Path(utility.parser.get_parsed_content("feature_network_file"))
    sampling = bundle_workflow(
        config_files("semantic_mri", "inference", "demo"),
        None,
        output_dir=str(out / "samples"),
        ckpt_path=str(ckpt_path),
        num_samples=int(num_samples),
        sampler="respaced_ddpm",
        num_inference_steps=10,
        **overrides,
    )
    sampling.run()
    evaluation, evaluated = _evaluate(
        config_files("semantic_mri", "evaluate", "fid_project", "demo"),
        out / "samples",
        out / "eval",
        feature_file,
        **overrides,
    )
    samples = evaluated["distribution"]
    distribution = evaluation.parser.get_parsed_content("distribution")
    preprocessing = evaluation.parser.get_parsed_content("real_preprocessing")
    train_cases = utility.parser.get_parsed_content("train_cases")
    test_cases = utility.parser.get_parsed_content("test_cases")
    modalities = list(evaluation.parser.get_parsed_content("modalities"))
    train_set, test_set = _stack(train_cases, preprocessing), _stack(test_cases, preprocessing)
    floor = {m: distribution(train_set[:, c : c + 1], test_set[:, c : c + 1]) for c, m in enumerate(modalities)}
    seconds = time.perf_counter() - start

    metric_names = [k for k in samples[modalities[0]] if k != "feature network" and not k.startswith("IS")]
    rows = []
    for modality in modalities:
        rows.append(
            (
                modality,
                f"{evaluated['n_pairs']} samples vs the {evaluated['n_real_cases']} real cases of their masks",
                samples[modality],
            )
        )
        rows.append(
            (modality, f"floor: {len(test_cases)} held-out real vs {len(train_cases)} training real", floor[modality])
        )
    targets = distribution_targets(metric_names, rows)
    lines = [
        "# semantic_mri: distribution metrics on the demo phantoms (FID with a project-trained encoder, FDS, DS)",
        "",
        f"Command: `python -m tools.bench semantic_mri_distribution --ckpt_path <demo model.pt> --num_samples "
        f"{num_samples}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; {seconds / 60:.1f} wall minutes (feature network, sampling, evaluation).  ",
        f"Generator: the demo overlay's weights (configs/train.yaml + configs/demo.yaml, EMA) (sha256 "
        f"{file_hash(ckpt_path)[:16]}...); samples: {num_samples} per phantom mask, 10 respaced DDPM steps.  ",
        f"Feature network: {samples[modalities[0]].get('feature network', '-')} (`configs/fid_project.yaml`), "
        "trained by the utility experiment on the real training phantoms only; its values are not comparable with "
        "the paper's 3D-FID (MedicalNet ResNet-50), which needs a weights file this machine does not have.",
        "",
        *distribution_table("modality", metric_names, rows, targets),
    ]
    raw = {
        "samples": samples,
        "floor": floor,
        "n_samples": evaluated["n_pairs"],
        "train_cases": [c["case_id"] for c in train_cases],
        "test_cases": [c["case_id"] for c in test_cases],
        "wall_seconds": seconds,
        "targets": targets,
    }
    return "\n".join(lines) + "\n", raw


def bench_paired_petct_distribution(
    utility_dir: str, max_samples: int = 64, output_dir: str | None = None, **overrides: Any
) -> tuple[str, dict[str, Any]]:
    """FID (project-trained 2D encoder), FDS and DS of paired_petct's demo samples, read from a finished utility run
    (``paired_petct_utility``'s ``--output_dir``: its ``synthetic/`` triples and the ``feature_network.pt`` of its
    ``real_all`` arm), against the held-out test slices; and the floor: as many training slices (evenly spaced) against
    the same test slices. Give the utility run's ``--bundle_root`` (its phantoms); returns (markdown, raw numbers)."""
    utility = Path(utility_dir)
    feature_file, sample_dir = utility / "feature_network.pt", utility / "synthetic"
    for path in (feature_file, sample_dir / "dataset.json"):
        if not path.is_file():
            raise FileNotFoundError(f"utility_dir '{utility}': no '{path.name}' (run paired_petct_utility first)")
    out = Path(output_dir) if output_dir else utility.parent / "distribution"
    start = time.perf_counter()
    evaluation, evaluated = _evaluate(
        config_files("paired_petct", "evaluate", "demo", "fid_project"),
        sample_dir,
        out,
        feature_file,
        max_samples=int(max_samples),
        **overrides,
    )
    samples = evaluated["distribution"]
    distribution = evaluation.parser.get_parsed_content("distribution")
    datalist = evaluation.parser.get_parsed_content("datalist")
    settings = evaluation.parser.get_parsed_content("settings")
    real_split = evaluation.parser.get_parsed_content("real_split")
    sets = list(samples)
    test = PairedSliceDataset(datalist[real_split], settings)
    train = PairedSliceDataset(datalist["train"], settings)
    picked = np.linspace(0, len(train) - 1, num=min(evaluated["n_samples"], len(train))).round().astype(int)

    def stacked(dataset: Any, indices: Any) -> torch.Tensor:
        items = [dataset[int(i)] for i in indices]
        return torch.cat([torch.stack([torch.as_tensor(item[m]).float() for item in items]) for m in ("ct", "pet")], 1)

    train_set, test_set = stacked(train, picked), stacked(test, range(len(test)))
    channels = {"ct": slice(0, 1), "pet": slice(1, 2), "ct+pet": slice(0, 2)}
    floor = {name: distribution(test_set[:, channels[name]], train_set[:, channels[name]]) for name in sets}
    seconds = time.perf_counter() - start

    metric_names = [k for k in samples[sets[0]] if k != "feature network" and not k.startswith("IS")]
    rows = []
    for name in sets:
        rows.append((name, f"{evaluated['n_samples']} samples vs {len(test)} held-out test slices", samples[name]))
        rows.append((name, f"floor: {len(picked)} training slices vs the same {len(test)}", floor[name]))
    targets = distribution_targets(metric_names, rows)
    lines = [
        "# paired_petct: distribution metrics on the demo phantoms (FID with a project-trained encoder, FDS, DS)",
        "",
        f"Command: `python -m tools.bench paired_petct_distribution --utility_dir U --bundle_root R --max_samples "
        f"{max_samples}` (U, R: the `paired_petct_utility` run's output folder and generator root)  ",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; {seconds / 60:.1f} wall minutes (evaluation and floor).  ",
        f"Samples: the first {evaluated['n_samples']} triples the utility run drew (its sampler and generator: "
        "`benchmarks/results/paired_petct_utility.md`); real: the patient split's test slices (tumour slices of the "
        "held-out cases, never seen by the generator or the seeding).  ",
        f"Feature network: {samples[sets[0]].get('feature network', '-')} (`configs/fid_project.yaml`), trained by the "
        "utility experiment on the real training slices only; it reads CT and PET together, so every metric reads the "
        "pair as one two-channel image. Its values are not comparable with the paper's FID (Inception-v3), which needs "
        "a weights file this machine does not have.",
        "",
        *distribution_table("set", metric_names, rows, targets),
    ]
    raw = {
        "samples": samples,
        "floor": floor,
        "n_samples": evaluated["n_samples"],
        "n_test_slices": len(test),
        "floor_training_slices": [int(i) for i in picked],
        "wall_seconds": seconds,
        "targets": targets,
    }
    return "\n".join(lines) + "\n", raw
