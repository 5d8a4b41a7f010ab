"""Evaluation metrics shared by every bundle (2D and 3D), built on ``monai.metrics``, and the report writer.

What the papers report, and where it is computed here:

- Med-DDPM (Dorjsembe et al. 2024): MSE, MMD and MS-SSIM between real and generated volumes -> :func:`mse`,
  :func:`mmd`, :func:`ms_ssim`; sample diversity as mean pairwise MS-SSIM -> :func:`diversity_ms_ssim`.
- The other seed papers add SSIM and PSNR -> :func:`ssim`, :func:`psnr`; segmentation usefulness uses :func:`dice`.
- The latent CT thesis compares real and generated volumes with a Frechet distance between features of their 2D
  slices (:func:`fid_2d_slices`, features from any 2D extractor the bundle supplies) and shows latent spaces with
  t-SNE (:func:`tsne`, drawn by :func:`scatter_png`).

Images are batches (B, C, H, W) or (B, C, H, W, D). Generated sets are index-aligned with the real set: sample ``i``
was generated from the mask of real case ``i``, so paired metrics compare ``real[i]`` with ``fake[i]``.
:func:`evaluate_sets` gathers everything into one dict of plain floats and :func:`write_report` writes it as JSON and
a markdown table, atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    FIDMetric,
    MMDMetric,
    MSEMetric,
    MultiScaleSSIMMetric,
    PSNRMetric,
    SSIMMetric,
    compute_dice,
)
from monai.utils import convert_to_tensor

from common.io import atomic_write_text, write_png

__all__ = [
    "MS_SSIM_WEIGHTS",
    "MAX_KERNEL_SIZE",
    "MIN_KERNEL_SIZE",
    "mse",
    "psnr",
    "ssim",
    "ms_ssim_settings",
    "ms_ssim",
    "mmd",
    "mean_pairwise",
    "diversity_ms_ssim",
    "dice",
    "evaluate_sets",
    "write_report",
    "FrechetDistanceMetric",
    "frechet_distance",
    "fid_2d_slices",
    "tsne_conditional_probabilities",
    "tsne",
    "SCATTER_COLOURS",
    "scatter_png",
]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of Wang, Simoncelli & Bovik (2003), finest scale first (MONAI's default)."""
MAX_KERNEL_SIZE = 11
"""Gaussian window of SSIM/MS-SSIM in the literature (sigma 1.5)."""
MIN_KERNEL_SIZE = 5
"""Smallest window MS-SSIM may shrink to: below it local statistics come from too few voxels to mean much."""
REPORT_SIGNIFICANT_DIGITS = 6

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _as_batch(name: str, images: torch.Tensor | np.ndarray, spatial_dims: int | None = None) -> torch.Tensor:
    """Validate a batch (B, C, *spatial) of finite values and return it as a plain float32 tensor."""
    if spatial_dims not in (None, 2, 3):
        raise ValueError(f"spatial_dims must be 2, 3 or None (inferred from {name}), got {spatial_dims}.")
    tensor = convert_to_tensor(images, dtype=torch.float32, track_meta=False)
    expected_ndim = (4, 5) if spatial_dims is None else (spatial_dims + 2,)
    if tensor.ndim not in expected_ndim:
        raise ValueError(
            f"{name} must be a batch (B, C, H, W) or (B, C, H, W, D) matching spatial_dims={spatial_dims}, "
            f"got shape {tuple(tensor.shape)}."
        )
    if tensor.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(tensor.shape)}.")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must hold finite values, got {int((~torch.isfinite(tensor)).sum())} NaN/inf.")
    return tensor


def _check_same_shape(x_name: str, x: torch.Tensor, y_name: str, y: torch.Tensor) -> None:
    """Two batches that are compared element-wise must have one shape."""
    if x.shape != y.shape:
        raise ValueError(f"{x_name} and {y_name} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}.")


def _as_pair(
    x_name: str, x: torch.Tensor | np.ndarray, y_name: str, y: torch.Tensor | np.ndarray, spatial_dims: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two batches of the same shape."""
    x_tensor, y_tensor = _as_batch(x_name, x, spatial_dims), _as_batch(y_name, y, spatial_dims)
    _check_same_shape(x_name, x_tensor, y_name, y_tensor)
    return x_tensor, y_tensor


def _check_data_range(data_range: float) -> float:
    """``data_range`` (max - min of the intensity scale, e.g. 2 for [-1, 1]) must be finite and positive."""
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a finite positive number (e.g. 2.0 for [-1, 1]), got {data_range}.")
    return float(data_range)


def mse(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Mean squared error of each pair (Med-DDPM's MSE), averaged over channels and voxels.

    Args:
        x, y: batches (B, C, *spatial) of the same shape.

    Returns:
        (B,) tensor.
    """
    x, y = _as_pair("x", x, "y", y, None)
    return MSEMetric(reduction="none")(y_pred=y, y=x)[:, 0]


def psnr(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, data_range: float) -> torch.Tensor:
    """Peak signal-to-noise ratio of each pair in dB: 20 log10(data_range) - 10 log10(MSE) (inf for equal images).

    Args:
        x, y: batches (B, C, *spatial) of the same shape.
        data_range: width of the intensity scale (2.0 for images in [-1, 1]).

    Returns:
        (B,) tensor.
    """
    data_range = _check_data_range(data_range)
    x, y = _as_pair("x", x, "y", y, None)
    return PSNRMetric(max_val=data_range, reduction="none")(y_pred=y, y=x)[:, 0]


def ssim(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    data_range: float,
    spatial_dims: int | None = None,
    win_size: int = MAX_KERNEL_SIZE,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of each pair, Gaussian window (sigma 1.5), mean over the valid region.

    Args:
        x, y: batches (B, C, *spatial) of the same shape; every spatial size must be >= ``win_size``.
        data_range: width of the intensity scale (2.0 for images in [-1, 1]).
        spatial_dims: 2 or 3; None infers it from the number of axes.
        win_size: odd window size.

    Returns:
        (B,) tensor, 1 for identical images.
    """
    data_range = _check_data_range(data_range)
    x, y = _as_pair("x", x, "y", y, spatial_dims)
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd number, got {win_size}.")
    if min(x.shape[2:]) < win_size:
        raise ValueError(f"spatial sizes of x must all be >= win_size={win_size}, got {tuple(x.shape[2:])}.")
    metric = SSIMMetric(spatial_dims=x.ndim - 2, data_range=data_range, win_size=win_size, reduction="none")
    return metric(y_pred=y, y=x)[:, 0]


def _largest_kernel(size: int, n_scales: int) -> int:
    """Largest odd window <= MAX_KERNEL_SIZE that fits ``size`` voxels at ``n_scales`` scales (0 if none fits).

    Two bounds: the coarsest scale, after ``n_scales - 1`` floor halvings by average pooling, must hold a full
    window; and MONAI checks ``size // max(1, n_scales - 1) ** 2 > kernel_size - 1`` (stricter for 4 scales).
    """
    limit = min(MAX_KERNEL_SIZE, size >> (n_scales - 1), size // max(1, n_scales - 1) ** 2)
    return max(0, limit if limit % 2 else limit - 1)


def ms_ssim_settings(spatial_shape: Sequence[int]) -> tuple[int, tuple[float, ...]]:
    """Window size and scale weights for MS-SSIM on images of ``spatial_shape``.

    Keeps all five scales of :data:`MS_SSIM_WEIGHTS` while a window of at least :data:`MIN_KERNEL_SIZE` fits the
    smallest spatial size, with the largest odd window <= 11 that fits; otherwise drops the coarsest scales, keeping
    the first ``n`` weights renormalised to sum to 1 (one scale is plain SSIM). With five scales the published weights
    are used unchanged. Examples: 192 -> (11, 5 scales),
    128 -> (7, 5 scales), 64 -> (7, 4 scales), 32 -> (7, 3 scales), 16 -> (7, 2 scales).

    Args:
        spatial_shape: (H, W) or (H, W, D).

    Returns:
        (kernel_size, weights), weights finest scale first.

    Raises:
        ValueError: a spatial size is below :data:`MIN_KERNEL_SIZE`, so no setting fits.
    """
    if len(spatial_shape) not in (2, 3) or any(int(s) < 1 for s in spatial_shape):
        raise ValueError(f"spatial_shape must be 2 or 3 positive sizes, got {tuple(spatial_shape)}.")
    size = min(int(s) for s in spatial_shape)
    for n_scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        kernel_size = _largest_kernel(size, n_scales)
        if kernel_size >= MIN_KERNEL_SIZE and n_scales == len(MS_SSIM_WEIGHTS):
            return kernel_size, MS_SSIM_WEIGHTS
        if kernel_size >= MIN_KERNEL_SIZE:
            total = sum(MS_SSIM_WEIGHTS[:n_scales])
            return kernel_size, tuple(w / total for w in MS_SSIM_WEIGHTS[:n_scales])
    raise ValueError(
        f"spatial_shape {tuple(spatial_shape)} is too small for MS-SSIM: every size must be >= {MIN_KERNEL_SIZE}."
    )


def ms_ssim(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, data_range: float, spatial_dims: int | None = None
) -> torch.Tensor:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) of each pair, as Med-DDPM reports it.

    The window and the number of scales come from :func:`ms_ssim_settings` for the images' spatial shape.

    Args:
        x, y: batches (B, C, *spatial) of the same shape.
        data_range: width of the intensity scale (2.0 for images in [-1, 1]).
        spatial_dims: 2 or 3; None infers it from the number of axes.

    Returns:
        (B,) tensor, 1 for identical images.
    """
    data_range = _check_data_range(data_range)
    x, y = _as_pair("x", x, "y", y, spatial_dims)
    kernel_size, weights = ms_ssim_settings(x.shape[2:])
    metric = MultiScaleSSIMMetric(
        spatial_dims=x.ndim - 2, data_range=data_range, kernel_size=kernel_size, weights=weights, reduction="none"
    )
    return metric(y_pred=y, y=x)[:, 0]


def mmd(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray) -> float:
    """Maximum mean discrepancy (Gretton et al. 2012) between two sets, Med-DDPM's MMD, via ``monai.metrics.MMDMetric``.

    MONAI's linear kernel on the flattened images and the unbiased estimator of Gretton's Eq. 3 (the form for sets of
    sizes m and n). The value is a sum over voxels, so it grows with the image size: compare figures at one size only.
    Computed in float64 (its three terms nearly cancel). The estimator assumes the two sets are independent; its cross
    term also sums the matched pairs (real[i], fake[i]), so index-aligned, correlated sets bias it low. In particular
    ``mmd(x, x) = -sum_{i != j} ||x_i - x_j||^2 / (m^2 (m - 1))``: 0 only for a set of identical images, and the
    larger the spread of the set, the more negative.

    Args:
        real: reference set (B, C, *spatial), B >= 2.
        fake: generated set of the same shape.

    Returns:
        The MMD as a float.
    """
    real, fake = _as_pair("real", real, "fake", fake, None)
    if real.shape[0] < 2:
        raise ValueError(f"real and fake must each hold at least 2 images for MMD, got batch size {real.shape[0]}.")
    return float(MMDMetric()(real.double(), fake.double()))


def _in_chunks(
    metric_fn: MetricFn, x: torch.Tensor, y: torch.Tensor, x_index: torch.Tensor, y_index: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """``metric_fn(x[x_index], y[y_index])`` evaluated ``chunk_size`` pairs at a time (bounded memory), shape (N,)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    values = []
    for start in range(0, len(x_index), chunk_size):
        stop = start + chunk_size
        value = metric_fn(x[x_index[start:stop]], y[y_index[start:stop]])
        expected = (len(x_index[start:stop]),)
        if tuple(value.shape) != expected:
            raise ValueError(f"metric_fn must return one value per pair, shape {expected}, got {tuple(value.shape)}.")
        values.append(value)
    return torch.cat(values)


def mean_pairwise(metric_fn: MetricFn, images: torch.Tensor | np.ndarray, chunk_size: int = 8) -> float:
    """Mean of a pairwise metric over all B (B - 1) / 2 unordered pairs of distinct images of one set.

    Used for diversity (Med-DDPM): with MS-SSIM, lower means more diverse; compare with the same figure on real data.

    Args:
        metric_fn: maps two batches (N, C, *spatial) to (N,) values, e.g. ``partial(ms_ssim, data_range=2.0)``.
        images: set (B, C, *spatial), B >= 2.
        chunk_size: pairs evaluated at once.

    Returns:
        The mean as a float.
    """
    images = _as_batch("images", images)
    if images.shape[0] < 2:
        raise ValueError(f"images must hold at least 2 images to form pairs, got batch size {images.shape[0]}.")
    first, second = torch.triu_indices(images.shape[0], images.shape[0], offset=1)
    return float(_in_chunks(metric_fn, images, images, first, second, chunk_size).mean())


def diversity_ms_ssim(
    images: torch.Tensor | np.ndarray, data_range: float, spatial_dims: int | None = None, chunk_size: int = 8
) -> float:
    """Mean pairwise MS-SSIM of a set (B, C, *spatial), B >= 2: 1 for identical images, lower is more diverse."""
    return mean_pairwise(partial(ms_ssim, data_range=data_range, spatial_dims=spatial_dims), images, chunk_size)


def _as_binary(name: str, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate a batch (B, C, *spatial) of boolean or 0/1 values and return it as float32."""
    tensor = convert_to_tensor(mask, track_meta=False)
    if tensor.ndim < 3 or tensor.numel() == 0:
        raise ValueError(f"{name} must be a non-empty batch (B, C, *spatial), got shape {tuple(tensor.shape)}.")
    tensor = tensor.float()
    if not bool(((tensor == 0) | (tensor == 1)).all()):
        raise ValueError(
            f"{name} must be boolean or hold only 0 and 1, got values {torch.unique(tensor)[:8].tolist()}."
        )
    return tensor


def dice(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Dice overlap 2|P & T| / (|P| + |T|) of boolean masks, per batch item (segmentation usefulness, papers 000/001).

    Args:
        pred, target: boolean or 0/1 masks (B, C, *spatial) of the same shape; channels are separate structures.

    Returns:
        (B,) tensor: the mean over channels of each channel's Dice; a channel empty in both masks counts as 1.
    """
    pred_tensor, target_tensor = _as_binary("pred", pred), _as_binary("target", target)
    _check_same_shape("pred", pred_tensor, "target", target_tensor)
    return compute_dice(pred_tensor, target_tensor, include_background=True, ignore_empty=False).mean(dim=1)


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


# ------------------------------------------------------------------------------------------- Frechet distance (FID)


def _as_features(name: str, features: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate a feature set (N, F), N >= 2, finite, and return it as float64 on the CPU."""
    tensor = convert_to_tensor(features, track_meta=False)
    if tensor.ndim != 2 or tensor.shape[0] < 2 or tensor.shape[1] < 1:
        raise ValueError(f"{name} must be (N, F) feature vectors with N >= 2, got shape {tuple(tensor.shape)}.")
    tensor = tensor.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must hold finite values, got {int((~torch.isfinite(tensor)).sum())} NaN/inf.")
    return tensor


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from rounding count as 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID of Heusel et al. 2017).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` with sample means and (n - 1) covariances, in
    float64. ``tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of the symmetric matrix
    ``S_a^(1/2) S_b S_a^(1/2)`` (same spectrum as ``S_a S_b``), so no scipy is needed (MONAI's ``FIDMetric`` takes
    the matrix square root with scipy, which is not a dependency here).

    Args:
        features_a, features_b: (N_a, F) and (N_b, F) feature vectors, N >= 2 each.

    Returns:
        The distance as a float (0 for identical sets, up to rounding).
    """
    a, b = _as_features("features_a", features_a), _as_features("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features_a and features_b must have the same feature size, got {a.shape[1]} and {b.shape[1]}."
        )
    cov_a, cov_b = (torch.cov(x.T).reshape(x.shape[1], x.shape[1]) for x in (a, b))
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    mean_term = (a.mean(0) - b.mean(0)).square().sum()
    return float(mean_term + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_root)


class FrechetDistanceMetric(FIDMetric):
    """MONAI's ``FIDMetric`` (``metric(y_pred=fake_features, y=real_features)``) computed by :func:`frechet_distance`."""

    def __call__(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tensor(frechet_distance(y_pred, y), dtype=torch.float64)


def _slice_indices(slices: Sequence[int] | slice | None, size: int) -> list[int]:
    """Slice indices along an axis of ``size``: all (None), a Python ``slice`` (e.g. a stride) or a list of ints."""
    if slices is None:
        return list(range(size))
    if isinstance(slices, slice):
        indices = list(range(size)[slices])
    elif isinstance(slices, Sequence) and all(
        isinstance(i, int | np.integer) and not isinstance(i, bool) for i in slices
    ):
        if any(not -size <= int(i) < size for i in slices):
            raise ValueError(f"slices must be indices in [-{size}, {size}) along the slicing axis, got {list(slices)}.")
        indices = [int(i) % size for i in slices]
    else:
        raise ValueError(f"slices must be None, a slice (e.g. slice(None, None, 4)) or a list of ints, got {slices!r}.")
    if not indices:
        raise ValueError(f"slices {slices!r} selects no slice of an axis of size {size}.")
    return indices


def _slice_features(
    name: str,
    volumes: torch.Tensor,
    feature_fn: Callable[[torch.Tensor], Any],
    axis: int,
    indices: list[int],
    batch_size: int,
    device: torch.device | str | None,
) -> torch.Tensor:
    """Features (B * K, F) of the K selected 2D slices (B * K, C, h, w) of every volume, ``batch_size`` at a time."""
    selected = volumes.index_select(axis, torch.tensor(indices)).movedim(axis, 1)
    slices_2d = selected.reshape(-1, *selected.shape[2:])
    features = []
    with torch.no_grad():
        for start in range(0, slices_2d.shape[0], batch_size):
            chunk = slices_2d[start : start + batch_size]
            value = convert_to_tensor(feature_fn(chunk if device is None else chunk.to(device)), track_meta=False)
            if value.ndim > 2:
                value = value.flatten(2).mean(2)  # global average pooling of a feature map
            if value.ndim != 2 or value.shape[0] != chunk.shape[0]:
                raise ValueError(
                    f"feature_fn must return (N, F) features or an (N, F, *spatial) map for {name} slices "
                    f"{tuple(chunk.shape)}, got shape {tuple(value.shape)}."
                )
            features.append(value.detach().to("cpu", torch.float64))
    return torch.cat(features)


def fid_2d_slices(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    feature_fn: Callable[[torch.Tensor], Any],
    axis: int = -1,
    slices: Sequence[int] | slice | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> float:
    """Frechet distance between the features of the 2D slices of two sets of 3D volumes (a 2D-slice FID).

    Every volume is cut along ``axis`` into 2D slices (N, C, h, w); ``feature_fn`` maps ``batch_size`` slices at a
    time (without gradients) to (N, F) features or to a feature map (N, F, *spatial) that is averaged to (N, F); the
    two pooled feature sets (all slices of all volumes) are compared with :class:`FrechetDistanceMetric`. The sets
    need not be paired or of equal size. Like any FID, the value depends on the feature extractor and is biased
    upwards for small sets: compare figures computed with the same extractor and numbers of slices only.

    Args:
        real: reference volumes (B_r, C, H, W, D).
        fake: generated volumes (B_f, C, H, W, D), same C, H, W, D.
        feature_fn: 2D feature extractor, e.g. an autoencoder's encoder followed by pooling.
        axis: spatial axis to slice along: 2, 3, 4 or -3, -2, -1 (default: the last, D).
        slices: which indices along ``axis``: None (all), a ``slice`` (e.g. ``slice(None, None, 4)``) or a list.
        batch_size: slices per ``feature_fn`` call.
        device: device the slices are moved to before ``feature_fn`` (default: left on the CPU).

    Returns:
        The distance as a float.

    Raises:
        ValueError: volumes that are not 3D batches or differ in shape beyond the batch size, a bad ``axis``,
            ``slices`` or ``batch_size``, features of the wrong shape, or fewer than 2 slices per set.
    """
    real, fake = _as_batch("real", real, spatial_dims=3), _as_batch("fake", fake, spatial_dims=3)
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(
            f"real and fake volumes must have the same (C, H, W, D), got {tuple(real.shape[1:])} and "
            f"{tuple(fake.shape[1:])}."
        )
    if isinstance(axis, bool) or axis not in (2, 3, 4, -3, -2, -1):
        raise ValueError(f"axis must be a spatial axis of (B, C, H, W, D): 2, 3, 4 or -3, -2, -1; got {axis!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    axis = axis % 5
    indices = _slice_indices(slices, real.shape[axis])
    features = [
        _slice_features(name, volumes, feature_fn, axis, indices, batch_size, device)
        for name, volumes in (("real", real), ("fake", fake))
    ]
    return float(FrechetDistanceMetric()(y_pred=features[1], y=features[0]))


# ------------------------------------------------------------------------------------------------------------ t-SNE

TSNE_EXAGGERATION = 12.0
"""Early exaggeration factor of P (van der Maaten 2014's setting; the 2008 paper used 4)."""
TSNE_MOMENTUM = (0.5, 0.8)
"""Momentum during the early-exaggeration phase, then afterwards (van der Maaten & Hinton 2008)."""
TSNE_MIN_GAIN = 0.01
TSNE_INIT_STD = 1e-2
"""Standard deviation of the initial Gaussian embedding (the paper's N(0, 1e-4 I))."""


def _as_points(points: torch.Tensor | np.ndarray) -> np.ndarray:
    """Validate points (N, D), N >= 3, finite, and return them as float64 numpy."""
    array = np.asarray(convert_to_tensor(points, track_meta=False).detach().cpu().double().numpy())
    if array.ndim != 2 or array.shape[1] < 1:
        raise ValueError(f"points must be an (N, D) array, got shape {array.shape}.")
    if array.shape[0] < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {array.shape[0]}.")
    if not np.isfinite(array).all():
        raise ValueError(f"points must be finite, got {int((~np.isfinite(array)).sum())} NaN/inf values.")
    return array


def _squared_distances(x: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances (N, N), exact zeros on the diagonal."""
    norms = (x * x).sum(1)
    distances = np.maximum(norms[:, None] + norms[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(distances, 0.0)
    return distances


def tsne_conditional_probabilities(
    points: torch.Tensor | np.ndarray, perplexity: float = 30.0, tol: float = 1e-5, max_iter: int = 200
) -> np.ndarray:
    """The conditional affinities p_{j|i} of t-SNE, each row calibrated to the perplexity (its Eq. 1).

    ``p_{j|i} = exp(-beta_i d_ij^2) / sum_{k != i} exp(-beta_i d_ik^2)`` with ``beta_i = 1 / (2 sigma_i^2)`` found per
    point by bisection so that the row entropy ``H(P_i) = -sum_j p_{j|i} log p_{j|i}`` equals ``log(perplexity)``
    (natural logarithm; perplexity = exp(H)). All rows are searched together. A row that cannot reach the target
    (e.g. a point with many exact duplicates) keeps the closest value found.

    Args:
        points: (N, D) points, N >= 3.
        perplexity: effective number of neighbours, 1 <= perplexity < N - 1.
        tol: tolerance on each row's entropy, in nats.
        max_iter: bisection steps at most.

    Returns:
        (N, N) float64 array, rows summing to 1, zero diagonal.
    """
    x = _as_points(points)
    n = x.shape[0]
    if not (isinstance(perplexity, int | float) and math.isfinite(perplexity) and 1.0 <= perplexity < n - 1):
        raise ValueError(f"perplexity must be in [1, N - 1) = [1, {n - 1}) for N={n} points, got {perplexity!r}.")
    if not tol > 0 or isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"tol must be > 0 and max_iter a positive integer, got tol={tol!r}, max_iter={max_iter!r}.")
    distances = _squared_distances(x)
    off_diagonal = ~np.eye(n, dtype=bool)
    # shift each row by its smallest distance: the nearest neighbour gets exp(0) = 1, so no row underflows to zero
    nearest = np.where(off_diagonal, distances, np.inf).min(1, keepdims=True)
    shifted = np.where(off_diagonal, distances - nearest, 0.0)
    target = math.log(perplexity)
    scale = shifted.sum(1) / (n - 1)
    beta = np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), 1.0)
    low, high = np.zeros(n), np.full(n, np.inf)
    for _ in range(max_iter):
        weights = np.exp(-shifted * beta[:, None]) * off_diagonal
        total = weights.sum(1)
        entropy = np.log(total) + beta * (shifted * weights).sum(1) / total
        excess = entropy - target
        if np.all(np.abs(excess) < tol):
            break
        too_flat = excess > 0  # entropy too high: sharpen (larger beta)
        low = np.where(too_flat, beta, low)
        high = np.where(too_flat, high, beta)
        beta = np.where(np.isinf(high), beta * 2.0, (low + high) / 2.0)
    return weights / total[:, None]


def _student_t(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Student-t kernel ``(1 + |y_i - y_j|^2)^-1`` (zero diagonal) and the affinities Q of an embedding ``y``."""
    kernel = 1.0 / (1.0 + _squared_distances(y))
    np.fill_diagonal(kernel, 0.0)
    return kernel, np.maximum(kernel / kernel.sum(), 1e-12)


def _kl_gradient(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient of KL(P || Q) with respect to the embedding ``y`` (the paper's Eq. 5)."""
    kernel, q = _student_t(y)
    weights = (p - q) * kernel
    return 4.0 * (weights.sum(1)[:, None] * y - weights @ y)


def _kl_divergence(p: np.ndarray, y: np.ndarray) -> float:
    """KL(P || Q) of the embedding ``y`` (pairs with p_ij = 0 contribute 0)."""
    _, q = _student_t(y)
    mask = p > 0
    return float((p[mask] * np.log(p[mask] / q[mask])).sum())


def tsne(
    points: torch.Tensor | np.ndarray,
    perplexity: float = 30.0,
    n_iter: int = 500,
    seed: int = 0,
    learning_rate: float | str = "auto",
) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) of (N, D) points into 2D, O(N^2) memory (fine up to ~1000 points).

    Gaussian conditional affinities calibrated to ``perplexity`` (:func:`tsne_conditional_probabilities`),
    symmetrised ``p_ij = (p_{j|i} + p_{i|j}) / 2N``; Student-t (one degree of freedom) affinities ``q_ij`` in the
    embedding; gradient descent on KL(P || Q) from ``N(0, TSNE_INIT_STD^2)`` with early exaggeration (P x 12) for
    the first ``min(250, n_iter // 4)`` iterations, momentum 0.5 then 0.8, and per-coordinate adaptive gains
    (+0.2 while the gradient keeps its direction, x0.8 when it flips, at least 0.01). The embedding is re-centred
    after every step. Deterministic for a given ``seed``.

    Args:
        points: (N, D) points, N >= 3 (e.g. flattened latents).
        perplexity: effective number of neighbours, 1 <= perplexity < N - 1.
        n_iter: gradient steps.
        seed: seed of the initial embedding.
        learning_rate: step size, or ``"auto"``: max(N / 12, 50) (Belkina et al. 2019: N / exaggeration).

    Returns:
        (N, 2) float64 embedding.
    """
    conditional = tsne_conditional_probabilities(points, perplexity)
    n = conditional.shape[0]
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}.")
    if learning_rate == "auto":
        rate = max(n / TSNE_EXAGGERATION, 50.0)
    elif isinstance(learning_rate, int | float) and not isinstance(learning_rate, bool) and learning_rate > 0:
        rate = float(learning_rate)
    else:
        raise ValueError(f"learning_rate must be a positive number or 'auto', got {learning_rate!r}.")
    p = np.maximum((conditional + conditional.T) / (2.0 * n), 1e-12)
    np.fill_diagonal(p, 0.0)
    y = np.random.default_rng(seed).normal(0.0, TSNE_INIT_STD, (n, 2))
    step, gains = np.zeros_like(y), np.ones_like(y)
    exaggeration_iters = min(250, n_iter // 4)
    for iteration in range(n_iter):
        early = iteration < exaggeration_iters
        gradient = _kl_gradient(p * TSNE_EXAGGERATION if early else p, y)
        momentum = TSNE_MOMENTUM[0] if early else TSNE_MOMENTUM[1]
        same_direction = np.sign(gradient) != np.sign(step)  # the step goes against the gradient
        gains = np.maximum(np.where(same_direction, gains + 0.2, gains * 0.8), TSNE_MIN_GAIN)
        step = momentum * step - rate * gains * gradient
        y = y + step
        y -= y.mean(0)
    return y


# -------------------------------------------------------------------------------------------------- scatter plots

SCATTER_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
"""Group colours of :func:`scatter_png`, in the order of the groups."""
_MIN_SCATTER_SIZE = 64


def scatter_png(
    path: str | os.PathLike,
    points_by_group: Mapping[str, torch.Tensor | np.ndarray],
    size: int = 512,
    overwrite: bool = True,
) -> Path:
    """Write a plain scatter plot of 2D points (e.g. a t-SNE embedding) as an RGB PNG, atomically.

    White background; group ``k`` (in dict order) is drawn in ``SCATTER_COLOURS[k]`` as small squares, later groups
    on top. Both axes share one scale (distances are comparable in every direction) and the points fill the plot
    area. The legend is a row of coloured squares along the top edge, in group order; the group names and colours
    are stored in the PNG's ``Legend`` text chunk (no text is drawn).

    Args:
        path: destination ``.png`` file.
        points_by_group: group name -> (N, 2) points, N >= 1, at most ``len(SCATTER_COLOURS)`` groups.
        size: width and height in pixels, >= 64.
        overwrite: replace an existing file.

    Returns:
        The path written.
    """
    if not isinstance(points_by_group, Mapping) or not points_by_group:
        raise ValueError(
            f"points_by_group must be a non-empty dict of group name -> (N, 2) points, got {points_by_group!r}."
        )
    if len(points_by_group) > len(SCATTER_COLOURS):
        raise ValueError(f"at most {len(SCATTER_COLOURS)} groups can be told apart, got {len(points_by_group)}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < _MIN_SCATTER_SIZE:
        raise ValueError(f"size must be an integer >= {_MIN_SCATTER_SIZE} pixels, got {size!r}.")
    groups = {}
    for name, points in points_by_group.items():
        array = np.asarray(convert_to_tensor(points, track_meta=False).detach().cpu().double().numpy())
        if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
            raise ValueError(f"points of group {name!r} must be a non-empty (N, 2) array, got shape {array.shape}.")
        if not np.isfinite(array).all():
            raise ValueError(
                f"points of group {name!r} must be finite, got {int((~np.isfinite(array)).sum())} NaN/inf."
            )
        groups[str(name)] = array
    everything = np.concatenate(list(groups.values()))
    low, high = everything.min(0), everything.max(0)
    pad, radius = size // 16, max(1, size // 256)
    span = max(float((high - low).max()), 1e-12)
    scale = (size - 2 * pad - 1) / span
    offset = pad + ((size - 2 * pad - 1) - (high - low) * scale) / 2  # centre the shorter axis
    image = np.full((size, size, 3), 255, np.uint8)
    for colour, array in zip(SCATTER_COLOURS, groups.values()):
        columns = np.round(offset[0] + (array[:, 0] - low[0]) * scale).astype(int)
        rows = np.round(size - 1 - offset[1] - (array[:, 1] - low[1]) * scale).astype(int)  # y axis points up
        for dr in range(-radius, radius + 1):
            for dc in range(-radius, radius + 1):
                image[np.clip(rows + dr, 0, size - 1), np.clip(columns + dc, 0, size - 1)] = colour
    square = max(2, min(pad // 2, (size - 2 * pad) // (2 * len(groups))))
    top = (pad - square) // 2
    for k, colour in enumerate(SCATTER_COLOURS[: len(groups)]):
        left = pad + 2 * square * k
        image[top : top + square, left : left + square] = colour
    legend = "; ".join(
        f"{k + 1}: {name} = #{r:02x}{g:02x}{b:02x}" for k, (name, (r, g, b)) in enumerate(zip(groups, SCATTER_COLOURS))
    )
    return write_png(path, image, text={"Legend": legend}, overwrite=overwrite)
