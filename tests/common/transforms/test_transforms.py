"""Tests of common.transforms (io, validation, conditions): safe loading, case validation, the brain label and the
one-hot condition."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common import transforms
from common.io import atomic_write_nifti
from common.transforms.conditions import AddBrainLabel, AddBrainLabeld, LabelToCondition, LabelToConditiond
from common.transforms.io import SafeLoadImaged
from common.transforms.validation import ValidateCase, ValidateCased

SPATIAL = (4, 4, 4)
AFFINE = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))


def meta(data: torch.Tensor, name: str, affine: torch.Tensor = AFFINE) -> MetaTensor:
    return MetaTensor(data, affine=affine.clone(), meta={"filename_or_obj": name})


def image(channels: int = 1) -> MetaTensor:
    return meta(torch.rand(channels, *SPATIAL), "image.nii.gz")


def label(values: torch.Tensor | None = None, affine: torch.Tensor = AFFINE) -> MetaTensor:
    values = torch.zeros(1, *SPATIAL) if values is None else values
    return meta(values.float(), "label.nii.gz", affine)


@pytest.mark.parametrize(
    "alias, cls",
    [
        ("SafeLoadImageD", SafeLoadImaged),
        ("SafeLoadImageDict", SafeLoadImaged),
        ("ValidateCaseD", ValidateCased),
        ("ValidateCaseDict", ValidateCased),
        ("AddBrainLabelD", AddBrainLabeld),
        ("AddBrainLabelDict", AddBrainLabeld),
        ("LabelToConditionD", LabelToConditiond),
        ("LabelToConditionDict", LabelToConditiond),
    ],
)
def test_dictionary_aliases(alias: str, cls: type) -> None:
    assert getattr(transforms, alias) is cls
    assert alias in transforms.__all__


# ------------------------------------------------------------------------------------------------------ loading


def _written(tmp_path: Path) -> Path:
    data = np.random.default_rng(0).normal(size=(1, 8, 8, 8)).astype(np.float32)
    return atomic_write_nifti(data, np.diag([2.0, 2.0, 2.0, 1.0]), tmp_path / "scan.nii.gz")


def test_safe_load_reads_a_good_file(tmp_path: Path) -> None:
    path = _written(tmp_path)
    loaded = SafeLoadImaged(keys="image", image_only=True, ensure_channel_first=True)({"image": str(path)})
    assert tuple(loaded["image"].shape) == (1, 8, 8, 8)
    assert torch.allclose(loaded["image"].affine[0, 0].double(), torch.tensor(2.0, dtype=torch.float64))


@pytest.mark.parametrize(
    "damage",
    [lambda raw: raw[: len(raw) // 2], lambda raw: b"not a medical image"],
    ids=["truncated", "garbage"],
)
def test_safe_load_names_the_corrupt_file(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    path = _written(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=r"cannot read \{'image': '.*scan\.nii\.gz'\}: corrupt, truncated"):
        SafeLoadImaged(keys="image", image_only=True)({"image": str(path)})


# --------------------------------------------------------------------------------------------------- validation


def _nan_image(d: dict) -> None:
    d["image"][0, 1, 1, 1] = float("nan")


def _inf_image(d: dict) -> None:
    d["image"][0, 2, 0, 1] = float("-inf")


def _two_channel_image(d: dict) -> None:
    d["image"] = image(channels=2)


def _label_value_outside(d: dict) -> None:
    d["label"][0, 0, 0, 0] = 3


def _non_integer_label(d: dict) -> None:
    d["label"][0, 0, 0, 0] = 0.5


def _nan_label(d: dict) -> None:
    d["label"][0, 1, 0, 0] = float("nan")


def _multi_channel_label(d: dict) -> None:
    d["label"] = label(torch.zeros(2, *SPATIAL))


def _label_shape_mismatch(d: dict) -> None:
    d["label"] = label(torch.zeros(1, 4, 4, 3))


def _label_affine_mismatch(d: dict) -> None:
    shifted = AFFINE.clone()
    shifted[0, 3] = 5.0
    d["label"] = label(affine=shifted)


VALIDATION_ERRORS: dict[str, tuple[Callable[[dict], None], list[str]]] = {
    "NaN voxel": (_nan_image, ["'image.nii.gz'", "1 NaN/inf voxel(s)"]),
    "inf voxel": (_inf_image, ["'image.nii.gz'", "1 NaN/inf voxel(s)"]),
    "wrong channel count": (_two_channel_image, ["'image.nii.gz'", "expected 1 image channel(s), found 2"]),
    "label value outside the set": (_label_value_outside, ["'label.nii.gz'", "label values [3] are not allowed"]),
    "non-integer label": (_non_integer_label, ["'label.nii.gz'", "non-integer"]),
    "NaN label": (_nan_label, ["'label.nii.gz'", "NaN/inf"]),
    "multi-channel label": (_multi_channel_label, ["'label.nii.gz'", "single-channel label map"]),
    "label shape mismatch": (_label_shape_mismatch, ["'label.nii.gz'", "(4, 4, 3)", "'image.nii.gz'", "(4, 4, 4)"]),
    "label affine mismatch": (_label_affine_mismatch, ["'label.nii.gz'", "affine", "'image.nii.gz'"]),
}


def _validate_array(d: dict) -> None:
    ValidateCase(num_channels=1, label_values=[0, 1, 2])(d["image"], d["label"])


def _validate_dict(d: dict) -> None:
    ValidateCased("image", "label", num_channels=1, label_values=[0, 1, 2])(d)


@pytest.mark.parametrize("validate", [_validate_array, _validate_dict], ids=["array", "dict"])
@pytest.mark.parametrize("name", list(VALIDATION_ERRORS))
def test_validation_errors(name: str, validate: Callable[[dict], None]) -> None:
    damage, fragments = VALIDATION_ERRORS[name]
    data = {"image": image(), "label": label()}
    damage(data)
    with pytest.raises(ValueError) as info:
        validate(data)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_validation_passes_and_returns_the_data_unchanged() -> None:
    values = torch.zeros(1, *SPATIAL)
    values[0, :2] = 1
    values[0, 0, 0] = 2
    data = {"image": image(), "label": label(values), "case_id": "c0"}
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
    out = ValidateCased("image", "label", num_channels=1, label_values=[2, 0, 1])(data)
    assert out.keys() == data.keys()
    assert all(out[k] is data[k] for k in data)
    assert torch.equal(out["image"], before["image"]) and torch.equal(out["label"], before["label"])
    assert ValidateCase(1, [0, 1, 2])(data["image"], data["label"]) is None


def test_validation_of_a_label_alone() -> None:
    check = ValidateCased(None, "label", num_channels=1, label_values=[0, 1, 2])
    small = label(torch.ones(1, 2, 2, 2))  # no image to compare the grid with
    assert check({"label": small})["label"] is small
    with pytest.raises(ValueError, match=r"label values \[7\] are not allowed"):
        check({"label": label(torch.full((1, *SPATIAL), 7.0))})


def test_validation_of_an_image_alone() -> None:
    check = ValidateCased("image", None, num_channels=2, label_values=[0])
    assert check({"image": image(channels=2), "label": "not checked"})["label"] == "not checked"
    with pytest.raises(ValueError, match="expected 2 image channel"):
        check({"image": image(channels=1)})


def test_validation_rejects_num_channels() -> None:
    with pytest.raises(ValueError, match="num_channels must be >= 1, got 0"):
        ValidateCase(num_channels=0, label_values=[0, 1])


# -------------------------------------------------------------------------------------------------- brain label


def _brain_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(label, reference, expected): brain voxels at 0.5, a dim voxel at 0.1, a bright tumour, max 1.0."""
    reference = torch.zeros(1, *SPATIAL)
    reference[0, 1:3, 1:3, 1:3] = 0.5
    reference[0, 0, 0, 0] = 0.1  # below threshold * max = 0.2: stays background
    reference[0, 1, 1, 1] = 1.0
    tumour = torch.zeros(1, *SPATIAL)
    tumour[0, 1, 1, 1:3] = 2
    expected = tumour.clone()
    expected[0, 1:3, 1:3, 1:3] = torch.where(tumour[0, 1:3, 1:3, 1:3] == 0, 4.0, tumour[0, 1:3, 1:3, 1:3])
    return tumour, reference, expected


def test_add_brain_label_only_changes_bright_background() -> None:
    tumour, reference, expected = _brain_case()
    original = tumour.clone()
    out = AddBrainLabel(brain_label=4, threshold=0.2)(tumour, reference)
    assert torch.equal(out, expected)
    assert torch.equal(tumour, original)
    assert int((out == 4).sum()) == 8 - 2 and int((out == 2).sum()) == 2


def test_add_brain_label_dict_uses_the_chosen_channel() -> None:
    tumour, reference, expected = _brain_case()
    image_channels = torch.cat([torch.zeros_like(reference), reference])
    adder = AddBrainLabeld(keys="label", image_key="image", brain_label=4, threshold=0.2, channel=1)
    out = adder({"label": tumour, "image": image_channels})
    assert torch.equal(out["label"], expected)
    assert out["image"] is image_channels


@pytest.mark.parametrize("threshold", [-0.1, 1.0])
def test_add_brain_label_rejects_threshold(threshold: float) -> None:
    with pytest.raises(ValueError, match=f"threshold must be in \\[0, 1\\), got {threshold}"):
        AddBrainLabel(brain_label=4, threshold=threshold)


def test_add_brain_label_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"label shape \(1, 4, 4, 4\) and reference shape \(1, 4, 4, 3\) differ"):
        AddBrainLabel(brain_label=4)(torch.zeros(1, *SPATIAL), torch.zeros(1, 4, 4, 3))


# ---------------------------------------------------------------------------------------------------- condition


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("labels", [[1, 2], [2, 1], [4, 1, 2]])
def test_label_to_condition(spatial: tuple[int, ...], labels: list[int]) -> None:
    values = torch.randint(0, 5, (1, *spatial), generator=torch.Generator().manual_seed(0)).float()
    condition = LabelToCondition(labels)(values)
    assert condition.shape == (len(labels), *spatial)
    assert condition.dtype == torch.float32
    for channel, value in enumerate(labels):
        assert torch.equal(condition[channel], (values[0] == value).float())
    background = ~torch.isin(values[0], torch.tensor(labels, dtype=values.dtype))
    assert bool((condition[:, background] == 0).all())


def test_label_to_condition_keeps_the_metatensor_affine() -> None:
    shifted = AFFINE.clone()
    shifted[:3, 3] = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    condition = LabelToCondition([1, 2])(label(affine=shifted))
    assert isinstance(condition, MetaTensor)
    assert torch.equal(condition.affine.double(), shifted)
    assert condition.meta["filename_or_obj"] == "label.nii.gz"


def test_label_to_condition_dict() -> None:
    values = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    out = LabelToConditiond(keys="label", labels=[2, 1], output_key="cond")({"label": values})
    assert out["label"] is values
    assert torch.equal(out["cond"], torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]]))


@pytest.mark.parametrize("labels", [[], [1, 1]], ids=["empty", "duplicate"])
def test_label_to_condition_rejects_labels(labels: list[int]) -> None:
    with pytest.raises(ValueError, match="non-empty list of distinct values"):
        LabelToCondition(labels)


def test_label_to_condition_rejects_multi_channel_input() -> None:
    with pytest.raises(ValueError, match=r"single-channel label map, found shape \(2, 4, 4\)"):
        LabelToCondition([1])(torch.zeros(2, 4, 4))


def test_label_to_condition_dict_takes_one_key() -> None:
    with pytest.raises(ValueError, match="takes one label key"):
        LabelToConditiond(keys=["a", "b"], labels=[1])
