"""Evaluating sample sets against real sets and writing the metrics report (JSON + markdown)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io import atomic_write_text
from common.metrics.image import (
    _as_pair,
    _check_data_range,
    _in_chunks,
    diversity_ms_ssim,
    mmd,
    ms_ssim,
    ms_ssim_settings,
    mse,
    psnr,
    ssim,
)

__all__ = ["evaluate_sets", "write_report"]


REPORT_SIGNIFICANT_DIGITS = 6


def evaluate_sets(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    data_range: float = 2.0,
    spatial_dims: int | None = None,
    chunk_size: int = 8,
) -> dict[str, Any]:
    """All image metrics of the seed papers for a generated set against the index-aligned real set.

    Args:
        real: real images (B, C, *spatial), B >= 2; ``real[i]`` is the case whose mask generated ``fake[i]``.
        fake: generated images of the same shape.
        data_range: width of the intensity scale (2.0 for images in [-1, 1]).
        spatial_dims: 2 or 3; None infers it from the number of axes.
        chunk_size: pairs evaluated at once (bounds memory for large volumes).

    Returns:
        Plain floats: ``mse_mean``/``mse_std``, ``psnr_*``, ``ssim_*`` and ``ms_ssim_to_real_*`` (mean and sample
        standard deviation over the B pairs), ``mmd`` (set level; :func:`mmd` explains its low bias for aligned
        sets), ``ms_ssim_diversity_fake`` and
        ``ms_ssim_diversity_real`` (mean pairwise MS-SSIM within each set), plus ``n_pairs``, ``spatial_shape``,
        ``data_range``, ``ms_ssim_kernel_size`` and ``ms_ssim_weights`` (the settings used).
    """
    data_range = _check_data_range(data_range)
    real, fake = _as_pair("real", real, "fake", fake, spatial_dims)
    if real.shape[0] < 2:
        raise ValueError(f"real and fake must each hold at least 2 images, got batch size {real.shape[0]}.")
    kernel_size, weights = ms_ssim_settings(real.shape[2:])
    pairs = torch.arange(real.shape[0])
    paired = {
        "mse": mse,
        "psnr": partial(psnr, data_range=data_range),
        "ssim": partial(ssim, data_range=data_range),
        "ms_ssim_to_real": partial(ms_ssim, data_range=data_range),
    }
    results: dict[str, Any] = {
        "n_pairs": real.shape[0],
        "spatial_shape": list(real.shape[2:]),
        "data_range": data_range,
        "ms_ssim_kernel_size": kernel_size,
        "ms_ssim_weights": list(weights),
        "mmd": mmd(real, fake),
        "ms_ssim_diversity_fake": diversity_ms_ssim(fake, data_range, chunk_size=chunk_size),
        "ms_ssim_diversity_real": diversity_ms_ssim(real, data_range, chunk_size=chunk_size),
    }
    for name, metric_fn in paired.items():
        values = _in_chunks(metric_fn, real, fake, pairs, pairs, chunk_size).double()
        results[f"{name}_mean"], results[f"{name}_std"] = float(values.mean()), float(values.std())
    return results


def _round(value: float) -> float | str:
    """Round to REPORT_SIGNIFICANT_DIGITS significant digits; inf/nan become strings (JSON has no such numbers)."""
    if not math.isfinite(value):
        return str(value)
    return float(f"{value:.{REPORT_SIGNIFICANT_DIGITS}g}")


def _plain(value: Any) -> Any:
    """A JSON-ready copy of ``value``: tensors/arrays to lists or numbers, floats rounded, tuples to lists."""
    if isinstance(value, torch.Tensor | np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float):
        return _round(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    raise ValueError(f"results values must be numbers, strings, lists or dicts, got {type(value).__name__}: {value!r}.")


def _flatten(results: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) rows of a nested dict, sorted by key."""
    rows = []
    for key, value in results.items():
        if isinstance(value, Mapping):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return sorted(rows)


def _markdown_cell(value: Any) -> str:
    """A value as markdown table text (lists comma-separated, pipes escaped)."""
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text.replace("|", "\\|")


def write_report(
    results: Mapping[str, Any],
    out_dir: str | os.PathLike,
    name: str = "report",
    title: str = "Evaluation report",
    overwrite: bool = True,
) -> tuple[Path, Path]:
    """Write ``results`` as ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``, each atomically.

    The JSON has sorted keys and floats rounded to 6 significant digits (inf/nan as strings); the markdown file is a
    ``# title`` followed by a two-column table (metric, value) with nested keys joined by dots.

    Args:
        results: dict of numbers, strings, lists and nested dicts (e.g. from :func:`evaluate_sets`).
        out_dir: destination folder, created if missing.
        name: file stem (no folder separators).
        title: markdown heading.
        overwrite: replace existing reports (default: a report is the latest evaluation).

    Returns:
        (json_path, md_path).
    """
    if not isinstance(results, Mapping) or not results:
        raise ValueError(f"results must be a non-empty dict, got {results!r}.")
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"name must be a plain file stem without folders, got {name!r}.")
    plain = _plain(results)
    table = "\n".join(f"| {_markdown_cell(key)} | {_markdown_cell(value)} |" for key, value in _flatten(plain))
    markdown = f"# {title}\n\n| metric | value |\n| --- | --- |\n{table}\n"
    out_dir = Path(out_dir)
    json_path = atomic_write_text(
        out_dir / f"{name}.json", json.dumps(plain, sort_keys=True, indent=2, allow_nan=False) + "\n", overwrite
    )
    md_path = atomic_write_text(out_dir / f"{name}.md", markdown, overwrite)
    return json_path, md_path
