"""Image metrics on batches (2D and 3D), built on monai.metrics: MSE, PSNR, SSIM, MS-SSIM, MMD, diversity."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from monai.metrics import (
    MMDMetric,
    MSEMetric,
    MultiScaleSSIMMetric,
    PSNRMetric,
    SSIMMetric,
)
from monai.utils import convert_to_tensor

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
]


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of Wang, Simoncelli & Bovik (2003), finest scale first (MONAI's default)."""


MAX_KERNEL_SIZE = 11
"""Gaussian window of SSIM/MS-SSIM in the literature (sigma 1.5)."""


MIN_KERNEL_SIZE = 5
"""Smallest window MS-SSIM may shrink to: below it local statistics come from too few voxels to mean much."""


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
