"""Tests of common.metrics.read_back: the enhancing-lesion rule and Dice, on shapes and phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import ScaleIntensityRangePercentiles

from common.data.phantoms.kinds import phantom_grid
from common.data.phantoms.mri import whole_head_mri_phantom
from common.metrics.read_back import WHOLE_HEAD_TUMOUR_THRESHOLD, segment_enhancing_lesion
from common.metrics.segmentation import mask_dice


def _ring_enhancing_lesion(image: torch.Tensor) -> None:
    """Paint a 6^3 bright shell (the enhancing rim) at [2:8]^3 of ``image`` around a 4^3 dark core, in place."""
    image[2:8, 2:8, 2:8] = 0.9
    image[3:7, 3:7, 3:7] = -0.5


def test_segment_enhancing_lesion_includes_the_enclosed_core():
    image = torch.full((10, 10, 10), -0.5)
    _ring_enhancing_lesion(image)
    lesion = segment_enhancing_lesion(image, threshold=0.35)
    assert lesion.dtype == torch.bool and int(lesion.sum()) == 6**3
    lesion_2d = segment_enhancing_lesion(image[None, None, :, :, 4], threshold=0.35, spatial_dims=2)
    assert lesion_2d.shape == (1, 1, 10, 10) and int(lesion_2d.sum()) == 36


def test_segment_enhancing_lesion_largest_drops_scattered_bright_voxels():
    image = torch.full((12, 12, 12), -0.5)
    _ring_enhancing_lesion(image)  # the lesion: rim + dark core, 6^3 once filled
    image[11, 11, 0] = image[11, 0, 11] = image[0, 11, 11] = 0.8  # bright specks elsewhere (e.g. scalp fat)
    assert int(segment_enhancing_lesion(image, threshold=0.35).sum()) == 6**3 + 3
    lesion = segment_enhancing_lesion(image, threshold=0.35, largest=True)
    assert int(lesion.sum()) == 6**3 and not lesion[11, 11, 0]


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 0], [0, 0, 0], 1.0),
        ([1, 1, 0], [0, 0, 1], 0.0),
        ([1, 1, 0, 0], [1, 0, 0, 0], 2 / 3),
        ([[1, 1], [1, 0]], [[1, 1], [1, 0]], 1.0),
    ],
)
def test_dice(a, b, expected):
    assert mask_dice(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected)


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"same shape, got \(3,\) and \(4,\)"):
        mask_dice(torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize("size", [32, 48, 64])
def test_rule_reads_the_tumour_back_from_whole_head_phantoms(size):
    """The benchmark rule on the phantom's own T1c images (scaled as the pipeline does) recovers label 2."""
    scale = ScaleIntensityRangePercentiles(lower=0, upper=99.9, b_min=-1, b_max=1, clip=True)
    shape, spacing = phantom_grid("whole_head_mri", size)
    for index in range(8):
        case = whole_head_mri_phantom(shape, spacing, np.random.default_rng((0, index)))
        image = scale(torch.from_numpy(case.images["t1c"])[None])[0]
        tumour = torch.from_numpy(case.label == 2)
        assert mask_dice(segment_enhancing_lesion(image, WHOLE_HEAD_TUMOUR_THRESHOLD), tumour) >= 0.95, index
        tissues = torch.from_numpy(case.tissues)
        for name in ("scalp", "white_matter"):
            brightest = float(image[tissues == case.tissue_names.index(name)].max())
            assert brightest < WHOLE_HEAD_TUMOUR_THRESHOLD - 0.05, (index, name)
