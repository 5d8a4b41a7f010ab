"""Tests of common.metrics.read_back: hole filling, the enhancing-lesion rule and Dice, on shapes and phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import ScaleIntensityRangePercentiles

from common.data.phantoms.kinds import phantom_grid
from common.data.phantoms.mri import whole_head_mri_phantom
from common.metrics.read_back import (
    WHOLE_HEAD_TUMOUR_THRESHOLD,
    fill_holes,
    largest_component,
    segment_enhancing_lesion,
)
from common.metrics.segmentation import mask_dice


def _ring_2d(size: int = 9, gap: bool = False) -> torch.Tensor:
    """A one-pixel square ring enclosing a 3x3 hole (with ``gap``, one wall pixel removed so the hole is open)."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[2:7, 2:7] = True
    mask[3:6, 3:6] = False
    if gap:
        mask[2, 4] = False
    return mask


def _hollow_cube(open_top: bool = False) -> torch.Tensor:
    """A 6^3 cube shell in a 10^3 volume enclosing a 4^3 cavity; ``open_top`` removes the top face (a cup)."""
    mask = torch.zeros(10, 10, 10, dtype=torch.bool)
    mask[2:8, 2:8, 2:8] = True
    mask[3:7, 3:7, 3:7] = False
    if open_top:
        mask[3:7, 3:7, 7] = False
    return mask


def test_fill_holes_2d_closed_ring_becomes_a_square():
    filled = fill_holes(_ring_2d(), spatial_dims=2)
    expected = torch.zeros(9, 9, dtype=torch.bool)
    expected[2:7, 2:7] = True
    assert filled.dtype == torch.bool and torch.equal(filled, expected)


def test_fill_holes_2d_open_ring_is_unchanged():
    assert torch.equal(fill_holes(_ring_2d(gap=True), spatial_dims=2), _ring_2d(gap=True))


def test_fill_holes_background_has_4_connectivity():
    """A ring closed only through diagonal steps still encloses its hole (background cannot pass diagonally)."""
    mask = torch.zeros(7, 7, dtype=torch.bool)
    for row, col in [(1, 3), (2, 2), (2, 4), (3, 1), (3, 5), (4, 2), (4, 4), (5, 3)]:  # a diamond
        mask[row, col] = True
    filled = fill_holes(mask, spatial_dims=2)
    assert filled[3, 3] and filled[2, 3] and filled[3, 2]
    assert int(filled.sum()) == int(mask.sum()) + 5


def test_fill_holes_3d_hollow_cube_is_filled_and_cup_is_not():
    filled = fill_holes(_hollow_cube())
    assert filled[2:8, 2:8, 2:8].all() and int(filled.sum()) == 6**3
    assert torch.equal(fill_holes(_hollow_cube(open_top=True)), _hollow_cube(open_top=True))


def test_fill_holes_treats_leading_dimensions_as_separate_images():
    batch = torch.stack([_hollow_cube(), _hollow_cube(open_top=True)])[:, None]  # (B, C, D, H, W)
    filled = fill_holes(batch)
    assert filled.shape == (2, 1, 10, 10, 10)
    assert int(filled[0].sum()) == 6**3 and torch.equal(filled[1, 0], _hollow_cube(open_top=True))
    rings = fill_holes(torch.stack([_ring_2d(), _ring_2d(gap=True)]), spatial_dims=2)  # (B, H, W)
    assert int(rings[0].sum()) == 25 and torch.equal(rings[1], _ring_2d(gap=True))


def test_fill_holes_empty_full_and_numeric_masks():
    assert not fill_holes(torch.zeros(5, 6, 7)).any()
    assert fill_holes(torch.ones(5, 6, 7, dtype=torch.bool)).all()
    assert torch.equal(fill_holes(_hollow_cube().to(torch.uint8)), fill_holes(_hollow_cube()))


def test_fill_holes_rejects_bad_spatial_dims():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        fill_holes(torch.zeros(2, 3, 4, 5), spatial_dims=4)


def test_fill_holes_rejects_too_few_dimensions():
    with pytest.raises(ValueError, match=r"at least spatial_dims=3 dimensions, got shape \(4, 4\)"):
        fill_holes(torch.zeros(4, 4))


def test_segment_enhancing_lesion_includes_the_enclosed_core():
    image = torch.full((10, 10, 10), -0.5)
    image[_hollow_cube()] = 0.9  # enhancing rim around a dark core
    lesion = segment_enhancing_lesion(image, threshold=0.35)
    assert lesion.dtype == torch.bool and int(lesion.sum()) == 6**3
    lesion_2d = segment_enhancing_lesion(image[None, None, :, :, 4], threshold=0.35, spatial_dims=2)
    assert lesion_2d.shape == (1, 1, 10, 10) and int(lesion_2d.sum()) == 36


def _components_by_search(mask: np.ndarray) -> list[set[tuple[int, ...]]]:
    """Reference labelling: breadth-first search over face neighbours, one set of voxel indices per component."""
    seen, components = np.zeros_like(mask, dtype=bool), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], queue, component = True, [start], set()
        while queue:
            voxel = queue.pop()
            component.add(voxel)
            for axis in range(mask.ndim):
                for step in (-1, 1):
                    neighbour = list(voxel)
                    neighbour[axis] += step
                    neighbour = tuple(neighbour)
                    if 0 <= neighbour[axis] < mask.shape[axis] and mask[neighbour] and not seen[neighbour]:
                        seen[neighbour] = True
                        queue.append(neighbour)
        components.append(component)
    return components


def test_largest_component_2d_uses_4_connectivity():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # a diagonal line: three components of one pixel
    mask[4:6, 4:6] = True  # a 2x2 block: the largest
    kept = largest_component(mask, spatial_dims=2)
    assert kept.dtype == torch.bool and kept.shape == mask.shape
    assert kept.nonzero().tolist() == [[4, 4], [4, 5], [5, 4], [5, 5]]
    tie = torch.zeros(3, 5, dtype=torch.bool)
    tie[0, 3:5] = tie[2, 0:2] = True  # two components of two pixels: the one whose last pixel comes first wins
    assert largest_component(tie, spatial_dims=2).nonzero().tolist() == [[0, 3], [0, 4]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_largest_component_matches_a_breadth_first_search_in_3d(seed):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(12, 11, 10, generator=generator) > 0.62  # many components of many sizes, some winding
    components = sorted(_components_by_search(mask.numpy()), key=len, reverse=True)
    assert len(components) > 5 and len(components[0]) > len(components[1])  # a unique largest one
    kept = largest_component(mask)
    assert {tuple(v) for v in kept.nonzero().tolist()} == components[0]


def test_largest_component_treats_leading_dimensions_as_separate_images():
    mask = torch.zeros(3, 1, 5, 5, 5, dtype=torch.bool)
    mask[0, 0, 0, 0, 0] = True
    mask[0, 0, 2:5, 2:5, 2:5] = True
    mask[1, 0, 0:2, 0, 0] = True  # only a small component here: it is this image's largest
    kept = largest_component(mask)
    assert int(kept[0].sum()) == 27 and not kept[0, 0, 0, 0, 0]
    assert int(kept[1].sum()) == 2
    assert not kept[2].any()  # an empty image stays empty


def test_largest_component_rejects_bad_spatial_dims():
    with pytest.raises(ValueError, match="spatial_dims"):
        largest_component(torch.ones(4, 4, dtype=torch.bool), spatial_dims=4)


def test_segment_enhancing_lesion_largest_drops_scattered_bright_voxels():
    image = torch.full((12, 12, 12), -0.5)
    image[:10, :10, :10][_hollow_cube()] = 0.9  # the lesion: rim + dark core, 6^3 once filled
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
