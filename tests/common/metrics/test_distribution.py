"""Tests of the distribution metrics: IS, FDS, DS (paper 002), 3D-FID with histogram equalisation (paper 001), 2D FID,
against values computed by hand or with numpy/scipy in the test, and the metric set's naming rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from common.metrics.distribution import (
    DistributionMetrics,
    FeatureNetwork,
    diversity_score,
    feature_distribution_similarity,
    gaussian_kl_divergence,
    inception_score,
    nearest_similarities,
)
from common.metrics.fid import feature_fid, fid_3d, histogram_equalise


def numpy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook FID with scipy's matrix square root (an independent route from frechet_distance)."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


# ------------------------------------------------------------------------------------------------ Inception Score


def test_inception_score_by_hand() -> None:
    # two images, two classes: p(y|x) = (0.8, 0.2) and (0.2, 0.8), marginal (0.5, 0.5)
    probabilities = torch.tensor([[0.8, 0.2], [0.2, 0.8]])
    kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    mean, std = inception_score(probabilities, splits=1)
    assert mean == pytest.approx(math.exp(kl), rel=1e-6) and std == 0.0


def test_inception_score_splits_give_mean_and_std() -> None:
    # split 1: two confident, opposite images (IS = 2); split 2: two identical images (IS = 1)
    probabilities = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    mean, std = inception_score(probabilities, splits=2)
    assert mean == pytest.approx(1.5) and std == pytest.approx(0.5)  # population std of (2, 1)
    assert inception_score(np.full((6, 4), 0.25), splits=3) == pytest.approx((1.0, 0.0))


@pytest.mark.parametrize(
    "probabilities, splits, message",
    [
        (np.array([[0.5, 0.5]]), 2, "splits must be an integer in"),
        (np.array([[2.0, -1.0]]), 1, "non-negative and sum to 1"),
        (np.array([[0.3, 0.3]]), 1, "sum to 1"),
        (np.ones(4), 1, "must be \\(N, K\\)"),
    ],
)
def test_inception_score_rejects(probabilities: np.ndarray, splits: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        inception_score(probabilities, splits)


# ------------------------------------------------------------------------------------------------------------- FDS


def test_gaussian_kl_divergence_by_hand() -> None:
    # real: a cross of 4 points, mean 0, covariance diag(2/3, 2/3); fake: the cross scaled by 2 and moved by (1, 1)
    real = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    fake = 2 * real + 1
    # 0.5 [tr(S_f^-1 S_r) + d^T S_f^-1 d - k + ln(det S_f / det S_r)] = 0.5 [0.5 + 0.75 - 2 + ln 16]
    expected = 0.5 * (0.5 + 0.75 - 2 + math.log(16.0))
    assert gaussian_kl_divergence(real, fake) == pytest.approx(expected, rel=1e-12)
    assert gaussian_kl_divergence(real, real) == pytest.approx(0.0, abs=1e-12)


def test_gaussian_kl_divergence_matches_a_monte_carlo_estimate() -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(50, 2)), rng.normal(size=(60, 2)) * [1.5, 0.7] + [0.3, -0.2]
    p = scipy.stats.multivariate_normal(real.mean(0), np.cov(real, rowvar=False))
    q = scipy.stats.multivariate_normal(fake.mean(0), np.cov(fake, rowvar=False))
    draws = p.rvs(size=200_000, random_state=1)
    estimate = float(np.mean(p.logpdf(draws) - q.logpdf(draws)))
    assert gaussian_kl_divergence(real, fake) == pytest.approx(estimate, abs=0.01)


def test_gaussian_kl_divergence_rejects_degenerate_sets() -> None:
    with pytest.raises(ValueError, match="fake_points: the fitted covariance is singular"):
        gaussian_kl_divergence(np.eye(3)[:, :2] + [[0, 0], [0, 0], [1, 1]], np.ones((4, 2)))
    with pytest.raises(ValueError, match="one dimension"):
        gaussian_kl_divergence(np.random.rand(5, 2), np.random.rand(5, 3))


def test_fds_is_small_for_one_distribution_and_large_for_two() -> None:
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(12, 1, 6, 6, generator=generator)
    alike = torch.randn(12, 1, 6, 6, generator=generator)
    apart = torch.randn(12, 1, 6, 6, generator=generator) + 4.0
    same = feature_distribution_similarity(real, alike, perplexity=5.0)
    different = feature_distribution_similarity(real, apart, perplexity=5.0)
    assert different > 10 * same
    assert feature_distribution_similarity(real, alike, perplexity=5.0) == same  # seeded t-SNE: deterministic


def test_fds_rejects_too_few_images() -> None:
    with pytest.raises(ValueError, match="at least 3 images"):
        feature_distribution_similarity(torch.zeros(2, 1, 4, 4), torch.zeros(5, 1, 4, 4))


# -------------------------------------------------------------------------------------------------------------- DS


def test_nearest_similarities_by_hand() -> None:
    # constant images 0, 1, 3; similarity = -|difference of the constants|
    images = torch.tensor([0.0, 1.0, 3.0]).reshape(3, 1, 1, 1).expand(3, 1, 2, 2)

    def similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -(x - y).abs().flatten(1).mean(1)

    np.testing.assert_allclose(nearest_similarities(images, similarity), [-1.0, -1.0, -2.0])


def test_diversity_score_by_hand_and_with_scipy() -> None:
    real, fake = [0.1, 0.1, 0.9, 0.9], [0.1, 0.9, 0.9, 0.9]
    # two bins over [0.1, 0.9]: P = (1/2, 1/2), Q = (1/4, 3/4)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert diversity_score(real, fake, bins=2, eps=1e-12) == pytest.approx(expected, rel=1e-9)
    assert diversity_score(real, fake, bins=2, eps=1e-12) == pytest.approx(
        scipy.stats.entropy([0.5, 0.5], [0.25, 0.75]), rel=1e-9
    )
    assert diversity_score(real, real) == pytest.approx(0.0, abs=1e-12)


def test_diversity_score_of_an_empty_synthetic_bin_is_large_but_finite() -> None:
    value = diversity_score([0.0, 1.0], [1.0, 1.0], bins=2, eps=1e-6)
    p, q = np.array([0.5 + 1e-6, 0.5 + 1e-6]), np.array([1e-6, 1 + 1e-6])
    p, q = p / p.sum(), q / q.sum()
    assert value == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-9) and math.isfinite(value) and value > 5


@pytest.mark.parametrize(
    "real, fake, kwargs, message",
    [
        ([0.5], [0.1, 0.2], {}, ">= 2 finite values"),
        ([0.5, np.nan], [0.1, 0.2], {}, ">= 2 finite values"),
        ([0.5, 0.6], [0.1, 0.2], {"bins": 1}, "bins must be an integer >= 2"),
        ([0.5, 0.6], [0.1, 0.2], {"eps": 0.0}, "eps must be > 0"),
    ],
)
def test_diversity_score_rejects(real, fake, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        diversity_score(real, fake, **kwargs)


# ----------------------------------------------------------------------------------------- 3D-FID and 2D FID


def test_histogram_equalise_by_hand() -> None:
    # values 0, 1, 1, 3 in 3 bins over [0, 3]: counts (1, 2, 1), centres (0.5, 1.5, 2.5), cumulative (1, 3, 4)
    # rescaled to (0, 2/3, 1); interpolated at 0 -> 0 (left of the first centre), 1 -> 1/3, 3 -> 1
    volume = torch.tensor([0.0, 1.0, 1.0, 3.0]).reshape(1, 1, 2, 2, 1)
    out = histogram_equalise(volume, num_bins=3)
    np.testing.assert_allclose(out.flatten().numpy(), [0.0, 1 / 3, 1 / 3, 1.0], atol=1e-6)


def test_histogram_equalise_treats_each_volume_alone() -> None:
    volume = torch.tensor([0.0, 1.0, 1.0, 3.0]).reshape(1, 1, 2, 2, 1)
    batch = torch.cat([volume, 10 * volume + 5])  # a monotone map of the first: the same equalised volume
    out = histogram_equalise(batch, num_bins=3)
    torch.testing.assert_close(out[0], out[1])
    with pytest.raises(ValueError, match="num_bins must be an integer >= 2"):
        histogram_equalise(batch, num_bins=1)
    with pytest.raises(ValueError, match="value_range must be"):
        histogram_equalise(batch, value_range=(1.0, 0.0))


def _mean_and_std_features(volumes: torch.Tensor) -> torch.Tensor:
    return torch.stack([volumes.flatten(1).mean(1), volumes.flatten(1).std(1)], 1)


def test_fid_3d_equalises_then_compares_features() -> None:
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(5, 1, 4, 4, 3, generator=generator)
    fake = torch.rand(6, 1, 4, 4, 3, generator=generator) ** 2
    equalised = [histogram_equalise(x) for x in (real, fake)]
    expected = numpy_fid(*(_mean_and_std_features(x).double().numpy() for x in equalised))
    assert fid_3d(real, fake, _mean_and_std_features) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    plain = numpy_fid(*(_mean_and_std_features(x).double().numpy() for x in (real, fake)))
    assert fid_3d(real, fake, _mean_and_std_features, equalise=False) == pytest.approx(plain, rel=1e-6, abs=1e-9)


def test_fid_3d_is_blind_to_intensity_scaling() -> None:
    # the point of Med-DDPM's equalisation: a volume and a rescaled copy (another scanner's intensity scale) have one
    # histogram-equalised form, so only their anatomy is compared
    generator = torch.Generator().manual_seed(1)
    real = torch.rand(4, 1, 4, 4, 4, generator=generator)
    assert fid_3d(real, 3 * real + 2, _mean_and_std_features) == pytest.approx(0.0, abs=1e-6)
    assert fid_3d(real, 3 * real + 2, _mean_and_std_features, equalise=False) > 1.0


def test_feature_fid_of_2d_images_pools_feature_maps() -> None:
    generator = torch.Generator().manual_seed(2)
    real, fake = torch.rand(5, 1, 4, 4, generator=generator), torch.rand(5, 1, 4, 4, generator=generator) + 0.5

    def feature_map(images: torch.Tensor) -> torch.Tensor:  # (B, 2, 4, 4): the image and its square
        return torch.cat([images, images**2], 1)

    pooled = [torch.stack([x.flatten(1).mean(1), (x**2).flatten(1).mean(1)], 1).double().numpy() for x in (real, fake)]
    assert feature_fid(real, fake, feature_map, batch_size=2) == pytest.approx(numpy_fid(*pooled), rel=1e-6)
    with pytest.raises(ValueError, match="same \\(C, \\*spatial\\)"):
        feature_fid(real, fake[:, :, :2], feature_map)


# ------------------------------------------------------------------------------------------- the metric set


def _probabilities(images: torch.Tensor) -> torch.Tensor:
    return torch.stack([images.flatten(1).mean(1), -images.flatten(1).mean(1)], 1).softmax(1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_distribution_metrics_names_follow_the_network(spatial_dims: int) -> None:
    generator = torch.Generator().manual_seed(3)
    shape = (6, 1) + (8,) * spatial_dims
    real, fake = torch.rand(shape, generator=generator) * 2 - 1, torch.rand(shape, generator=generator) * 2 - 1
    paper = FeatureNetwork(_mean_and_std_features, "paper: test", probabilities=_probabilities, paper=True)
    project = FeatureNetwork(_mean_and_std_features, "project-trained test encoder")
    paper_results = DistributionMetrics(spatial_dims, paper, tsne_perplexity=2.0, is_splits=2)(real, fake)
    project_results = DistributionMetrics(spatial_dims, project, tsne_perplexity=2.0)(real, fake)
    none_results = DistributionMetrics(spatial_dims, None, tsne_perplexity=2.0)(real, fake)
    paper_fid = "3D-FID (paper)" if spatial_dims == 3 else "FID (paper, Inception-v3 pool)"
    assert paper_fid in paper_results and "FID (project-trained test encoder)" in project_results
    assert not any("paper" in key for key in project_results) and not any("paper" in key for key in none_results)
    assert project_results["FID (project-trained test encoder)"] == pytest.approx(paper_results[paper_fid])
    if spatial_dims == 2:
        assert paper_results["IS (paper, Inception-v3) mean"] >= 1.0
    assert project_results["IS"].startswith("not computed") and none_results["FID"].startswith("not computed")
    fds = "FDS (t-SNE of the images, KL real || synthetic)"
    assert paper_results[fds] == none_results[fds] >= 0.0
