"""Pathology-patch preparation (paper 003 Fig. 1b) and placement inside the breast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.transforms.pathology import (
    PathologyPatchNormalize,
    PathologyPatchNormalized,
    edge_fade_weight,
    paste_patch,
    place_patch,
)


def _reference() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 64 * 64).reshape(1, 64, 64)


def test_patch_range_and_quantile_without_edge_weighting() -> None:
    patch = torch.rand(1, 9, 9, generator=torch.Generator().manual_seed(0)) * 5 + 3
    transform = PathologyPatchNormalize(edge_sigma_fraction=None).set_random_state(1)
    out = transform(patch, _reference())
    assert 0.975 <= transform.quantile <= 0.995
    assert float(out.min()) == pytest.approx(-1.0)
    assert float(out.max()) == pytest.approx(float(torch.quantile(_reference().double(), transform.quantile)), abs=1e-5)
    order = torch.argsort(patch.flatten())  # equalisation keeps the order of the values
    assert bool((out.flatten()[order].diff() >= -1e-6).all())


def test_patch_edge_fades_to_the_reference_minimum_and_quantiles_are_uniform() -> None:
    transform = PathologyPatchNormalize().set_random_state(0)
    patch = torch.ones(1, 9, 9) + torch.rand(1, 9, 9, generator=torch.Generator().manual_seed(0))
    patch[0, 4, 4] = 2.0  # the lesion's core is its brightest pixel (an unseeded patch could put the minimum there)
    drawn = []
    for _ in range(200):
        out = transform(patch, _reference())
        drawn.append(transform.quantile)
        assert float(out.min()) >= -1.0 - 1e-6 and float(out.max()) <= float(torch.quantile(_reference(), 0.995)) + 1e-6
        assert float(out[0, 0, 0] + 1.0) < 0.2 * float(out[0, 4, 4] + 1.0) or float(out[0, 4, 4]) <= -0.99
    assert min(drawn) >= 0.975 and max(drawn) <= 0.995 and np.std(drawn) == pytest.approx(0.02 / 12**0.5, rel=0.2)


def test_quantile_over_the_breast_mask() -> None:
    reference = torch.full((1, 16, 16), -1.0)
    reference[0, 4:12, 4:12] = torch.linspace(0, 0.5, 64).reshape(8, 8)
    out = PathologyPatchNormalize(quantile_range=(1.0, 1.0), edge_sigma_fraction=None)(
        torch.rand(1, 5, 5), reference, reference > -1
    )
    assert float(out.max()) == pytest.approx(0.5) and float(out.min()) == pytest.approx(-1.0)


def test_dictionary_version_records_the_quantile() -> None:
    data = {"patch": torch.rand(1, 9, 9), "reference": _reference()}
    out = PathologyPatchNormalized("patch", reference_key="reference").set_random_state(3)(data)
    assert 0.975 <= out["patch_quantile"] <= 0.995 and out["patch"].shape == (1, 9, 9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quantile_range": (0.99, 0.9)}, "'patch_quantile_range'"),
        ({"quantile_range": (0.9, 1.2)}, "'patch_quantile_range'"),
        ({"edge_sigma_fraction": 0.0}, "'patch_edge_sigma_fraction'"),
    ],
)
def test_bad_settings_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PathologyPatchNormalize(**kwargs)


def test_nan_patch_or_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="pathology patch"):
        PathologyPatchNormalize()(torch.full((1, 5, 5), float("nan")), _reference())
    with pytest.raises(ValueError, match="anatomy reference"):
        PathologyPatchNormalize()(torch.rand(1, 5, 5), torch.full((1, 8, 8), float("inf")))


def test_place_patch_keeps_the_lesion_inside_the_breast() -> None:
    breast = torch.zeros(32, 32, dtype=torch.bool)
    breast[4:28, 2:20] = True
    lesion = torch.zeros(7, 7, dtype=torch.bool)
    lesion[2:5, 2:5] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        corner = place_patch(lesion, breast, rng)
        window = breast[corner[0] : corner[0] + 7, corner[1] : corner[1] + 7]
        assert window.shape == (7, 7) and bool(window[lesion].all())
    assert place_patch(lesion, breast, rng, position=(4, 0)) == (4, 0)  # patch corner outside, lesion inside: fine
    with pytest.raises(ValueError, match="'patch_position'.*outside the breast"):
        place_patch(lesion, breast, rng, position=(0, 20))
    with pytest.raises(ValueError, match="'patch_size'.*does not fit the image"):
        place_patch(torch.ones(40, 8, dtype=torch.bool), breast, rng)
    with pytest.raises(ValueError, match="'patch_size'.*no position"):
        place_patch(torch.ones(30, 30, dtype=torch.bool), breast, rng)


def test_edge_fade_weight_peaks_at_the_centre_and_falls_off() -> None:
    weight = edge_fade_weight((9, 9), 0.25)
    assert tuple(weight.shape) == (9, 9) and float(weight[4, 4]) == pytest.approx(1.0)
    sigma = 0.25 * 9
    assert float(weight[4, 0]) == pytest.approx(np.exp(-0.5 * (4 / sigma) ** 2), rel=1e-5)  # 4 px from the centre
    assert float(weight[0, 0]) < float(weight[4, 0]) < 1.0


def test_paste_patch_replaces_the_box_or_blends_with_the_fade() -> None:
    reference = torch.arange(64.0).reshape(1, 8, 8)
    patch = torch.full((1, 3, 3), 100.0)
    pasted = paste_patch(reference, patch, (2, 4))
    assert torch.equal(pasted[:, 2:5, 4:7], patch) and pasted.data_ptr() != reference.data_ptr()
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:5, 4:7] = False
    assert torch.equal(pasted[0][outside], reference[0][outside])
    fade = torch.tensor([[0.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 0.0]])
    blended = paste_patch(reference, patch, (2, 4), fade)
    assert float(blended[0, 3, 5]) == 100.0  # weight 1: the patch
    assert float(blended[0, 2, 4]) == float(reference[0, 2, 4])  # weight 0: the reference
    assert float(blended[0, 2, 5]) == pytest.approx(0.5 * (float(reference[0, 2, 5]) + 100.0))
    assert torch.equal(blended[0][outside], reference[0][outside]) and torch.equal(
        reference, torch.arange(64.0).reshape(1, 8, 8)
    )


@pytest.mark.parametrize(
    "corner, fade, match",
    [((6, 0), None, r"size \(3, 3\) at \[6, 0\] leaves the image"), ((0, 0), torch.ones(2, 2), "fade weight")],
)
def test_paste_patch_refuses_a_box_outside_or_a_wrong_fade(corner, fade, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paste_patch(torch.zeros(1, 8, 8), torch.ones(1, 3, 3), corner, fade)
