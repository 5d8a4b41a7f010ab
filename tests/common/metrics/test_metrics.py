"""Tests of common.metrics: hand-computed MSE/PSNR/MMD/Dice, SSIM identities, MS-SSIM settings, reports."""

from __future__ import annotations

import json
import math
import struct
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from common.metrics.fid import FrechetDistanceMetric, fid_2d_slices, frechet_distance
from common.metrics.image import (
    MS_SSIM_WEIGHTS,
    diversity_ms_ssim,
    mean_pairwise,
    mmd,
    ms_ssim,
    ms_ssim_settings,
    mse,
    psnr,
    ssim,
)
from common.metrics.report import evaluate_sets, write_report
from common.metrics.segmentation import dice
from common.metrics.tsne import SCATTER_COLOURS, scatter_png, tsne


def random_set(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images in [-1, 1] (a blurred noise field, so SSIM statistics are not degenerate)."""
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    pool = torch.nn.functional.avg_pool2d if len(shape) == 4 else torch.nn.functional.avg_pool3d
    return pool(noise, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def mean_abs_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).abs().flatten(1).mean(1)


# --------------------------------------------------------------------------------------------------- MSE and PSNR


def test_mse_and_psnr_by_hand() -> None:
    x = torch.zeros(2, 1, 4, 4)
    y = torch.stack([torch.full((1, 4, 4), 0.5), torch.full((1, 4, 4), 1.0)])
    torch.testing.assert_close(mse(x, y), torch.tensor([0.25, 1.0]))
    expected = [20 * math.log10(2.0) - 10 * math.log10(v) for v in (0.25, 1.0)]
    torch.testing.assert_close(psnr(x, y, data_range=2.0), torch.tensor(expected))
    assert torch.isinf(psnr(x, x, data_range=2.0)).all()


def test_mse_matches_numpy_on_3d() -> None:
    x, y = random_set((3, 2, 5, 6, 7), 0), random_set((3, 2, 5, 6, 7), 1)
    expected = ((x.numpy() - y.numpy()) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(mse(x.numpy(), y).numpy(), expected, rtol=1e-6)


# -------------------------------------------------------------------------------------------------- SSIM, MS-SSIM


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 1, 16, 16, 16)])
def test_ssim_identity_and_difference(shape: tuple[int, ...]) -> None:
    x, y = random_set(shape, 0), random_set(shape, 1)
    torch.testing.assert_close(ssim(x, x, data_range=2.0), torch.ones(2))
    value = ssim(x, y, data_range=2.0, spatial_dims=len(shape) - 2)
    assert value.shape == (2,) and bool((value < 0.5).all())


@pytest.mark.parametrize(
    ("size", "kernel_size", "n_scales"),
    [(8, 7, 1), (16, 7, 2), (32, 7, 3), (64, 7, 4), (96, 5, 5), (128, 7, 5), (160, 9, 5), (192, 11, 5), (512, 11, 5)],
)
def test_ms_ssim_settings(size: int, kernel_size: int, n_scales: int) -> None:
    chosen_kernel, weights = ms_ssim_settings((size, size, size))
    assert (chosen_kernel, len(weights)) == (kernel_size, n_scales)
    if n_scales == len(MS_SSIM_WEIGHTS):
        assert weights == MS_SSIM_WEIGHTS
    else:
        assert math.isclose(sum(weights), 1.0)
        np.testing.assert_allclose(np.array(weights) / weights[0], np.array(MS_SSIM_WEIGHTS[:n_scales]) / 0.0448)
    assert ms_ssim_settings((size, size)) == (chosen_kernel, weights)


def test_ms_ssim_settings_follow_smallest_axis() -> None:
    assert ms_ssim_settings((128, 128, 32)) == ms_ssim_settings((32, 32, 32))


@pytest.mark.parametrize("size", [8, 11, 16, 24, 32, 48, 64, 96, 128, 160, 192])
def test_ms_ssim_settings_are_accepted_by_monai(size: int) -> None:
    x = random_set((1, 1, size, size), size)
    torch.testing.assert_close(ms_ssim(x, x, data_range=2.0), torch.ones(1))


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (2, 1, 32, 32, 32), (2, 2, 16, 16, 16)])
def test_ms_ssim_identity_and_difference(shape: tuple[int, ...]) -> None:
    x, y = random_set(shape, 0), random_set(shape, 1)
    torch.testing.assert_close(ms_ssim(x, x, data_range=2.0), torch.ones(2))
    assert bool((ms_ssim(x, y, data_range=2.0) < 0.9).all())


@pytest.mark.parametrize(
    ("shape", "message"), [((4, 4, 4), "too small"), ((32,), "2 or 3 positive"), ((32, 0), "2 or 3 positive")]
)
def test_ms_ssim_settings_rejects(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ms_ssim_settings(shape)


# ------------------------------------------------------------------------------------------------ pairwise diversity


def test_mean_pairwise_over_unordered_pairs() -> None:
    images = torch.stack([torch.full((1, 3, 3), v) for v in (0.0, 1.0, 3.0)])
    assert mean_pairwise(mean_abs_difference, images) == pytest.approx(2.0)
    assert mean_pairwise(mean_abs_difference, images, chunk_size=1) == pytest.approx(2.0)


def test_diversity_of_identical_images_is_one() -> None:
    images = random_set((1, 1, 32, 32, 32)).repeat(3, 1, 1, 1, 1)
    assert diversity_ms_ssim(images, data_range=2.0) == pytest.approx(1.0, abs=1e-5)
    assert diversity_ms_ssim(random_set((3, 1, 32, 32, 32)), data_range=2.0) < 0.9


@pytest.mark.parametrize(
    ("metric_fn", "images", "chunk_size", "message"),
    [
        (mean_abs_difference, torch.zeros(1, 1, 4, 4), 8, "at least 2 images"),
        (mean_abs_difference, torch.zeros(2, 1, 4, 4), 0, "chunk_size"),
        (lambda x, y: (x - y).mean(), torch.zeros(2, 1, 4, 4), 8, "one value per pair"),
    ],
)
def test_mean_pairwise_rejects(metric_fn, images: torch.Tensor, chunk_size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mean_pairwise(metric_fn, images, chunk_size=chunk_size)


# -------------------------------------------------------------------------------------------------------------- MMD


def test_mmd_matches_gretton_eq3_by_hand() -> None:
    real, fake = random_set((4, 1, 6, 6, 6), 0).double(), random_set((4, 1, 6, 6, 6), 1).double() + 0.3
    x, y = real.reshape(4, -1).numpy(), fake.reshape(4, -1).numpy()
    m = n = 4
    within_x = sum(x[i] @ x[j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_y = sum(y[i] @ y[j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    across = sum(x[i] @ y[j] for i in range(m) for j in range(n)) * 2 / (m * n)
    assert mmd(real, fake) == pytest.approx(within_x + within_y - across, rel=1e-9)
    assert mmd(real, fake) > 0


def test_mmd_of_a_set_with_itself() -> None:
    copies = random_set((1, 1, 8, 8, 8)).repeat(3, 1, 1, 1, 1)
    assert mmd(copies, copies) == pytest.approx(0.0, abs=1e-9)
    varied = random_set((3, 1, 8, 8, 8), 3).double()
    spread = sum(((varied[i] - varied[j]) ** 2).sum() for i in range(3) for j in range(3) if i != j)
    assert mmd(varied, varied) == pytest.approx(-float(spread) / (3**2 * 2), rel=1e-9)


@pytest.mark.parametrize(
    ("real", "fake", "message"),
    [
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), "at least 2 images"),
        (torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 4, 4), "same shape"),
    ],
)
def test_mmd_rejects(real: torch.Tensor, fake: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mmd(real, fake)


# ------------------------------------------------------------------------------------------------------------- Dice


def test_dice_values() -> None:
    target = torch.zeros(4, 1, 4, 4, dtype=torch.bool)
    target[:3, :, :2] = True  # 8 voxels in items 0-2, item 3 empty
    pred = target.clone()
    pred[1] = ~target[1]  # disjoint
    pred[2, :, :2, :2] = False  # 4 of 8 kept: 2 * 4 / (4 + 8)
    torch.testing.assert_close(dice(pred, target), torch.tensor([1.0, 0.0, 2 / 3, 1.0]))
    two_channels = torch.cat([target[:1], pred[1:2]], dim=1)
    torch.testing.assert_close(dice(two_channels, two_channels.int().numpy()), torch.tensor([1.0]))
    torch.testing.assert_close(dice(two_channels, target[:1].repeat(1, 2, 1, 1)), torch.tensor([0.5]))


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, 1, 2, 2), "pred must be boolean"),
        (torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0), "target must be boolean"),
        (torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3), "same shape"),
        (torch.zeros(2, 2), torch.zeros(2, 2), "pred must be a non-empty batch"),
    ],
)
def test_dice_rejects(pred: torch.Tensor, target: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dice(pred, target)


# ------------------------------------------------------------------------------------------------ input validation


@pytest.mark.parametrize(
    ("metric", "x", "y", "message"),
    [
        (mse, torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), r"x must be a batch \(B, C, H, W\)"),
        (mse, torch.zeros(2, 1, 0, 4), torch.zeros(2, 1, 0, 4), "x must not be empty"),
        (mse, torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), math.nan), "y must hold finite values"),
        (mse, torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5), "x and y must have the same shape"),
        (partial(psnr, data_range=0.0), torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), "data_range"),
        (partial(ssim, data_range=2.0, spatial_dims=3), torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 16), "3"),
        (partial(ssim, data_range=2.0, spatial_dims=4), torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 16), "2, 3"),
        (partial(ssim, data_range=2.0), torch.zeros(2, 1, 8, 16), torch.zeros(2, 1, 8, 16), "win_size=11"),
        (partial(ssim, data_range=2.0, win_size=4), torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), "odd"),
        (partial(ms_ssim, data_range=math.inf), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), "data_range"),
    ],
)
def test_metrics_reject_bad_input(metric, x: torch.Tensor, y: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metric(x, y)


# ------------------------------------------------------------------------------------------------------ full sets


@pytest.mark.parametrize("shape", [(2, 1, 32, 32, 32), (3, 1, 64, 64)])
def test_evaluate_sets_on_identical_sets(shape: tuple[int, ...]) -> None:
    real = random_set(shape, 0)
    results = evaluate_sets(real, real.clone())
    assert results["n_pairs"] == shape[0] and results["spatial_shape"] == list(shape[2:])
    assert results["mse_mean"] == 0.0 and results["mse_std"] == 0.0 and math.isinf(results["psnr_mean"])
    assert results["ssim_mean"] == pytest.approx(1.0) and results["ms_ssim_to_real_mean"] == pytest.approx(1.0)
    assert results["ms_ssim_diversity_fake"] == pytest.approx(results["ms_ssim_diversity_real"])
    assert (results["ms_ssim_kernel_size"], len(results["ms_ssim_weights"])) == (7, 3 if len(shape) == 5 else 4)
    assert all(isinstance(v, float) for k, v in results.items() if k.endswith(("_mean", "_std", "mmd", "_real")))


def test_evaluate_sets_on_noisy_copies() -> None:
    real = random_set((3, 1, 32, 32, 32), 0)
    noise = 0.1 * torch.randn(real.shape, generator=torch.Generator().manual_seed(5))
    results = evaluate_sets(real.numpy(), real + noise, data_range=2.0, spatial_dims=3, chunk_size=2)
    assert results["mse_mean"] == pytest.approx(0.01, rel=0.05)
    assert results["psnr_mean"] == pytest.approx(20 * math.log10(2.0) - 10 * math.log10(0.01), abs=0.3)
    assert 0.0 < results["ssim_mean"] < 1.0 and 0.0 < results["ms_ssim_to_real_mean"] < 1.0
    assert results["ms_ssim_diversity_fake"] < results["ms_ssim_to_real_mean"]


@pytest.mark.parametrize(
    ("real", "fake", "kwargs", "message"),
    [
        (torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), {}, "at least 2 images"),
        (torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 16), {}, "real and fake must have the same shape"),
        (torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32), {"spatial_dims": 3}, "spatial_dims=3"),
        (torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32), {"data_range": -1.0}, "data_range"),
        (torch.zeros(2, 1, 32, 32), torch.full((2, 1, 32, 32), math.inf), {}, "fake must hold finite"),
    ],
)
def test_evaluate_sets_rejects(real: torch.Tensor, fake: torch.Tensor, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_sets(real, fake, **kwargs)


# ----------------------------------------------------------------------------------------------------------- report


def test_write_report(tmp_path: Path) -> None:
    results = {
        "psnr_mean": math.inf,
        "mse_mean": 0.0123456789,
        "n_pairs": 2,
        "ms_ssim_weights": (0.25, np.float32(0.75)),
        "per_label": {"tumour": torch.tensor(0.5), "a|b": "x"},
    }
    json_path, md_path = write_report(results, tmp_path / "eval", title="Phantoms")
    text = json_path.read_text()
    assert list(json.loads(text)) == sorted(results)
    assert json.loads(text) == {
        "mse_mean": 0.0123457,
        "ms_ssim_weights": [0.25, 0.75],
        "n_pairs": 2,
        "per_label": {"a|b": "x", "tumour": 0.5},
        "psnr_mean": "inf",
    }
    markdown = md_path.read_text().splitlines()
    assert markdown[:4] == ["# Phantoms", "", "| metric | value |", "| --- | --- |"]
    assert "| ms_ssim_weights | 0.25, 0.75 |" in markdown and "| per_label.a\\|b | x |" in markdown
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["report.json", "report.md"]
    with pytest.raises(FileExistsError):
        write_report(results, tmp_path / "eval", overwrite=False)


@pytest.mark.parametrize(
    ("results", "name", "message"),
    [
        ({}, "report", "non-empty dict"),
        ({"a": 1.0}, "sub/report", "plain file stem"),
        ({"a": 1.0}, "", "plain file stem"),
        ({"a": object()}, "report", "results values"),
    ],
)
def test_write_report_rejects(tmp_path: Path, results: dict, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_report(results, tmp_path, name=name)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- Frechet distance (FID)


def gaussian_features(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)


def frechet_by_eig(a: np.ndarray, b: np.ndarray) -> float:
    """Independent reference: tr((S_a S_b)^(1/2)) from the (real, non-negative) eigenvalues of the product itself."""
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_trace = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * root_trace)


def pixels_as_features(slices: torch.Tensor) -> torch.Tensor:
    return slices.flatten(1)


def volumes_from_slices(features: np.ndarray, n_volumes: int) -> torch.Tensor:
    """(n_volumes, 1, 2, 2, D) volumes whose 2x2 slices along the last axis are the 4-vectors of ``features``."""
    return torch.from_numpy(features).float().reshape(n_volumes, -1, 2, 2).permute(0, 2, 3, 1)[:, None]


def test_frechet_distance_matches_an_independent_computation() -> None:
    cov_a = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    cov_b = np.array([[1.0, -0.2, 0.1], [-0.2, 2.0, 0.0], [0.1, 0.0, 1.5]])
    a = gaussian_features(300, np.zeros(3), cov_a, 0)
    b = gaussian_features(200, np.array([1.0, 0.0, -0.5]), cov_b, 1)
    assert frechet_distance(a, b) == pytest.approx(frechet_by_eig(a, b), rel=1e-9)
    assert float(FrechetDistanceMetric()(y_pred=torch.from_numpy(b), y=torch.from_numpy(a))) == pytest.approx(
        frechet_by_eig(b, a), rel=1e-9
    )
    assert abs(frechet_distance(a, a)) < 1e-9
    assert frechet_distance(a[:, :1], b[:, :1]) == pytest.approx(frechet_by_eig(a[:, :1], b[:, :1]), rel=1e-9)


def test_fid_2d_slices_matches_the_closed_form_for_two_gaussians() -> None:
    # diagonal (commuting) covariances: FID = |mu_a - mu_b|^2 + sum_k (sqrt(a_k) - sqrt(b_k))^2
    var_a, var_b = np.array([1.0, 4.0, 0.25, 1.0]), np.array([4.0, 1.0, 0.25, 2.25])
    mean_b = np.array([0.5, -0.5, 0.0, 1.0])
    closed_form = float((mean_b**2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum())  # 4.75
    real = volumes_from_slices(gaussian_features(8000, np.zeros(4), np.diag(var_a), 0), 4)
    fake = volumes_from_slices(gaussian_features(6000, mean_b, np.diag(var_b), 1), 3)
    value = fid_2d_slices(real, fake, pixels_as_features, batch_size=512)
    assert value == pytest.approx(closed_form, rel=0.05)
    # exactly the Frechet distance of the slices' features (float32 volumes)
    features = [v.permute(0, 4, 1, 2, 3).reshape(-1, 4).double().numpy() for v in (real, fake)]
    assert value == pytest.approx(frechet_by_eig(features[1], features[0]), rel=1e-9)


def test_fid_2d_slices_identical_and_shifted_sets() -> None:
    real = random_set((3, 1, 4, 4, 20), 0)
    same = fid_2d_slices(real, real.clone(), pixels_as_features)
    shifted = [fid_2d_slices(real, real + shift, pixels_as_features) for shift in (0.1, 0.3)]
    assert abs(same) < 1e-9
    # a constant shift moves only the mean: FID = 16 pixels x shift^2
    assert shifted == pytest.approx([16 * 0.1**2, 16 * 0.3**2], rel=1e-4)


def test_fid_2d_slices_selects_slices_and_pools_feature_maps() -> None:
    real, fake = random_set((2, 1, 4, 5, 6), 0), random_set((3, 1, 4, 5, 6), 1)
    seen = []

    def recording(slices: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(slices.shape))
        return slices.flatten(1)

    fid_2d_slices(real, fake, recording, axis=2, slices=slice(None, None, 2), batch_size=3)
    assert sum(shape[0] for shape in seen) == (2 + 3) * 2 and all(shape[1:] == (1, 5, 6) for shape in seen)
    assert max(shape[0] for shape in seen) == 3
    picked = fid_2d_slices(real, fake, pixels_as_features, axis=-1, slices=[0, -1])
    by_hand = [v[..., [0, 5]].permute(0, 4, 1, 2, 3).reshape(-1, 20) for v in (real, fake)]
    assert picked == pytest.approx(frechet_distance(by_hand[1], by_hand[0]), rel=1e-9)
    # an (N, F, h, w) feature map is average-pooled to (N, F)
    pooled = fid_2d_slices(real, fake, lambda x: torch.cat([x, x**2], 1))
    means = [torch.cat([v.mean((2, 3)), (v**2).mean((2, 3))], 1).permute(0, 2, 1).reshape(-1, 2) for v in (real, fake)]
    assert pooled == pytest.approx(frechet_distance(means[1], means[0]), rel=1e-6)


@pytest.mark.parametrize(
    ("real", "fake", "kwargs", "message"),
    [
        (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), {}, r"real must be a batch"),
        (torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 5), {}, r"same \(C, H, W, D\)"),
        (torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4), {"axis": 1}, "axis must be a spatial axis"),
        (torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4), {"slices": [4]}, r"indices in \[-4, 4\)"),
        (torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4), {"slices": slice(5, None)}, "selects no slice"),
        (torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4), {"slices": "all"}, "slices must be None"),
        (torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4), {"batch_size": 0}, "batch_size must be"),
        (torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4), {"slices": [0]}, r"N >= 2, got shape \(1, 16\)"),
    ],
)
def test_fid_2d_slices_rejects(real, fake, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fid_2d_slices(real, fake, pixels_as_features, **kwargs)


def test_fid_rejects_bad_features() -> None:
    volumes = torch.zeros(2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"feature_fn must return \(N, F\) features"):
        fid_2d_slices(volumes, volumes, lambda x: x.flatten()[:3])
    with pytest.raises(ValueError, match="same feature size"):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="finite values"):
        frechet_distance(np.full((3, 2), np.nan), np.zeros((3, 2)))


# ------------------------------------------------------------------------------------------------------------ t-SNE


def two_blobs(n_per_blob: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two unit Gaussians in 50-D whose means are 1 apart in every coordinate (7.1 apart in all)."""
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.normal(0.0, 1.0, (n_per_blob, 50)), rng.normal(1.0, 1.0, (n_per_blob, 50))])
    return points, np.repeat([0, 1], n_per_blob)


def test_tsne_keeps_two_blobs_apart_and_is_deterministic() -> None:
    points, labels = two_blobs(40)
    embedding = tsne(points, perplexity=10.0, seed=3)
    assert embedding.shape == (80, 2) and embedding.dtype == np.float64 and np.isfinite(embedding).all()
    centroids = np.stack([embedding[labels == k].mean(0) for k in (0, 1)])
    nearest = np.linalg.norm(embedding[:, None] - centroids[None], axis=2).argmin(1)
    assert (nearest == labels).mean() > 0.95
    np.testing.assert_array_equal(tsne(points, perplexity=10.0, seed=3), embedding)
    # torch input works too
    np.testing.assert_array_equal(tsne(torch.from_numpy(points), perplexity=10.0, seed=3), embedding)


def test_tsne_passes_its_settings_on() -> None:
    points, _ = two_blobs(20)
    reference = tsne(points, perplexity=10.0, max_iter=300)
    for changed in ({"perplexity": 3.0}, {"max_iter": 250}, {"learning_rate": 400.0}, {"init": "random"}):
        assert not np.allclose(tsne(points, **{"perplexity": 10.0, "max_iter": 300, **changed}), reference), changed
    first, second = (tsne(points, perplexity=10.0, max_iter=300, init="random", seed=s) for s in (0, 1))
    assert not np.allclose(first, second)  # the seed draws the random initial embedding


@pytest.mark.parametrize(
    ("points", "kwargs", "message"),
    [
        (np.zeros((2, 3)), {}, "at least 3 points"),
        (np.zeros(5), {}, r"\(N, D\) array"),
        (np.full((5, 2), np.nan), {}, "must be finite"),
        (np.eye(5), {"perplexity": 5.0}, r"perplexity must be in \(0, N\) = \(0, 5\) for N=5 points, got 5.0"),
        (np.eye(5), {"perplexity": 0.0}, r"perplexity must be in \(0, N\)"),
        (np.eye(5), {"perplexity": float("nan")}, r"perplexity must be in \(0, N\)"),
        (np.eye(5), {"perplexity": 2.0, "max_iter": 249}, "max_iter must be an integer >= 250, got 249"),
        (np.eye(5), {"perplexity": 2.0, "learning_rate": "fast"}, "learning_rate must be a positive number"),
        (np.eye(5), {"perplexity": 2.0, "init": "spectral"}, r"init must be one of \('pca', 'random'\)"),
    ],
)
def test_tsne_rejects(points: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tsne(points, **kwargs)


# -------------------------------------------------------------------------------------------------- scatter plots


def read_png_rgb(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """Minimal reader for this project's unfiltered RGB PNGs: (pixels (H, W, 3), tEXt entries)."""
    payload = path.read_bytes()
    assert payload[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, []
    while offset < len(payload):
        (length,) = struct.unpack(">I", payload[offset : offset + 4])
        chunks.append((payload[offset + 4 : offset + 8], payload[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (depth, colour) == (8, 2)
    raw = np.frombuffer(zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT")), np.uint8)
    text = dict(d.decode("latin-1").split("\0", 1) for k, d in chunks if k == b"tEXt")
    return raw.reshape(height, 1 + 3 * width)[:, 1:].reshape(height, width, 3), text


def colour_mask(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(pixels == np.array(colour, np.uint8), axis=2)


def test_scatter_png_draws_each_group_in_its_colour(tmp_path: Path) -> None:
    left = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.5]])
    right = torch.tensor([[10.0, 0.0], [10.0, 1.0]])
    path = scatter_png(tmp_path / "tsne.png", {"real": left, "fake": right}, size=128)
    pixels, text = read_png_rgb(path)
    assert pixels.shape == (128, 128, 3)
    assert text["Legend"] == "1: real = #1f77b4; 2: fake = #ff7f0e"
    real, fake = colour_mask(pixels, SCATTER_COLOURS[0]), colour_mask(pixels, SCATTER_COLOURS[1])
    plot = slice(128 // 16, None)  # below the legend band
    assert real[plot].any() and fake[plot].any() and not colour_mask(pixels, SCATTER_COLOURS[2]).any()
    # real points on the left, fake on the right; the higher y is drawn higher up (smaller row)
    assert np.nonzero(real[plot])[1].max() < 64 < np.nonzero(fake[plot])[1].min()
    rows = np.nonzero(fake[plot, 64:])[0]
    assert rows.min() < rows.max() - 10
    # the legend squares lie in the top band, in group order
    assert real[: 128 // 16].any() and fake[: 128 // 16].any()
    assert np.nonzero(real[: 128 // 16])[1].max() < np.nonzero(fake[: 128 // 16])[1].min()
    assert (pixels == 255).all(axis=2).mean() > 0.9  # white background
    with pytest.raises(FileExistsError):
        scatter_png(path, {"real": left}, size=128, overwrite=False)


@pytest.mark.parametrize(
    ("groups", "size", "message"),
    [
        ({}, 128, "non-empty dict"),
        ({"a": np.zeros((3, 3))}, 128, r"group 'a' must be a non-empty \(N, 2\) array"),
        ({"a": np.zeros((0, 2))}, 128, r"group 'a' must be a non-empty \(N, 2\) array"),
        ({"a": np.array([[0.0, np.inf]])}, 128, "group 'a' must be finite"),
        ({str(k): np.zeros((1, 2)) for k in range(11)}, 128, "at most 10 groups"),
        ({"a": np.zeros((1, 2))}, 32, "size must be an integer >= 64"),
    ],
)
def test_scatter_png_rejects(tmp_path: Path, groups: dict, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scatter_png(tmp_path / "x.png", groups, size=size)
