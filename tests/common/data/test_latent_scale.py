"""Tests of common.data.latent_scale: the latent scale factor 1 / std."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.data.latent_scale import latent_scale_factor


def test_latent_scale_factor_is_one_over_the_sample_std() -> None:
    z = torch.randn((4, 3, 5, 6), generator=torch.Generator().manual_seed(2)) * 3.0 + 1.0
    expected = 1.0 / float(np.std(z.numpy().astype(np.float64), ddof=1))
    assert latent_scale_factor(z) == pytest.approx(expected, rel=1e-12)
    assert latent_scale_factor([z[:1], z[1:3].numpy(), z[3:]]) == pytest.approx(expected, rel=1e-12)
    assert latent_scale_factor(torch.tensor([1.0, 3.0])) == pytest.approx(1 / math.sqrt(2))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "at least 2 latent values"),
        (torch.ones(1), "at least 2 latent values"),
        (torch.full((2, 3, 4, 4), 0.7), "zero standard deviation"),
        (torch.tensor([1.0, float("nan")]), "must be finite"),
    ],
)
def test_latent_scale_factor_rejects(value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        latent_scale_factor(value)
