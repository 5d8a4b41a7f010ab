"""MT-DDPM's distribution metrics (paper 002, "Performance evaluation"): IS, FDS and DS, and the bundle-level set of
distribution metrics (FID / 3D-FID, IS, FDS, DS) named after the feature network that produced them.

Paper 002 gives the metrics as display equations without numbers (the text numbers its equations up to (22); Fig. 1
cites (23) for the sampling step): each docstring quotes the formula and says where it stands in the paper.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor
from scipy.special import rel_entr

from common.metrics.fid import feature_fid, fid_3d, image_features
from common.metrics.image import _as_batch, _check_data_range, _in_chunks, ssim
from common.metrics.tsne import tsne

__all__ = [
    "inception_score",
    "gaussian_kl_divergence",
    "feature_distribution_similarity",
    "nearest_similarities",
    "diversity_score",
    "FeatureNetwork",
    "DistributionMetrics",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ Inception Score


def inception_score(probabilities: torch.Tensor | np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) as paper 002 defines it, mean and std over ``splits`` groups.

    ``IS(p_gen, p_dis) = exp( E_{x ~ p_gen} [ D_KL( p_dis(.|x) || int p_dis(.|x) p_gen(x) dx ) ] )`` (paper 002,
    "Quantitative comparison - intensity distribution evaluation", first unnumbered display equation after Eq. (22)):
    ``p_dis(.|x)`` is the classifier's class distribution for image ``x`` (Inception-v3's softmax) and the integral,
    the marginal ``p(y)``, is the mean of ``p_dis(.|x)`` over the images. As in the original evaluation (and the
    paper's "2.07 +- 0.13"), the images are cut into ``splits`` groups in order (``numpy.array_split``), IS is computed
    within each and the mean and (population) standard deviation over the groups are reported.

    Args:
        probabilities: (N, K) class probabilities, rows summing to 1 (softmax of the logits).
        splits: number of groups, 1 <= splits <= N.

    Returns:
        (mean, std) over the groups.
    """
    p = convert_to_tensor(probabilities, track_meta=False).detach().cpu().double().numpy()
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, K) with N >= 1 and K >= 2 classes, got shape {p.shape}.")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise ValueError("probabilities must be finite, non-negative and sum to 1 per row (a softmax, not logits).")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must be an integer in [1, N] = [1, {p.shape[0]}], got {splits!r}.")
    scores = []
    for group in np.array_split(p, splits):
        marginal = group.mean(0, keepdims=True)
        scores.append(float(np.exp(rel_entr(group, marginal).sum(1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------------ Feature Distribution Similarity


def _as_points(name: str, points: torch.Tensor | np.ndarray, min_points: int) -> np.ndarray:
    array = convert_to_tensor(points, track_meta=False).detach().cpu().double().numpy()
    if array.ndim != 2 or array.shape[0] < min_points or array.shape[1] < 1:
        raise ValueError(f"{name} must be (N, D) points with N >= {min_points}, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(array)).sum())} NaN/inf values.")
    return array


def gaussian_kl_divergence(real_points: torch.Tensor | np.ndarray, fake_points: torch.Tensor | np.ndarray) -> float:
    """``D_KL(N_real || N_fake)`` between Gaussians fitted to two point sets (sample mean, (n - 1) covariance).

    ``0.5 [ tr(S_f^-1 S_r) + (mu_f - mu_r)^T S_f^-1 (mu_f - mu_r) - k + ln(det S_f / det S_r) ]`` for k dimensions:
    the closed form of paper 002's ``D_KL(P || Q) = sum_x P(x) log(P(x) / Q(x))`` (its last unnumbered display
    equation of the intensity-distribution evaluation) for two Gaussians, P the real one.

    Raises:
        ValueError: fewer than k + 1 points in a set, or a singular covariance (points on a line).
    """
    real = _as_points("real_points", real_points, 2)
    fake = _as_points("fake_points", fake_points, 2)
    k = real.shape[1]
    if fake.shape[1] != k:
        raise ValueError(f"real_points and fake_points must have one dimension, got {k} and {fake.shape[1]}.")
    stats = []
    for name, x in (("real_points", real), ("fake_points", fake)):
        cov = np.atleast_2d(np.cov(x, rowvar=False))
        sign, logdet = np.linalg.slogdet(cov)
        if x.shape[0] <= k or sign <= 0 or not np.isfinite(logdet):
            raise ValueError(
                f"{name}: the fitted covariance is singular ({x.shape[0]} points in {k} dimensions): a Gaussian "
                "needs at least k + 1 points in general position."
            )
        stats.append((x.mean(0), cov, logdet))
    (mu_r, cov_r, logdet_r), (mu_f, cov_f, logdet_f) = stats
    diff = mu_f - mu_r
    trace = np.trace(np.linalg.solve(cov_f, cov_r))
    mahalanobis = float(diff @ np.linalg.solve(cov_f, diff))
    return float(0.5 * (trace + mahalanobis - k + logdet_f - logdet_r))


def feature_distribution_similarity(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    perplexity: float = 30.0,
    seed: int = 0,
) -> float:
    """FDS of paper 002: KL divergence between Gaussians fitted to the t-SNE embeddings of the real and fake images.

    Paper 002 ("Quantitative comparison - intensity distribution evaluation"): "T-SNE algorithm are applied to embed
    each image into a two-point feature space ... Gaussian models are fitted to the features from real and synthetic
    data ... FDS is measured by KL divergence between the real and synthetic Gaussian distributions". Its t-SNE
    affinity is the unnumbered ``p_{j|i} = exp(-|x_i - x_j|^2 / 2 s_i^2) / sum_{k != i} exp(-|x_i - x_k|^2 / 2 s_i^2)``
    and the divergence its ``D_KL(P || Q) = sum_x P(x) log(P(x) / Q(x))``, here in the closed form for Gaussians
    (:func:`gaussian_kl_divergence`, P = real). All images (flattened, both sets together, so they share one map) are
    embedded in 2D by :func:`common.metrics.tsne.tsne`; the perplexity is lowered to (N - 1) / 3 for small sets.

    Args:
        real, fake: image sets (B, C, *spatial) of the same (C, *spatial), or feature sets (B, F); >= 3 each.
        perplexity: t-SNE perplexity (30: scikit-learn's default; the paper gives none).
        seed: seed of the t-SNE initialisation (deterministic for a given seed).

    Returns:
        ``D_KL(N_real || N_fake)`` in nats; 0 for sets that embed alike, larger is less similar.
    """
    real_t = convert_to_tensor(real, track_meta=False).detach().cpu().double().flatten(1)
    fake_t = convert_to_tensor(fake, track_meta=False).detach().cpu().double().flatten(1)
    if real_t.shape[1:] != fake_t.shape[1:] or real_t.shape[0] < 3 or fake_t.shape[0] < 3:
        raise ValueError(
            f"real and fake must each hold at least 3 images of one shape, got {tuple(torch.as_tensor(real).shape)} "
            f"and {tuple(torch.as_tensor(fake).shape)}."
        )
    points = torch.cat([real_t, fake_t])
    embedding = tsne(points, perplexity=min(float(perplexity), (points.shape[0] - 1) / 3.0), seed=seed)
    return gaussian_kl_divergence(embedding[: real_t.shape[0]], embedding[real_t.shape[0] :])


# ------------------------------------------------------------------------------------------------ Diversity Score


def nearest_similarities(
    images: torch.Tensor | np.ndarray,
    similarity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    chunk_size: int = 8,
) -> np.ndarray:
    """For each image, its similarity to the most similar other image of the set ("nearest SSIM" of paper 002).

    Args:
        images: (B, C, *spatial), B >= 2.
        similarity_fn: two batches (n, C, *spatial) -> (n,) similarities, e.g. ``partial(ssim, data_range=2.0)``.
        chunk_size: pairs evaluated at once (bounds memory for volumes).

    Returns:
        (B,) float64: ``max_{j != i} similarity(x_i, x_j)``.
    """
    batch = _as_batch("images", images)
    n = batch.shape[0]
    if n < 2:
        raise ValueError(f"images must hold at least 2 images to have a nearest neighbour, got {n}.")
    first, second = torch.triu_indices(n, n, offset=1)
    values = _in_chunks(similarity_fn, batch, batch, first, second, chunk_size).double().cpu()
    matrix = torch.full((n, n), -torch.inf, dtype=torch.float64)
    matrix[first, second] = values
    matrix[second, first] = values
    return matrix.max(1).values.numpy()


def diversity_score(
    real_nearest: Sequence[float] | np.ndarray,
    fake_nearest: Sequence[float] | np.ndarray,
    bins: int = 10,
    eps: float = 1e-6,
) -> float:
    """DS of paper 002: KL divergence between the distributions of nearest SSIMs of real and of synthetic images.

    Paper 002 ("Quantitative comparison - diversity evaluation"): "For each synthetic image, we calculated a SSIMs
    between it and every other synthetic image to find the most similar pair ... nearest SSIM difference, is
    calculated using the KL divergence between the distribution of nearest SSIMs in real and synthetic images";
    SSIM is its unnumbered ``SSIM(x, y) = (2 mu_x mu_y + c1)(2 s_xy + c2) / ((mu_x^2 + mu_y^2 + c1)(s_x^2 + s_y^2 +
    c2))`` and the divergence ``D_KL(P || Q) = sum_x P(x) log(P(x) / Q(x))`` with P the real distribution. The paper
    does not say how the distributions are estimated: here (project choice) as histograms with ``bins`` equal bins
    over the range of both sets' values together, ``eps`` added to every bin before normalising so that an empty
    synthetic bin gives a large, finite divergence.

    Args:
        real_nearest, fake_nearest: nearest similarities (:func:`nearest_similarities`), >= 2 values each.
        bins: histogram bins, >= 2.
        eps: added to each bin's probability, > 0.

    Returns:
        ``D_KL(P_real || Q_fake)`` in nats; 0 when the histograms agree, lower is closer diversity.
    """
    real = np.asarray(real_nearest, dtype=np.float64).ravel()
    fake = np.asarray(fake_nearest, dtype=np.float64).ravel()
    if real.size < 2 or fake.size < 2 or not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise ValueError(f"real_nearest and fake_nearest need >= 2 finite values each, got {real.size}, {fake.size}.")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}.")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}.")
    edges = np.histogram_bin_edges(np.concatenate([real, fake]), bins=bins)
    p, q = (np.histogram(x, bins=edges)[0] / x.size + eps for x in (real, fake))
    p, q = p / p.sum(), q / q.sum()
    return float(rel_entr(p, q).sum())


# ------------------------------------------------------------------------------------------- the bundle-level set


@dataclass
class FeatureNetwork:
    """A feature network for the distribution metrics and the name its figures are reported under.

    Args:
        features: images (B, C, *spatial) -> (B, F) features or a map (B, F, *spatial).
        name: how the figures are labelled, e.g. ``"paper"`` (the paper's pretrained network: "3D-FID (paper)") or
            ``"project-trained 3D encoder (latent_ct autoencoder)"`` ("FID (project-trained ...)").
        probabilities: images -> (B, K) class probabilities for the Inception Score, or None (no IS).
        paper: True only for the paper's own network: only then are figures reported under the paper's names.
    """

    features: Callable[[torch.Tensor], Any]
    name: str
    probabilities: Callable[[torch.Tensor], Any] | None = None
    paper: bool = False


class DistributionMetrics:
    """FID (2D) or 3D-FID, IS, FDS and DS of a generated set against a real set, labelled by their feature network.

    The figures are returned under names that say where their features come from: with the paper's network
    ``"3D-FID (paper)"`` / ``"FID (paper, Inception-v3 pool)"`` and ``"IS (paper, Inception-v3)"``; with any other
    network ``"FID (<network name>)"`` (and no IS, which needs the paper's ImageNet classes). FDS and DS need no
    network (t-SNE of the images, SSIM) and are always computed.

    Args:
        spatial_dims: 2 (FID on whole images) or 3 (Med-DDPM's 3D-FID: histogram equalisation first).
        feature_network: a :class:`FeatureNetwork`, or None (no FID / IS; the report says so).
        data_range: width of the intensity scale (SSIM of DS), 2.0 for [-1, 1].
        equalise: histogram-equalise volumes before the 3D features (the paper's 3D-FID); 3D only.
        equalised_range: the range equalised volumes are mapped to (the one the feature network expects).
        is_splits: IS groups (10 in the original IS; lowered to the number of samples).
        tsne_perplexity, seed: of FDS.
        ds_bins: histogram bins of DS.
        ssim_win_size: SSIM window of DS (lowered to fit small images).
        batch_size, device: of the feature network.
    """

    def __init__(
        self,
        spatial_dims: int,
        feature_network: FeatureNetwork | None = None,
        data_range: float = 2.0,
        equalise: bool = True,
        equalised_range: Sequence[float] = (0.0, 1.0),
        is_splits: int = 10,
        tsne_perplexity: float = 30.0,
        ds_bins: int = 10,
        ssim_win_size: int = 11,
        batch_size: int = 4,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        self.spatial_dims = spatial_dims
        self.feature_network = feature_network
        self.data_range = _check_data_range(data_range)
        self.equalise = bool(equalise)
        self.equalised_range = tuple(float(v) for v in equalised_range)
        self.is_splits = int(is_splits)
        self.tsne_perplexity = float(tsne_perplexity)
        self.ds_bins = int(ds_bins)
        self.ssim_win_size = int(ssim_win_size)
        self.batch_size = int(batch_size)
        self.device = device
        self.seed = int(seed)

    def fid_name(self) -> str:
        network = self.feature_network
        if network is None:
            return ""
        if network.paper:
            return "3D-FID (paper)" if self.spatial_dims == 3 else "FID (paper, Inception-v3 pool)"
        return f"FID ({network.name})"

    def fid(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        features = self.feature_network.features
        if self.spatial_dims == 3:
            return fid_3d(
                real,
                fake,
                features,
                self.equalise,
                value_range=self.equalised_range,
                batch_size=self.batch_size,
                device=self.device,
            )
        return feature_fid(real, fake, features, self.batch_size, self.device)

    def inception_score(self, fake: torch.Tensor) -> tuple[float, float]:
        probabilities = image_features("fake", fake, self.feature_network.probabilities, self.batch_size, self.device)
        return inception_score(probabilities, splits=min(self.is_splits, fake.shape[0]))

    def diversity(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        win = max(1, min(self.ssim_win_size, min(real.shape[2:])))
        win = win if win % 2 else win - 1
        similarity = partial(ssim, data_range=self.data_range, win_size=win)
        return diversity_score(nearest_similarities(real, similarity), nearest_similarities(fake, similarity))

    def __call__(self, real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray) -> dict[str, Any]:
        """The metrics of ``fake`` (B_f, C, *spatial) against ``real`` (B_r, C, *spatial), >= 3 images each (with
        fewer, a ``"not computed"`` entry says so instead of a number)."""
        real = _as_batch("real", real, self.spatial_dims)
        fake = _as_batch("fake", fake, self.spatial_dims)
        if min(real.shape[0], fake.shape[0]) < 3:
            return {
                "not computed": f"FID, IS, FDS and DS need >= 3 real and >= 3 synthetic images, got {real.shape[0]} "
                f"real and {fake.shape[0]} synthetic"
            }
        results: dict[str, Any] = {
            "FDS (t-SNE of the images, KL real || synthetic)": feature_distribution_similarity(
                real, fake, self.tsne_perplexity, self.seed
            ),
            "DS (nearest-SSIM histograms, KL real || synthetic)": self.diversity(real, fake),
        }
        network = self.feature_network
        if network is None:
            results["FID"] = "not computed: no feature network configured (config key 'fid_network')"
            return results
        results[self.fid_name()] = self.fid(real, fake)
        if network.paper and network.probabilities is not None:
            mean, std = self.inception_score(fake)
            results["IS (paper, Inception-v3) mean"], results["IS (paper, Inception-v3) std"] = mean, std
        else:
            results["IS"] = "not computed: needs the paper's Inception-v3 classifier (config key 'fid_network: paper')"
        results["feature network"] = network.name
        return results
