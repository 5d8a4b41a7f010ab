"""Tests of common.workflows.sampling: resolving masks and the mask-conditioned sampling workflow with a
tiny random ``DiffusionModelUNet`` (layouts, affines, label remapping, datalist, preview, no overwriting, seeding)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from monai.transforms import Compose

from common.data.layouts import find_cases
from common.inferers.conditional import ConditionalDiffusionInferer
from common.io import PNG_SIGNATURE, atomic_write_nifti
from common.schedulers import DDIMClippedScheduler
from common.transforms.conditions import LabelToConditiond
from common.transforms.io import SafeLoadImaged
from common.workflows.sampling import MaskConditionedSampling, list_masks

T = 10
STEPS = 2
MASK_SHAPE = (8, 8, 8)
MASK_AFFINES = {
    "m0": np.array([[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0.0, 0.0, 0.0, 1.0]]),
    "m1": np.diag([3.0, 3.0, 3.0, 1.0]),
}


def write_mask(path: Path, affine: np.ndarray) -> np.ndarray:
    mask = np.zeros((1, *MASK_SHAPE), np.uint8)
    mask[0, 1:7, 1:7, 1:7] = 1
    mask[0, 3:5, 3:6, 2:5] = 2
    atomic_write_nifti(mask, affine, path)
    return mask[0]


@pytest.fixture(scope="module")
def mask_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("masks")
    for case_id, affine in MASK_AFFINES.items():
        write_mask(folder / f"{case_id}.nii.gz", affine)
    return folder


def tiny_unet(modalities: int, condition_channels: int = 2) -> DiffusionModelUNet:
    torch.manual_seed(0)
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=modalities + condition_channels,
        out_channels=modalities,
        channels=(32, 32),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=32,
    ).eval()


@pytest.fixture(scope="module")
def unet() -> DiffusionModelUNet:
    return tiny_unet(modalities=1)


class NotToBeCalled(torch.nn.Module):
    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("the network must not run")


PREPROCESSING = Compose(
    [
        SafeLoadImaged(keys="label", image_only=True, ensure_channel_first=True),
        LabelToConditiond(keys="label", labels=[1, 2], output_key="condition"),
    ]
)


def sampling(
    network: torch.nn.Module, masks: list[dict], output_dir: Path, **overrides: object
) -> MaskConditionedSampling:
    scheduler = overrides.pop("scheduler", None) or DDIMClippedScheduler(num_train_timesteps=T, eta=1.0)
    options: dict = {
        "network": network,
        "inferer": ConditionalDiffusionInferer(DDPMScheduler(num_train_timesteps=T), mode="concat"),
        "scheduler": scheduler,
        "num_inference_steps": STEPS,
        "masks": masks,
        "preprocessing": PREPROCESSING,
        "output_dir": str(output_dir),
        "modalities": ["t1c"],
        "verbose": False,
    }
    return MaskConditionedSampling(**{**options, **overrides})


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -------------------------------------------------------------------------------------------------------- masks


def test_list_masks_folder(tmp_path: Path) -> None:
    (tmp_path / "b.nii.gz").write_bytes(b"")
    (tmp_path / "a.nii").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("not a mask")
    assert list_masks(str(tmp_path)) == [
        {"case_id": "a", "label": str(tmp_path / "a.nii")},
        {"case_id": "b", "label": str(tmp_path / "b.nii.gz")},
    ]


def test_list_masks_glob(mask_dir: Path) -> None:
    assert list_masks(str(mask_dir / "*1.nii.gz")) == [{"case_id": "m1", "label": str(mask_dir / "m1.nii.gz")}]


def test_list_masks_list_is_sorted_by_case_id(mask_dir: Path) -> None:
    files = [str(mask_dir / "m1.nii.gz"), str(mask_dir / "m0.nii.gz")]
    assert [m["case_id"] for m in list_masks(files)] == ["m0", "m1"]


def test_list_masks_single_file(mask_dir: Path) -> None:
    path = str(mask_dir / "m0.nii.gz")
    assert list_masks(path) == [{"case_id": "m0", "label": path}]


@pytest.mark.parametrize(
    "masks, error, match",
    [
        (lambda d: str(d / "absent"), FileNotFoundError, "config key 'masks': .*absent' is neither a folder"),
        (lambda d: [str(d / "m0.nii.gz"), str(d / "gone.nii.gz")], FileNotFoundError, r"do not exist: \[.*gone"),
        (lambda d: str(d / "*.nrrd"), ValueError, r"config key 'masks': no NIfTI mask files found in .*\*\.nrrd"),
        (lambda d: str(d / "empty"), ValueError, "no NIfTI mask files found"),
        (lambda d: [], ValueError, "no NIfTI mask files found"),
    ],
    ids=["missing path", "missing listed file", "glob matches nothing", "empty folder", "empty list"],
)
def test_list_masks_errors(tmp_path: Path, masks: Callable[[Path], object], error: type[Exception], match: str) -> None:
    folder = tmp_path / "masks"
    (folder / "empty").mkdir(parents=True)
    write_mask(folder / "m0.nii.gz", np.eye(4))
    with pytest.raises(error, match=match):
        list_masks(masks(folder))


# -------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("num_samples, batch_size", [(0, 1), (1, 0)])
def test_sampling_rejects_counts(mask_dir: Path, tmp_path: Path, num_samples: int, batch_size: int) -> None:
    with pytest.raises(ValueError, match=f"got {num_samples} and {batch_size}"):
        sampling(NotToBeCalled(), list_masks(str(mask_dir)), tmp_path, num_samples=num_samples, batch_size=batch_size)


def test_sampling_rejects_a_shortened_monai_ddpm(mask_dir: Path, tmp_path: Path) -> None:
    masks = list_masks(str(mask_dir))
    ddpm = DDPMScheduler(num_train_timesteps=T)
    with pytest.raises(ValueError, match=f"num_inference_steps=5: MONAI's DDPMScheduler .* all {T} steps"):
        sampling(NotToBeCalled(), masks, tmp_path, scheduler=ddpm, num_inference_steps=5)
    assert sampling(NotToBeCalled(), masks, tmp_path, scheduler=ddpm, num_inference_steps=T).num_inference_steps == T


@pytest.mark.parametrize("label_map", [[[1, 2], [2, 1]], {1: 2, 2: 1}], ids=["pairs", "mapping"])
def test_relabel_uses_the_original_values(tmp_path: Path, label_map: object) -> None:
    run = sampling(NotToBeCalled(), [], tmp_path, output_label_map=label_map)
    assert torch.equal(run.relabel(torch.tensor([0, 1, 2, 3])), torch.tensor([0, 2, 1, 3]))


@pytest.mark.parametrize(
    "existing, seed",
    [
        ("preview_seed3.png", 3),
        ("imagesTr/m1_sample001.nii.gz", 0),
        ("labelsTr/m0_sample000.nii.gz", 0),
        ("imagesTr/m0_sample000.nii.gz", 1),  # sample names do not depend on the seed: another seed still clashes
    ],
)
def test_sampling_refuses_to_overwrite(mask_dir: Path, tmp_path: Path, existing: str, seed: int) -> None:
    (tmp_path / existing).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / existing).write_bytes(b"an earlier sample")
    run = sampling(NotToBeCalled(), list_masks(str(mask_dir)), tmp_path, num_samples=2, seed=seed)
    with pytest.raises(FileExistsError) as info:
        run.run()
    message = str(info.value)
    assert f"output_dir '{tmp_path}' already holds 1 of this run's files" in message and existing in message
    assert "choose another --output_dir" in message and "--seed" not in message
    assert file_bytes(tmp_path) == {existing: b"an earlier sample"}


# ------------------------------------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def seed0_run(
    unet: DiffusionModelUNet, mask_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[dict]]:
    """Two masks, two samples each in one batch, labels 1 and 2 swapped in the written masks."""
    out = tmp_path_factory.mktemp("samples_seed0")
    run = sampling(
        unet,
        list_masks(str(mask_dir)),
        out,
        num_samples=2,
        batch_size=2,
        output_label_map=[[1, 2], [2, 1]],
        outline_labels=[2],
    )
    return out, run.run()


def test_sampling_writes_images_and_remapped_labels(seed0_run: tuple[Path, list[dict]], mask_dir: Path) -> None:
    out, written = seed0_run
    ids = ["m0_sample000", "m0_sample001", "m1_sample000", "m1_sample001"]
    assert [c["case_id"] for c in written] == ids
    for case in written:
        mask_id = case["case_id"].split("_")[0]
        assert case["image"] == [str(out / "imagesTr" / f"{case['case_id']}.nii.gz")]
        assert case["label"] == str(out / "labelsTr" / f"{case['case_id']}.nii.gz")
        image, label = nib.load(case["image"][0]), nib.load(case["label"])
        assert image.shape == MASK_SHAPE and image.get_data_dtype() == np.float32
        assert np.isfinite(image.get_fdata()).all()
        np.testing.assert_allclose(image.affine, MASK_AFFINES[mask_id])
        np.testing.assert_allclose(label.affine, MASK_AFFINES[mask_id])
        mask = np.asanyarray(nib.load(mask_dir / f"{mask_id}.nii.gz").dataobj)
        expected = np.where(mask == 1, 2, np.where(mask == 2, 1, mask))
        assert label.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asanyarray(label.dataobj), expected)


def test_sampling_writes_datalist_and_preview(seed0_run: tuple[Path, list[dict]]) -> None:
    out, written = seed0_run
    assert find_cases(out, ["t1c"], layout="datalist") == written
    assert find_cases(out, ["t1c"], layout="images_labels") == written
    assert (out / "preview_seed0.png").read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset.json",
        "imagesTr",
        "labelsTr",
        "preview_seed0.png",
        "run_manifest.json",
    ]


def test_sampling_samples_differ_within_a_batch(seed0_run: tuple[Path, list[dict]]) -> None:
    _, written = seed0_run
    first, second = (nib.load(c["image"][0]).get_fdata() for c in written[:2])
    assert not np.allclose(first, second)


def test_same_seed_same_files_other_seed_other_files(
    unet: DiffusionModelUNet, mask_dir: Path, tmp_path: Path, seed0_run: tuple[Path, list[dict]]
) -> None:
    reference = file_bytes(seed0_run[0])
    masks = list_masks(str(mask_dir / "m0.nii.gz"))  # the first mask, as in the reference run
    outputs = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        sampling(unet, masks, out, seed=seed, num_samples=2, batch_size=2, output_label_map=[[1, 2], [2, 1]]).run()
        outputs[seed] = {k: v for k, v in file_bytes(out).items() if k.endswith(".nii.gz")}
    assert sorted(outputs[0]) == [f"{d}/m0_sample00{i}.nii.gz" for d in ("imagesTr", "labelsTr") for i in range(2)]
    assert outputs[0] == {k: reference[k] for k in outputs[0]}
    for name in outputs[1]:
        assert (outputs[1][name] == reference[name]) == name.startswith("labelsTr")


def test_batch_size_does_not_change_the_number_of_samples(
    unet: DiffusionModelUNet, mask_dir: Path, tmp_path: Path
) -> None:
    masks = list_masks(str(mask_dir / "m1.nii.gz"))
    written = sampling(unet, masks, tmp_path, num_samples=3, batch_size=2, num_inference_steps=1).run()
    assert [c["case_id"] for c in written] == ["m1_sample000", "m1_sample001", "m1_sample002"]
    assert sorted(p.name for p in (tmp_path / "imagesTr").iterdir()) == [f"m1_sample00{i}.nii.gz" for i in range(3)]
    assert len(list((tmp_path / "labelsTr").iterdir())) == 3


def test_sampling_brats_layout_with_two_modalities(mask_dir: Path, tmp_path: Path) -> None:
    masks = list_masks(str(mask_dir / "m0.nii.gz"))
    modalities = ["t1", "flair"]
    written = sampling(
        tiny_unet(modalities=2), masks, tmp_path, modalities=modalities, layout="brats", num_inference_steps=1
    ).run()
    folder = tmp_path / "m0_sample000"
    assert written == [
        {
            "case_id": "m0_sample000",
            "image": [str(folder / f"m0_sample000_{m}.nii.gz") for m in modalities],
            "label": str(folder / "m0_sample000_seg.nii.gz"),
        }
    ]
    channels = [nib.load(p) for p in written[0]["image"]]
    assert all(c.shape == MASK_SHAPE for c in channels)
    assert not np.allclose(channels[0].get_fdata(), channels[1].get_fdata())
    for path in [*written[0]["image"], written[0]["label"]]:
        np.testing.assert_allclose(nib.load(path).affine, MASK_AFFINES["m0"])
    assert find_cases(tmp_path, modalities, layout="brats") == written
    assert find_cases(tmp_path, modalities, layout="datalist") == written


def test_list_masks_writes_the_default_phantom_masks_only(tmp_path: Path) -> None:
    phantom = {
        "dir": str(tmp_path / "phantoms"),
        "kind": "whole_head_mri",
        "n": 1,
        "shape": [16, 16, 16],
        "spacing": [12.0, 12.0, 12.0],
        "seed": 0,
    }
    with pytest.raises(FileNotFoundError, match="masks"):  # the user's own folder: never filled with phantoms
        list_masks(str(tmp_path / "mine"), phantom=phantom)
    assert not (tmp_path / "phantoms").exists()
    masks = list_masks(str(tmp_path / "phantoms" / "labelsTr"), phantom=phantom)
    assert len(masks) == 1 and Path(masks[0]["label"]).is_file()
