"""t-SNE embedding of feature sets (scikit-learn's ``TSNE``) and its scatter plot (real vs generated)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from monai.utils import convert_to_tensor
from sklearn.manifold import TSNE

from common.io import write_png

__all__ = ["TSNE_INITS", "tsne", "SCATTER_COLOURS", "scatter_png"]


# ------------------------------------------------------------------------------------------------------------ t-SNE

TSNE_INITS = ("pca", "random")
"""Initial embeddings :func:`tsne` accepts (those of scikit-learn's ``TSNE``)."""


TSNE_MIN_ITER = 250
"""Fewest iterations scikit-learn's ``TSNE`` runs: its early-exaggeration phase alone takes 250."""


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


def tsne(
    points: torch.Tensor | np.ndarray,
    perplexity: float = 30.0,
    max_iter: int = 1000,
    seed: int = 0,
    learning_rate: float | str = "auto",
    init: str = "pca",
) -> np.ndarray:
    """t-SNE (van der Maaten & Hinton 2008) of (N, D) points into 2D, by scikit-learn's ``TSNE``.

    Barnes-Hut gradients (O(N log N)), early exaggeration 12 for the first 250 iterations, euclidean distances.
    Deterministic for a given ``seed`` (the ``random_state`` of the initial embedding).

    Args:
        points: (N, D) points, N >= 3 (e.g. flattened latents).
        perplexity: effective number of neighbours, 0 < perplexity < N (scikit-learn's bound); about (N - 1) / 3
            at most makes sense for small sets.
        max_iter: optimisation steps at most (it stops earlier without progress), >= 250.
        seed: seed of the initial embedding.
        learning_rate: step size, or ``"auto"``: max(N / 12 / 4, 50) (Belkina et al. 2019).
        init: ``"pca"`` (the first two principal components, globally more faithful; the default) or ``"random"``.

    Returns:
        (N, 2) float64 embedding.
    """
    x = _as_points(points)
    n = x.shape[0]
    if isinstance(perplexity, bool) or not isinstance(perplexity, int | float) or not 0 < perplexity < n:
        raise ValueError(f"perplexity must be in (0, N) = (0, {n}) for N={n} points, got {perplexity!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < TSNE_MIN_ITER:
        raise ValueError(f"max_iter must be an integer >= {TSNE_MIN_ITER}, got {max_iter!r}.")
    if learning_rate != "auto" and (
        isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float) or not learning_rate > 0
    ):
        raise ValueError(f"learning_rate must be a positive number or 'auto', got {learning_rate!r}.")
    if init not in TSNE_INITS:
        raise ValueError(f"init must be one of {TSNE_INITS}, got {init!r}.")
    model = TSNE(
        n_components=2,
        perplexity=float(perplexity),
        max_iter=max_iter,
        learning_rate=learning_rate,
        init=init,
        random_state=seed,
    )
    return model.fit_transform(x).astype(np.float64)


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
