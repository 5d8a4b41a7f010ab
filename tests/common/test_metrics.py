"""Tests of common/metrics.py: hand-computed MSE/PSNR/MMD/Dice, SSIM identities, MS-SSIM settings, reports."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from common.metrics import (
    MS_SSIM_WEIGHTS,
    dice,
    diversity_ms_ssim,
    evaluate_sets,
    mean_pairwise,
    mmd,
    ms_ssim,
    ms_ssim_settings,
    mse,
    psnr,
    ssim,
    write_report,
)


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
