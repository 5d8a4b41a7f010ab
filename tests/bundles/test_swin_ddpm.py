"""End-to-end tests of the swin_ddpm bundle through its configs (in-process ``monai.bundle`` workflows, 16 x 16
phantoms, a tiny Swin U-Net, T = 100), including the quadratic timestep spacing and the paper's Inception-v3 path
(``fid_network: paper``: a small scripted network with the TorchScript Inception-v3's call convention stands in for
the file named by ``fid_paper_weights``; nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import (
    REPO_ROOT,
    assert_same_samples,
    check_release_samples,
    cli_args,
    config_parser,
    error_chain,
    load_plain_weights,
    make_workflow,
    run_torchrun,
    run_workflow,
)
from ignite.engine import Events
from torch import nn

BUNDLE = "swin_ddpm"
SHARED = {
    "image_size": [16, 16],
    "unet_channels": [16, 32],
    "swin_levels": [False, True],
    "swin_num_heads": 2,
    "swin_window_size": 4,
    "unet_norm_num_groups": 8,
    "num_train_timesteps": 100,
}
TRAIN = {**SHARED, "num_workers": 0, "phantom#n": 6, "batch_size": 3, "max_epochs": 2, "val_interval": 1}
TRAIN["save_interval"] = 1


def infer(root: Path, out: Path, names: tuple[str, ...] = ("inference",), **overrides) -> list[dict]:
    settings = {**SHARED, "bundle_root": str(root), "output_dir": str(out), "num_samples": 3, "seed": 0}
    settings["num_inference_steps"] = 5
    return run_workflow(BUNDLE, names, None, **{**settings, **overrides})[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("swin_ddpm")
    make_workflow(BUNDLE, ("train",), "train", bundle_root=str(root), **TRAIN).run()
    return root


def test_training_writes_phantoms_checkpoints_and_ema_weights(trained: Path) -> None:
    phantoms = trained / "data" / "phantoms_chest_xray_16"
    assert len(list((phantoms / "images").glob("*.png"))) == 6
    models = trained / "models"
    assert sorted(p.name for p in models.glob("*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "model.pt"]
    state = torch.load(models / "model.pt", weights_only=True)
    assert state["out.2.weight"].shape[0] == 2  # noise + variance channels


def test_inference_then_evaluate(trained: Path, tmp_path: Path) -> None:
    entries = infer(trained, tmp_path / "samples")
    assert len(entries) == 3
    image = nib.load(entries[0]["image"])
    assert image.shape == (16, 16)
    np.testing.assert_allclose(np.diag(image.affine)[:2], [1.68 * 16, 1.68 * 16])  # the paper's field of view
    values = image.get_fdata()
    assert values.min() >= 0.0 and values.max() <= 255.0  # written back as 8-bit radiograph values
    assert (tmp_path / "samples" / "preview_seed0.png").is_file()
    settings = {**SHARED, "bundle_root": str(trained), "sample_dir": str(tmp_path / "samples")}
    run_workflow(BUNDLE, ("evaluate",), None, output_dir=str(tmp_path / "eval"), **settings)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["samples"] == 3 and report["real_images"] == 6
    assert "FDS (t-SNE of the images, KL real || synthetic)" in report["distribution"]
    infer(trained, tmp_path / "again")
    assert_same_samples(tmp_path / "samples", tmp_path / "again", 3)
    fast = infer(trained, tmp_path / "fast", sampler="dpm_solver")
    assert len(fast) == 3


def test_fixed_variance_and_conv_unet_overlays_train_one_step(tmp_path: Path) -> None:
    for overlay, channels in (("fixed_variance", 1), ("conv_unet", 2)):
        root = tmp_path / overlay
        overrides = {**TRAIN, "max_epochs": 1, "unet_channels": [16, 32], "unet_norm_num_groups": 8}
        overrides["swin_levels"] = [False, False] if overlay == "conv_unet" else [False, True]
        make_workflow(BUNDLE, ("train", overlay), "train", bundle_root=str(root), **overrides).run()
        state = torch.load(root / "models" / "model.pt", weights_only=True)
        assert state["out.2.weight"].shape[0] == channels, overlay


@pytest.mark.parametrize(
    "overlay, suffix, spacing",
    [
        ("heart_mri", ".nii.gz", 2.0 * 256 / 16),
        ("pelvic_ct", ".nii.gz", 400.0 / 16),
        ("abdomen_ct", ".nii.gz", 350.0 / 16),
    ],
)
def test_dataset_overlays_prepare_their_phantoms(tmp_path: Path, overlay: str, suffix: str, spacing: float) -> None:
    parser = config_parser(BUNDLE, ("train", overlay), bundle_root=str(tmp_path), **{**SHARED, "phantom#n": 2})
    train = parser.get_parsed_content("datalist")["train"]
    assert train[0]["image"].endswith(suffix)
    item = parser.get_parsed_content("preprocessing")(train[0])
    assert item["image"].shape == (1, 16, 16)
    low, high = parser.get_parsed_content("intensity_range")
    assert low <= float(item["image"].min()) and float(item["image"].max()) <= high
    assert nib.load(train[0]["image"]).header.get_zooms()[0] == pytest.approx(spacing)


def test_pelvic_ct_trains_on_the_axial_slices_of_3d_volumes(tmp_path: Path) -> None:
    """A dataset_dir of two 3D CT volumes: pelvic_ct.yaml cuts them along axis 2 into the slice cache and trains."""
    rng = np.random.default_rng(0)
    (tmp_path / "volumes").mkdir()
    affine = np.diag([25.0, 25.0, 5.0, 1.0])  # the overlay resamples to 2 mm * 256 / 16 = 32 mm pixels
    for case in ("pelvis_a", "pelvis_b"):
        hu = rng.normal(40.0, 20.0, size=(16, 16, 4)).astype(np.float32)
        hu[:3] = -1000.0  # air in front of the body
        nib.save(nib.Nifti1Image(hu, affine), tmp_path / "volumes" / f"{case}.nii.gz")
    root = tmp_path / "bundle"
    overrides = {**TRAIN, "max_epochs": 1, "dataset_dir": str(tmp_path / "volumes"), "val_fraction": 0.5}
    make_workflow(BUNDLE, ("train", "pelvic_ct"), "train", bundle_root=str(root), **overrides).run()
    cache = json.loads((root / "data" / "slices_pelvic_ct" / "dataset.json").read_text())["training"]
    assert [e["case_id"] for e in cache] == [f"pelvis_{c}_{k:03d}" for c in "ab" for k in range(4)]
    assert (root / "models" / "model.pt").is_file() and not (root / "data" / "phantoms_pelvic_ct_16").exists()


def test_bad_inputs_name_the_config_key(tmp_path: Path, trained: Path) -> None:
    with pytest.raises((RuntimeError, ValueError, FileNotFoundError)) as error:
        config_parser(BUNDLE, ("train",), **{**SHARED, "swin_window_size": 16}).get_parsed_content("network_def")
    assert "network_def#window_size" in error_chain(error.value) and "[8, 8]" in error_chain(error.value)
    with pytest.raises((RuntimeError, ValueError, FileNotFoundError)) as error:
        infer(trained, tmp_path / "too_many", num_inference_steps=500)
    assert "num_inference_steps" in error_chain(error.value) and "got 500" in error_chain(error.value)
    with pytest.raises((RuntimeError, ValueError, FileNotFoundError)) as error:
        overrides = {**SHARED, "bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "absent")}
        parser = config_parser(BUNDLE, ("train",), **overrides)
        parser.get_parsed_content("datalist")
    assert "dataset_dir" in error_chain(error.value) and "absent" in error_chain(error.value)


@pytest.mark.slow  # resume: semantic_mri's interrupted run is the default suite's representative
def test_resume_continues_from_the_newest_checkpoint(trained: Path, tmp_path: Path) -> None:
    """A run given epoch 1's checkpoint and resume=true trains epoch 2 only, from the saved weights and EMA."""
    (tmp_path / "models").mkdir()
    (tmp_path / "data").symlink_to(trained / "data", target_is_directory=True)
    checkpoint = torch.load(trained / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    torch.save(checkpoint, tmp_path / "models" / "checkpoint_epoch=1.pt")
    workflow = make_workflow(BUNDLE, ("train",), "train", bundle_root=str(tmp_path), **{**TRAIN, "resume": True})
    trainer = workflow.parser.get_parsed_content("train#trainer")
    started = {}
    network = workflow.parser.get_parsed_content("network")

    def record(engine) -> None:
        started.update(
            iteration=engine.state.iteration, weights={k: v.clone() for k, v in network.state_dict().items()}
        )

    trainer.add_event_handler(Events.EPOCH_STARTED(once=2), record)
    workflow.run()
    assert started["iteration"] == trainer.state.epoch_length  # continued after epoch 1, not from scratch
    assert all(torch.equal(started["weights"][k], v) for k, v in checkpoint["network"].items())
    final = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 2 * trainer.state.epoch_length
    ema = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(v, final["ema"][k]) for k, v in ema.items())


@pytest.mark.slow  # multi-process torchrun: semantic_mri's two-process training is the default suite's one
def test_torchrun_two_processes_on_cpu(trained: Path, tmp_path: Path) -> None:
    """multi_gpu_train.yaml: DDP with gloo on CPU, DistributedSampler, rank-0 checkpoints of unwrapped weights."""
    (tmp_path / "data").symlink_to(trained / "data", target_is_directory=True)
    overrides = {**TRAIN, "max_epochs": 1, "save_interval": 0, "batch_size": 2}
    result = run_torchrun(
        BUNDLE, ("train", "multi_gpu_train"), ["--bundle_root", str(tmp_path), *cli_args(overrides)], 29571
    )
    assert result.returncode == 0, result.stderr[-3000:]
    content = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in content["network"])  # unwrapped
    assert content["trainer"]["iteration"] == content["trainer"]["epoch_length"] == 2  # 5 cases, 2 ranks, batch 2
    load_plain_weights(tmp_path / "models" / "model.pt", BUNDLE, ("inference",), **SHARED)  # what inference loads


@pytest.mark.slow  # whole release runs: semantic_mri's run inside its own folder is the default suite's one
def test_release_samples_from_its_own_folder(trained: Path, tmp_path: Path) -> None:
    """The release zip, unpacked elsewhere, samples on the tiny checkpoint with only its listed packages."""
    args = ["--num_samples", "1", "--seed", "0", "--num_inference_steps", "5"]
    folder = check_release_samples(BUNDLE, trained, tmp_path, SHARED, args)
    written = list((folder / "samples").rglob("*.nii.gz"))
    assert len(written) == 1 and nib.load(written[0]).shape == (16, 16)


class _StandInInception(nn.Module):
    """The call convention of the TorchScript Inception-v3 of the FID tools: 3-channel images in [0, 255];
    ``return_features`` gives the pool features, otherwise class probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        pooled = torch.relu(self.features(x / 255.0)).mean((2, 3))
        if return_features:
            return pooled
        logits = pooled @ self.head.weight.T if no_output_bias else self.head(pooled)
        return logits.softmax(1)


def test_quadratic_spacing_samples_and_a_bad_spacing_names_the_key(trained: Path, tmp_path: Path) -> None:
    settings = {**SHARED, "bundle_root": str(trained), "num_samples": 2, "num_inference_steps": 6, "seed": 0}
    entries = run_workflow(
        BUNDLE, ("inference",), None, **settings, output_dir=str(tmp_path / "q"), timestep_spacing="quadratic"
    )[0]
    even = run_workflow(BUNDLE, ("inference",), None, **settings, output_dir=str(tmp_path / "e"))[0]
    assert len(entries) == len(even) == 2
    # same seed and initial noise, other kept timesteps: other samples
    assert not np.allclose(nib.load(entries[0]["image"]).get_fdata(), nib.load(even[0]["image"]).get_fdata())
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ("inference",), None, **settings, output_dir=str(tmp_path / "x"), timestep_spacing="log")
    assert "`timestep_spacing` must be one of ('even', 'quadratic'), got 'log'" in error_chain(error.value)


def test_paper_inception_file_gives_fid_and_is(trained: Path, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(trained, root)
    run_workflow(
        BUNDLE,
        ("inference",),
        None,
        **SHARED,
        bundle_root=str(root),
        output_dir=str(tmp_path / "samples"),
        num_samples=4,
        num_inference_steps=4,
        seed=0,
    )
    weights = root / "models" / "inception-2015-12-05.pt"  # the file name large_files.yml gives
    assert "models/inception-2015-12-05.pt" in (REPO_ROOT / "bundles" / BUNDLE / "large_files.yml").read_text()
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_StandInInception().eval()), str(weights))
    settings = {**SHARED, "bundle_root": str(root), "sample_dir": str(tmp_path / "samples"), "fid_network": "paper"}
    run_workflow(BUNDLE, ("evaluate",), None, output_dir=str(tmp_path / "eval"), **settings)
    distribution = json.loads((tmp_path / "eval" / "report.json").read_text())["distribution"]
    fid = distribution["FID (paper, Inception-v3 pool)"]
    assert np.isfinite(fid) and fid >= 0.0
    assert distribution["IS (paper, Inception-v3) mean"] >= 1.0  # IS is >= 1 for any classifier
    assert np.isfinite(distribution["IS (paper, Inception-v3) std"])

    weights.write_bytes(b"not a network")
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ("evaluate",), None, output_dir=str(tmp_path / "eval2"), **settings)
    assert "config key 'fid_paper_weights'" in error_chain(error.value)
    assert not (tmp_path / "eval2" / "report.json").exists()
