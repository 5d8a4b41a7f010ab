"""Tests of common.transforms.morphology: hole filling, largest connected component and opening on torch masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.transforms.morphology import binary_opening, fill_holes, largest_component


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
    tie = torch.zeros(3, 5, dtype=torch.bool)
    tie[:, 0] = tie[1, 2:5] = True  # the column starts first but ends last (index 10): the row (ends at 9) wins
    assert largest_component(tie, spatial_dims=2).nonzero().tolist() == [[1, 2], [1, 3], [1, 4]]


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


def test_largest_component_3d_uses_6_connectivity():
    mask = torch.zeros(6, 6, 6, dtype=torch.bool)
    mask[:2, :2, :2] = True  # 8 voxels
    mask[3:6, 3:6, 3:6] = True  # 27 voxels, touching the first one only at a corner
    mask[2, 2, 2] = True  # corner-connected bridge: not a face neighbour
    kept = largest_component(mask)
    assert int(kept.sum()) == 27 and kept[3:, 3:, 3:].all()
    assert not largest_component(torch.zeros(3, 3, 3, dtype=torch.bool)).any()
    snake = torch.zeros(5, 5, 1, dtype=torch.bool)  # a winding path is one component
    snake[0, :, 0] = snake[:, 4, 0] = snake[4, :, 0] = snake[2, :4, 0] = snake[2:, 0, 0] = True
    snake[0, 0, 0] = False
    torch.testing.assert_close(largest_component(snake), snake)
    with pytest.raises(ValueError, match=r"at least spatial_dims=3 dimensions, got shape \(3, 3\)"):
        largest_component(torch.ones(3, 3, dtype=torch.bool))


def test_fill_holes_per_slice_and_in_3d():
    tube = torch.zeros(7, 7, 5, dtype=torch.bool)  # a hollow tube along z, open at both ends
    tube[1:6, 1:6] = True
    tube[2:5, 2:5] = False
    assert not fill_holes(tube)[3, 3].any()  # its lumen reaches the z ends: no 3D hole
    assert fill_holes(tube, axes=(0, 1))[2:5, 2:5].all()  # but a hole of every axial slice
    shell = torch.zeros(7, 7, 7, dtype=torch.bool)  # a closed hollow cube
    shell[1:6, 1:6, 1:6] = True
    shell[2:5, 2:5, 2:5] = False
    filled = fill_holes(shell)
    assert filled[2:5, 2:5, 2:5].all() and int(filled.sum()) == 5 * 5 * 5
    assert torch.equal(fill_holes(tube[None], axes=(0, 1))[0], fill_holes(tube, axes=(0, 1)))  # (1, X, Y, Z)


def test_fill_holes_per_slice_keeps_leading_dimensions_apart():
    tube = torch.zeros(7, 7, 7, dtype=torch.bool)
    tube[1:6, 1:6] = True
    tube[2:5, 2:5] = False
    batch = torch.stack([tube, tube.permute(2, 1, 0)])[:, None]  # (2, 1, X, Y, Z): the second tube runs along x
    filled = fill_holes(batch, axes=(0, 1))
    assert filled[0, 0, 2:5, 2:5].all()  # axial slices of the first: holes filled
    assert torch.equal(filled[1, 0], batch[1, 0])  # the second's lumen is open in every axial slice


@pytest.mark.parametrize("axes", [(), (0, 0), (0, 3), (-1,)])
def test_fill_holes_rejects_bad_axes(axes):
    with pytest.raises(ValueError, match=r"axes must be distinct spatial axes in \[0, 3\)"):
        fill_holes(torch.zeros(4, 4, 4, dtype=torch.bool), axes=axes)


def test_numpy_masks_give_bool_tensors():
    ring = _ring_2d().numpy()
    filled = fill_holes(ring, spatial_dims=2)
    assert isinstance(filled, torch.Tensor) and filled.dtype == torch.bool and int(filled.sum()) == 25
    assert torch.equal(largest_component(ring.astype(np.uint8), spatial_dims=2), torch.from_numpy(ring))


def test_binary_opening_cuts_thin_bridges_and_keeps_thick_parts():
    mask = torch.zeros(12, 7, 7, dtype=torch.bool)
    mask[1:5, 1:6, 1:6] = mask[7:11, 1:6, 1:6] = True  # two blocks
    mask[5:7, 3, 3] = True  # joined by a one-voxel-thin bridge
    opened = binary_opening(mask, 1)
    expected = mask.clone()
    expected[5:7] = False  # the blocks are boxes, unchanged by the opening
    assert opened.dtype == torch.bool and torch.equal(opened, expected)
    assert torch.equal(binary_opening(mask, 0), mask)
    assert not binary_opening(mask, 3).any()  # no 7^3 cube fits


def test_binary_opening_does_not_erode_from_the_array_edge():
    """A structure cut by the array edge (a body beyond the field of view) keeps its edge voxels; none are added."""
    slab = torch.zeros(2, 8, 8, dtype=torch.bool)
    slab[:, :, :2] = True  # 2 voxels thick, along the array's edges (2D: two 8 x 8 images; 3D: one 2 x 8 x 8)
    torch.testing.assert_close(binary_opening(slab, 1, spatial_dims=2), slab)
    torch.testing.assert_close(binary_opening(slab, 1), slab)
    away = torch.zeros(6, 6, dtype=torch.bool)
    away[2:4, 2:4] = True  # the same thickness away from the edges is removed
    assert not binary_opening(away, 1, spatial_dims=2).any()


@pytest.mark.parametrize("radius", [-1, 1.5, True])
def test_binary_opening_rejects_bad_radius(radius):
    with pytest.raises(ValueError, match="radius must be an integer >= 0 voxels"):
        binary_opening(torch.zeros(4, 4, 4, dtype=torch.bool), radius)
