"""Benchmark of semantic_mri's distribution metrics on the demo phantoms: the FID with the project-trained 3D encoder
(``configs/fid_project.yaml``), MT-DDPM's FDS and DS, for the demo generator's samples and, as the floor the samples
are read against, for held-out real phantoms.

Usage::

    python -m tools.bench semantic_mri_distribution --ckpt_path bundles/semantic_mri/models/model.pt   # demo weights

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
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import file_hash
from tools.bench.harness import REPO_ROOT, bundle_workflow, config_files

__all__ = ["bench_semantic_mri_distribution"]


def _stack(cases: list[dict[str, Any]], preprocessing: Any) -> torch.Tensor:
    """The cases' images through ``preprocessing``, stacked (B, C, *spatial)."""
    return torch.stack([torch.as_tensor(preprocessing(dict(case))["image"]).float() for case in cases])


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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
    evaluation = bundle_workflow(
        config_files("semantic_mri", "evaluate", "fid_project", "demo"),
        None,
        sample_dir=str(out / "samples"),
        output_dir=str(out / "eval"),
        fid_project_weights=str(feature_file),
        **overrides,
    )
    evaluated = evaluation.run()[0]
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
    fid_names = [k for k in metric_names if k.startswith("FID") or k.startswith("3D-FID")]
    rows = []
    for modality in modalities:
        rows.append(
            f"| {modality} | {evaluated['n_pairs']} samples vs the {evaluated['n_real_cases']} real cases of their "
            "masks | " + " | ".join(_number(samples[modality][k]) for k in metric_names) + " |"
        )
        rows.append(
            f"| {modality} | floor: {len(test_cases)} held-out real vs {len(train_cases)} training real | "
            + " | ".join(_number(floor[modality][k]) for k in metric_names)
            + " |"
        )
    targets = [
        {
            "name": "FID on phantoms reported under the project network's name, never the paper's (issue 14)",
            "value": fid_names,
            "target": "one FID named 'FID (project-trained ...)'",
            "met": len(fid_names) == 1 and fid_names[0].startswith("FID (project-trained"),
        },
        {
            "name": "FDS and DS computed for the samples and the floor (finite numbers)",
            "value": [_number(samples[m][k]) for m in modalities for k in metric_names],
            "target": "finite",
            "met": all(
                isinstance(result[m][k], float) and math.isfinite(result[m][k])
                for result in (samples, floor)
                for m in modalities
                for k in metric_names
            ),
        },
    ]
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
        "FDS: KL divergence between Gaussians fitted to the t-SNE embeddings of the real and the synthetic set; DS: KL "
        "divergence between the histograms of nearest-neighbour SSIM within each set (MT-DDPM). Lower is closer for "
        "all three. The floor row scores two real sets of this size against each other: a generator cannot be "
        "expected to go below it.",
        "",
        "| modality | sets | " + " | ".join(name.replace("|", "\\|") for name in metric_names) + " |",
        "|---|---|" + "---|" * len(metric_names),
        *rows,
        "",
        "## Targets (issue 14)",
        "",
        *(f"- {t['name']}: {t['value']} (target {t['target']}: {'met' if t['met'] else 'not met'})" for t in targets),
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
