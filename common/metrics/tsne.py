"""t-SNE embedding of feature sets and its scatter plot (real vs generated)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from monai.utils import convert_to_tensor

from common.io import write_png

__all__ = ["tsne_conditional_probabilities", "tsne", "SCATTER_COLOURS", "scatter_png"]


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
