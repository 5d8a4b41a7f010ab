"""Tests of offset noise (the paired PET-CT paper's Eq. 1-2) and weighted timestep sampling (Min-SNR)."""

from __future__ import annotations

import pytest
import torch

from common.engines.prepare_batch import offset_noise


def test_offset_noise_statistics():
    generator = torch.Generator().manual_seed(0)
    like = torch.zeros(4000, 2, 16, 16)
    noise = offset_noise(like, scale=0.1, generator=generator)
    assert noise.shape == like.shape
    # per (sample, channel) mean = C + mean of 256 N(0,1): variance 0.1^2 + 1/256
    means = noise.mean(dim=(2, 3))
    assert means.var().item() == pytest.approx(0.01 + 1 / 256, rel=0.1)
    # what is left after removing each map's mean is plain unit-variance noise
    assert (noise - means[..., None, None]).var().item() == pytest.approx(255 / 256, rel=0.02)
    # the offset is constant over the pixels of one map: the difference of two pixels carries none of it
    assert (noise[:, :, 0, 0] - noise[:, :, 5, 7]).var().item() == pytest.approx(2.0, rel=0.1)


def test_offset_noise_scale_zero_is_plain_noise_and_seeded():
    like = torch.zeros(2, 1, 4, 4, 4)
    a = offset_noise(like, 0.0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, torch.randn(like.shape, generator=torch.Generator().manual_seed(3)))
    b1 = offset_noise(like, 0.1, torch.Generator().manual_seed(3))
    b2 = offset_noise(like, 0.1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(b1, b2)
    assert not torch.allclose(a, b1)


def test_offset_noise_errors():
    with pytest.raises(ValueError, match="scale must be >= 0"):
        offset_noise(torch.zeros(1, 1, 4, 4), -0.1)
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        offset_noise(torch.zeros(4, 4), 0.1)


def test_min_snr_weights_hand_computed():
    from common.engines.prepare_batch import min_snr_timestep_weights

    # alpha_bar 0.9 -> SNR 9 -> 5/9; alpha_bar 0.5 -> SNR 1 -> 1; alpha_bar 0.1 -> SNR 1/9 -> 1
    weights = min_snr_timestep_weights(torch.tensor([0.9, 0.5, 0.1]), gamma=5.0)
    torch.testing.assert_close(weights, torch.tensor([5 / 9, 1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="gamma"):
        min_snr_timestep_weights(torch.tensor([0.5]), gamma=0.0)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        min_snr_timestep_weights(torch.tensor([0.5, 1.5]))


def test_weighted_timesteps_follow_the_weights():
    from common.engines.prepare_batch import WeightedTimestepPrepareBatch

    torch.manual_seed(0)
    prepare = WeightedTimestepPrepareBatch(4, weights=torch.tensor([0.0, 1.0, 3.0, 0.0]), condition_name="c")
    drawn = prepare.get_timesteps(torch.zeros(20000, 1, 2, 2))
    counts = torch.bincount(drawn, minlength=4).double() / drawn.numel()
    assert counts[0] == 0 and counts[3] == 0
    assert counts[2].item() == pytest.approx(0.75, abs=0.02)
    images, target, _, kwargs = prepare({"image": torch.ones(3, 1, 2, 2), "c": torch.zeros(3, 2, 2, 2)})
    assert set(kwargs["timesteps"].tolist()) <= {1, 2}
    torch.testing.assert_close(target, kwargs["noise"])
    assert kwargs["condition"].shape == (3, 2, 2, 2)
    with pytest.raises(ValueError, match="expected 4 values"):
        WeightedTimestepPrepareBatch(4, weights=torch.ones(3))
    with pytest.raises(ValueError, match="not all zero"):
        WeightedTimestepPrepareBatch(2, weights=torch.zeros(2))
