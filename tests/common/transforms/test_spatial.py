"""Tests of common.transforms.spatial.ResampleToSourced and the serving checks of ValidateCase (spatial_dims)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, ResizeWithPadOrCropd, Spacingd

from common.transforms import ResampleToSourced, ValidateCase


def write_volume(path, affine: np.ndarray, shape=(12, 10, 8)) -> np.ndarray:
    """A smooth volume (a linear ramp along every axis) so interpolation is exact inside the grid."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    volume = grid[0] + 2 * grid[1] + 3 * grid[2]
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return volume


def test_model_grid_output_goes_back_onto_the_source_grid(tmp_path) -> None:
    """Orientation (LPS file), spacing and pad/crop undone at once: a resampled identity returns the input."""
    affine = np.array([[-2.0, 0, 0, 30], [0, -3.0, 0, 40], [0, 0, 4.0, -5], [0, 0, 0, 1]])
    volume = write_volume(tmp_path / "v.nii.gz", affine)
    preprocessing = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(2.0, 3.0, 4.0), mode="bilinear"),
            ResizeWithPadOrCropd("image", spatial_size=(16, 16, 16)),
        ]
    )
    data = preprocessing({"image": str(tmp_path / "v.nii.gz")})
    data["pred"] = data["image"].as_tensor().clone()  # a "network output" on the model grid, no meta data
    out = ResampleToSourced("pred", ref_key="image")(data)["pred"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 12, 10, 8) and out.dtype == torch.float32
    np.testing.assert_allclose(out.affine.numpy(), affine, atol=1e-6)
    np.testing.assert_allclose(out[0].numpy(), volume, atol=1e-3)


def test_reference_without_a_source_grid_is_named() -> None:
    data = {"image": MetaTensor(torch.zeros(1, 4, 4, 4)), "pred": torch.zeros(1, 4, 4, 4)}
    with pytest.raises(ValueError, match="key 'image': expected a MetaTensor loaded from a file"):
        ResampleToSourced("pred", ref_key="image")(data)


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (MetaTensor(torch.zeros(1, 5, 5)), r"expected a 3D label map .* found shape \(1, 5, 5\)"),
        (MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.diag(torch.tensor([1.0, 0.0, 1.0, 1.0]))), "invertible"),
    ],
    ids=["2d", "singular_affine"],
)
def test_serving_checks_refuse_other_dimensionality_and_unresampleable_grids(label, message) -> None:
    with pytest.raises(ValueError, match=message):
        ValidateCase(1, [0, 1, 2], spatial_dims=3).check_label(label)
    ValidateCase(1, [0, 1, 2]).check_label(label)  # without spatial_dims (training, sampling): not checked
