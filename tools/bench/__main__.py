"""Benchmarks: ``python -m tools.bench <bundle or sharded_sampling>`` prints a markdown table, writes it and a JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fire

from common.io import atomic_write_text
from tools.bench.distribution import bench_paired_petct_distribution, bench_semantic_mri_distribution
from tools.bench.harness import RESULTS_DIR
from tools.bench.latent_ct import bench_latent_ct
from tools.bench.latent_ct_intensity import bench_latent_ct_intensity
from tools.bench.latent_ct_ttq import bench_latent_ct_time_to_quality
from tools.bench.mammo_guidance import bench_mammo_guidance
from tools.bench.paired_petct import bench_paired_petct, bench_paired_petct_feedback
from tools.bench.paired_petct_choices import bench_paired_petct_choices
from tools.bench.paired_petct_ttq import bench_paired_petct_time_to_quality
from tools.bench.semantic_mri import bench_semantic_mri, bench_semantic_mri_clipping
from tools.bench.semantic_mri_ttq import bench_semantic_mri_time_to_quality
from tools.bench.serving import bench_serving
from tools.bench.sharded_sampling import bench_sharded_sampling
from tools.bench.swin_ddpm import bench_swin_ddpm
from tools.bench.utility import (
    bench_latent_ct_utility,
    bench_mammo_guidance_utility,
    bench_paired_petct_utility,
    bench_semantic_mri_utility,
)

__all__ = ["BENCHMARKS", "main"]


BENCHMARKS: dict[str, Callable[..., tuple[str, dict[str, Any]]]] = {
    "semantic_mri": bench_semantic_mri,
    "semantic_mri_clipping": bench_semantic_mri_clipping,
    "semantic_mri_ttq": bench_semantic_mri_time_to_quality,
    "semantic_mri_utility": bench_semantic_mri_utility,
    "semantic_mri_distribution": bench_semantic_mri_distribution,
    "paired_petct": bench_paired_petct,
    "paired_petct_feedback": bench_paired_petct_feedback,
    "paired_petct_choices": bench_paired_petct_choices,
    "paired_petct_ttq": bench_paired_petct_time_to_quality,
    "latent_ct": bench_latent_ct,
    "latent_ct_intensity": bench_latent_ct_intensity,
    "latent_ct_ttq": bench_latent_ct_time_to_quality,
    "latent_ct_utility": bench_latent_ct_utility,
    "mammo_guidance": bench_mammo_guidance,
    "mammo_guidance_utility": bench_mammo_guidance_utility,
    "paired_petct_utility": bench_paired_petct_utility,
    "paired_petct_distribution": bench_paired_petct_distribution,
    "sharded_sampling": bench_sharded_sampling,
    "serving": bench_serving,
    "swin_ddpm": bench_swin_ddpm,
}


def main(bundle: str, out: str | None = None, **options: Any) -> None:
    """Run the benchmark of ``bundle``, print the markdown table and write it (default
    benchmarks/results/<bundle>.md)."""
    if bundle not in BENCHMARKS:
        raise ValueError(f"no benchmark for bundle '{bundle}'; available: {sorted(BENCHMARKS)}")
    markdown, results = BENCHMARKS[bundle](**options)
    print(markdown)
    target = Path(out) if out else RESULTS_DIR / f"{bundle}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, markdown, overwrite=True)
    atomic_write_text(target.with_suffix(".json"), json.dumps(results, indent=2, default=str), overwrite=True)
    print(f"written to {target}")


if __name__ == "__main__":
    fire.Fire(main)
