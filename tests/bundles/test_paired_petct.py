"""End-to-end tests of the paired_petct bundle through its configs (in-process ``monai.bundle`` workflows,
tiny sizes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
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
    config_files,
    config_parser,
    error_chain,
    load_plain_weights,
    make_workflow,
    run_torchrun,
    run_workflow,
)

from common.io import atomic_write_nifti
from common.workflows import PairedEvaluation

BUNDLE = "paired_petct"
SHARED = {
    "pixdim": [8.0, 8.0, 8.0],
    "roi_size": [16, 16],
    "unet_channels": [16, 16],
    "unet_attention_levels": [False, False],
    "unet_num_res_blocks": 1,
    "unet_num_head_channels": 16,
    "unet_norm_num_groups": 8,
    "num_train_timesteps": 20,
}
TRAIN = {
    **SHARED,
    "num_workers": 0,
    "phantom_cases": 4,
    "phantom_size": 32,
    "batch_size": 4,
    "max_epochs": 2,
    "val_interval": 1,
    "save_interval": 1,
    "perceptual_start_epoch": 2,
    "perceptual_network_name": "random",
}


def train(root: Path, names: tuple[str, ...] = ("train",), **overrides) -> object:
    workflow = make_workflow(BUNDLE, names, "train", bundle_root=str(root), **{**TRAIN, **overrides})
    workflow.run()
    return workflow


def infer(root: Path, out: Path, names: tuple[str, ...] = ("inference",), **overrides) -> list[dict]:
    settings = {**SHARED, "bundle_root": str(root), "output_dir": str(out), "num_samples": 2, **overrides}
    return run_workflow(BUNDLE, names, None, **settings)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("paired_petct")
    workflow = train(root)
    return root, workflow


def test_training_writes_phantoms_checkpoints_and_tensorboard(trained) -> None:
    root, workflow = trained
    phantoms = root / "data" / "phantoms_head_neck"
    assert len(list((phantoms / "imagesTr").glob("*__PT.nii.gz"))) == 4
    models = root / "models"
    assert sorted(p.name for p in models.glob("*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "model.pt"]
    content = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)  # the training state
    assert {"network", "ema", "optimizer_ct", "optimizer_pet", "optimizer_mask", "trainer"} <= set(content)
    assert {key.split(".")[0] for key in content["network"]} == {"ct", "pet", "mask"}
    # model.pt: the EMA weights of the whole ModuleDict, loadable with load_state_dict into inference's network_def
    network = load_plain_weights(models / "model.pt", BUNDLE, ("inference",), **SHARED)
    assert isinstance(network, torch.nn.ModuleDict) and list(network) == ["ct", "pet", "mask"]
    assert all(torch.equal(v, content["ema"][k]) for k, v in network.state_dict().items())
    assert list((root / "runs").glob("events.out.tfevents.*"))
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.output["perceptual_loss"] > 0  # switched on at epoch 2
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.metrics["val_noise_mse"] > 0


def test_inference_writes_triples_sharing_an_affine(trained, tmp_path: Path) -> None:
    root, _ = trained
    written = infer(root, tmp_path)
    assert len(written) == 2
    for entry in written:
        ct, pet = (nib.load(p) for p in entry["image"])
        mask = nib.load(entry["label"])
        for image in (ct, pet, mask):
            assert image.shape == (16, 16, 1)
            np.testing.assert_allclose(image.affine, ct.affine)
        np.testing.assert_allclose(np.diag(ct.affine)[:3], [8.0, 8.0, 8.0])
        ct_hu, pet_suv = ct.get_fdata(), pet.get_fdata()
        assert ct_hu.min() >= -1000 and ct_hu.max() <= 1000 and pet_suv.min() >= 0 and pet_suv.max() <= 10
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1} and mask.get_data_dtype() == np.uint8
        assert entry["image"][0].endswith("__CT.nii.gz") and entry["image"][1].endswith("__PT.nii.gz")
    datalist = json.loads((tmp_path / "dataset.json").read_text())
    assert datalist["numTraining"] == 2 and datalist["modality"] == {"0": "CT", "1": "PT"}
    assert (tmp_path / "preview_seed0.png").read_bytes().startswith(b"\x89PNG")


def test_same_seed_same_samples_and_never_overwrite(trained, tmp_path: Path) -> None:
    root, _ = trained
    fast = {"sampler": "dpm_solver", "num_inference_steps": 5}
    first = infer(root, tmp_path / "a", **fast)
    second = infer(root, tmp_path / "b", **fast)
    other = infer(root, tmp_path / "c", seed=1, **fast)
    for a, b, c in zip(first, second, other):
        np.testing.assert_array_equal(nib.load(a["image"][1]).get_fdata(), nib.load(b["image"][1]).get_fdata())
        assert not np.array_equal(nib.load(a["image"][1]).get_fdata(), nib.load(c["image"][1]).get_fdata())
    assert infer(root, tmp_path / "a", **fast) == first  # the same run again resumes: nothing left to do
    with pytest.raises(RuntimeError) as error:
        infer(root, tmp_path / "a", seed=1, **fast)
    assert "field 'seed' differs (this run: 1, found: 0); samples are never overwritten" in error_chain(error.value)


@pytest.mark.slow
def test_torchrun_sampling_matches_one_process_with_any_batch_size(trained, tmp_path: Path) -> None:
    """multi_gpu_inference.yaml (gloo, 2 processes, batches of 3) writes the triples of one process at batch 1: the
    noise is per sample; the batched forward of the paired networks differs from the row-by-row one by float rounding
    (measured: at most 6.1e-5 HU, 1 voxel in 256, relative 1.8e-7), hence the tolerance of 1e-3 HU."""
    root, _ = trained
    fast = {"sampler": "ddim", "num_inference_steps": 3, "num_samples": 5}
    infer(root, tmp_path / "one", sample_batch_size=1, **fast)
    args = ["--bundle_root", str(root), "--output_dir", str(tmp_path / "two"), "--sample_batch_size", "3"]
    result = run_torchrun(BUNDLE, ("inference", "multi_gpu_inference"), [*args, *cli_args({**SHARED, **fast})], 29565)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_samples(tmp_path / "one", tmp_path / "two", count=15, atol=1e-3)


def test_seeded_inference_and_evaluation(trained, tmp_path: Path) -> None:
    """Seeds come from the training split by default; evaluation compares with held-out cases and refuses a real
    split that shares a case with the seeds (naming the case ids)."""
    root, _ = trained
    written = infer(root, tmp_path / "samples", names=("inference", "seeded"), num_inference_steps=5)
    datalist = json.loads((tmp_path / "samples" / "dataset.json").read_text())["training"]
    seeds = [entry["seeded_from"] for entry in datalist]
    assert len(written) == 2 and len(seeds) == 2
    split = config_parser(BUNDLE, ("evaluate",), bundle_root=str(root), **SHARED).get_parsed_content("datalist")
    seed_cases = {seed.rsplit(":", 1)[0] for seed in seeds}
    assert seed_cases <= {case["case_id"] for case in split["train"]}
    assert not seed_cases & {case["case_id"] for case in split["val"] + split["test"]}
    settings = {
        **SHARED,
        "bundle_root": str(root),
        "sample_dir": str(tmp_path / "samples"),
        "eval_dir": str(tmp_path / "eval"),
        "real_split": "val",
    }
    results = run_workflow(BUNDLE, ("evaluate",), None, **settings)[0]
    assert results["n_seeded"] == 2
    assert {"ct", "pet", "mask", "pairing_samples", "pairing_real"} <= set(results)
    assert 0.0 <= results["pairing_real"]["pairing_dice_mean"] <= 1.0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert "mask_in_body" in report["pairing_samples"]
    assert (tmp_path / "eval" / "report.md").is_file()
    with pytest.raises(RuntimeError) as error:  # real slices of the seeding cases: an error naming them
        run_workflow(BUNDLE, ("evaluate",), None, **{**settings, "real_split": "train"})
    chain = error_chain(error.value)
    assert "config key 'real_split'" in chain and all(repr(case) in chain for case in seed_cases)


def test_resume_continues_from_the_newest_checkpoint(trained, tmp_path: Path) -> None:
    root, _ = trained
    copy = tmp_path / "run"
    (copy / "models").mkdir(parents=True)
    (copy / "data").symlink_to(root / "data", target_is_directory=True)
    checkpoint = torch.load(root / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    torch.save(checkpoint, copy / "models" / "checkpoint_epoch=1.pt")
    workflow = train(copy, max_epochs=2, resume=True)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2
    assert trainer.state.iteration == 2 * trainer.state.epoch_length  # epoch 1 was not repeated


@pytest.mark.parametrize("overlay", ["severed", "no_perceptual", "feedback"])
def test_overlays_train(tmp_path: Path, trained, overlay: str) -> None:
    root, _ = trained
    (tmp_path / "data").symlink_to(root / "data", target_is_directory=True)
    workflow = train(tmp_path, names=("train", overlay), max_epochs=1, save_interval=0)
    network = workflow.parser.get_parsed_content("network")
    if overlay == "severed":
        assert all(len(network[m].condition_encoders) == 0 for m in ("ct", "pet", "mask"))
    elif overlay == "feedback":
        assert all(network[m].feedback is not None for m in ("ct", "pet", "mask"))
        load_plain_weights(root / "models" / "model.pt", BUNDLE, ("inference",), **SHARED)  # base: no feedback layers
        with pytest.raises(RuntimeError, match="feedback"):  # the overlay's network is another network
            load_plain_weights(root / "models" / "model.pt", BUNDLE, ("inference", "feedback"), **SHARED)
    else:
        assert workflow.parser.get_parsed_content("train#trainer").perceptual_weight == 0.0


# Paper 000 (paired PET-CT / tumour-mask DDPM): every hyperparameter it states, the config key holding it, its section.
PAPER_TRAIN = {
    "pixdim": [2.0, 2.0, 2.0],  # 2.2 "resampled to a uniform 2x2x2 mm voxel size"
    "roi_size": [128, 128],  # 2.2 "a smart crop function taking 128x128 pixel slices"
    "split_fractions": [0.8, 0.1, 0.1],  # 2.2 "partitioned into training, validation, and test sets in an 80:10:10"
    "modalities": ["ct", "pet", "mask"],  # 1, 3 "PET-CT-tumour mask pairs"; one network each (2.3)
    "num_train_timesteps": 1000,  # 2.1 "after T steps (typically 1000)"
    "offset_noise_scale": 0.1,  # 2.4 Eq. 1 "C ~ 0.1 N(0, 1)"
    "perceptual_start_epoch": 50,  # 2.4 "implemented past epoch 50 only"
    "perceptual_network_name": "vgg16",  # 2.4 "perceptual loss function with pre-trained VGG-16"
    "severed": False,  # 2.3 conditional encoders (severed: the ablation of 3)
    "low_pass": True,  # 2.3 TLP in front of the conditional encoders (Fig. 1)
    "timestep_cbam": True,  # 2.3 "timestep-aware convolutional block attention module"
    "condition_feedback": False,  # not in the paper: feedback.yaml
}


def test_base_configs_hold_the_papers_settings(tmp_path: Path) -> None:
    """train.yaml and inference.yaml, no overlay, loaded as monai.bundle does: the values paper 000 states."""
    train_config = config_parser(BUNDLE, ("train",), bundle_root=str(tmp_path))
    for key, value in PAPER_TRAIN.items():
        assert train_config.get_parsed_content(key) == value, key
    assert train_config["noise_scheduler"]["_target_"] == "DDPMScheduler"  # 2.1 DDPM
    assert train_config["network_def"]["spatial_dims"] == 2  # 2.2 "2D slices were taken wherever tumour is visible"
    assert train_config["optimizers"]["_target_"] == "common.engines.paired_optimizers"  # 2.3 "its own optimiser"
    assert train_config["loss"]["_target_"] == "torch.nn.MSELoss"  # 2.1 predicted noise "compared to the known noise"
    augmentation = train_config["augmentation"]  # 2.2 "random jitter, rotation, and a random flip"
    assert augmentation["jitter_pixels"] > 0 and augmentation["rotate_degrees"] > 0 and augmentation["flip_prob"] > 0
    inference = config_parser(BUNDLE, ("inference",), bundle_root=str(tmp_path))
    for key in ("pixdim", "roi_size", "modalities", "num_train_timesteps", "severed", "low_pass", "timestep_cbam"):
        assert inference.get_parsed_content(key) == PAPER_TRAIN[key], key
    assert inference.get_parsed_content("condition_feedback") is False
    assert inference.get_parsed_content("sampler") == "ddpm"  # 2.1 full ancestral sampling from x_T
    assert inference.get_parsed_content("num_inference_steps") == 1000
    assert inference.get_parsed_content("seed_fraction") is None  # plain sampling; seeding is seeded.yaml
    assert inference.get_parsed_content("refine_rounds") == 0  # agreement refinement: a project option, off
    seeded = config_parser(BUNDLE, ("inference", "seeded"), bundle_root=str(tmp_path))
    assert seeded.get_parsed_content("seed_fraction") == 0.8  # 2.5 "seeding with real images from 80%"


@pytest.mark.parametrize("stage", ["train", "inference"])
def test_feedback_overlay_turns_the_feedback_path_on(tmp_path: Path, stage: str) -> None:
    tiny = {key: SHARED[key] for key in ("unet_channels", "unet_attention_levels", "unet_num_head_channels")}
    tiny.update(unet_norm_num_groups=8, unet_num_res_blocks=1, bundle_root=str(tmp_path))
    base = config_parser(BUNDLE, (stage,), **tiny)
    overlay = config_parser(BUNDLE, (stage, "feedback"), **tiny)
    assert base.get_parsed_content("condition_feedback") is False
    assert overlay.get_parsed_content("condition_feedback") is True
    assert all(net.feedback is None for net in base.get_parsed_content("network_def").values())
    assert all(net.feedback is not None for net in overlay.get_parsed_content("network_def").values())


def test_base_training_without_the_vgg_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    """The base config asks for the paper's VGG-16 loss: no silent random extractor (demo.yaml and tests opt in)."""
    with pytest.raises(RuntimeError) as error:  # the config expression's error, raised from the loader's
        config_parser(BUNDLE, ("train",), bundle_root=str(tmp_path)).get_parsed_content("perceptual_loss")
    chain = error_chain(error.value)
    assert "FileNotFoundError" in chain and "'perceptual_weights'" in chain and "models/vgg16-397923af.pth" in chain
    demo = config_parser(BUNDLE, ("train", "demo"), bundle_root=str(tmp_path))
    assert demo.get_parsed_content("perceptual_network_name") == "random"


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception) as error:
        infer(tmp_path, tmp_path / "out")
    chain = error_chain(error.value)
    assert "ckpt_path" in chain and "model.pt" in chain and "train.yaml" in chain
    assert "large_files.yml" in chain and "'models/model.pt'" in chain


def test_checkpoint_that_does_not_fit_names_the_layer(trained, tmp_path: Path) -> None:
    root, _ = trained
    with pytest.raises(Exception) as error:
        infer(root, tmp_path, unet_channels=[16, 32])
    assert "ct." in error_chain(error.value)


def test_user_dataset_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(Exception) as error:
        train(tmp_path, dataset_dir=str(tmp_path / "nowhere"))
    assert "does not exist" in error_chain(error.value) or "nowhere" in error_chain(error.value)


def test_mask_labels_and_pet_units_are_checked(trained, tmp_path: Path) -> None:
    root, _ = trained
    source = root / "data" / "phantoms_head_neck"
    data = tmp_path / "data"
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
        for path in sorted((source / sub).glob("*.nii.gz")):
            (data / sub / path.name).write_bytes(path.read_bytes())
    label = sorted((data / "labelsTr").glob("*.nii.gz"))[0]
    image = nib.load(str(label))
    values = np.asarray(image.dataobj).copy()
    values[values == 1] = 3
    label.unlink()
    atomic_write_nifti(values[None], image.affine, label, dtype="uint8")
    with pytest.raises(Exception) as error:
        train(tmp_path, dataset_dir=str(data))
    chain = error_chain(error.value)
    assert label.name in chain and "3" in chain

    values[values == 3] = 1
    label.unlink()
    atomic_write_nifti(values[None], image.affine, label, dtype="uint8")
    pet_path = sorted((data / "imagesTr").glob("*__PT.nii.gz"))[0]
    pet = nib.load(str(pet_path))
    bq = np.asarray(pet.get_fdata(), dtype=np.float32) * 5000.0
    pet_path.unlink()
    atomic_write_nifti(bq[None], pet.affine, pet_path, dtype="float32")
    with pytest.raises(Exception) as error:
        train(tmp_path, dataset_dir=str(data))
    chain = error_chain(error.value)
    assert pet_path.name in chain and "SUV" in chain


@pytest.mark.slow  # multi-process torchrun: semantic_mri's two-process training is the default suite's one
def test_torchrun_two_processes_on_cpu(trained, tmp_path: Path) -> None:
    """multi_gpu_train.yaml: each modality's network in DDP (gloo on CPU), rank-0 checkpoints."""
    root, _ = trained
    (tmp_path / "data").symlink_to(root / "data", target_is_directory=True)
    overrides = {**TRAIN, "max_epochs": 1, "save_interval": 0, "batch_size": 2}
    args = ["--bundle_root", str(tmp_path)]
    for key, value in overrides.items():
        args += [f"--{key}", "None" if value is None else str(value).replace(" ", "")]
    files = "[" + ",".join(f"'{f}'" for f in config_files(BUNDLE, "train", "multi_gpu_train")) + "]"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541"]
    result = subprocess.run(
        [*torchrun, "-m", "monai.bundle", "run", "--config_file", files, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    content = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert not any(".module." in key for key in content["network"])  # unwrapped
    assert content["trainer"]["iteration"] == content["trainer"]["epoch_length"]  # one epoch
    load_plain_weights(tmp_path / "models" / "model.pt", BUNDLE, ("inference",), **SHARED)  # loadable by inference


@pytest.mark.slow  # whole release runs: semantic_mri's run inside its own folder is the default suite's one
def test_release_samples_from_its_own_folder(trained, tmp_path: Path) -> None:
    """The release zip, unpacked elsewhere, samples on the tiny checkpoint (bundle_helpers.check_release_samples)."""
    root, _ = trained
    check_release_samples(BUNDLE, root, tmp_path, SHARED, ["--num_samples", "1", "--seed", "0"])


def test_seeded_inference_writes_the_phantoms_it_seeds_from(trained, tmp_path: Path) -> None:
    """A bundle folder with weights but no data (e.g. an unpacked release): seeding writes the training phantoms."""
    root, _ = trained
    fresh = tmp_path / "fresh"
    (fresh / "models").mkdir(parents=True)
    shutil.copy2(root / "models" / "model.pt", fresh / "models" / "model.pt")
    phantoms = {"phantom_cases": TRAIN["phantom_cases"], "phantom_size": TRAIN["phantom_size"]}
    written = infer(fresh, tmp_path / "samples", names=("inference", "seeded"), num_inference_steps=5, **phantoms)
    assert len(list((fresh / "data" / "phantoms_head_neck" / "imagesTr").glob("*__PT.nii.gz"))) == 4
    assert len(written) == 2


def test_utility_quick_run_reports_and_refuses_seeding_from_the_test_split(trained, tmp_path: Path) -> None:
    root, _ = trained
    settings = {
        **SHARED,
        "bundle_root": str(root),
        "output_dir": str(tmp_path / "utility"),
        "phantom_cases": 4,
        "phantom_size": 32,
        "quick": True,
    }
    results = run_workflow(BUNDLE, ("inference", "utility"), None, **settings)[0]
    assert set(results["arms"]) == {"real", "real+aug", "syn4", "real+syn4", "real+syn4+aug", "real_all", "ceiling"}
    assert results["cases"]["test"] and not set(results["cases"]["test"]) & set(results["cases"]["generator"])
    seeding = set(results["cases"]["seeding"])  # the paper's noise seeding, from the training split only
    assert seeding and seeding <= set(results["cases"]["generator"]) and not seeding & set(results["cases"]["test"])
    assert len(list((tmp_path / "utility" / "synthetic" / "labelsTr").glob("*.nii.gz"))) == 4
    # the real_all arm's U-Net (CT + PET in) serves evaluate.yaml + fid_project.yaml: the metrics read the pair
    evaluation = {
        **SHARED,
        "bundle_root": str(root),
        "sample_dir": str(tmp_path / "utility" / "synthetic"),
        "eval_dir": str(tmp_path / "eval"),
        "fid_project_weights": str(tmp_path / "utility" / "feature_network.pt"),
        "phantom_cases": 4,
        "phantom_size": 32,
    }
    found = run_workflow(BUNDLE, ("evaluate", "fid_project"), None, **evaluation)[0]["distribution"]
    name = "FID (project-trained 2D encoder: paired_petct utility U-Net (real_all arm, CT + PET), encoder level 3)"
    assert list(found) == ["ct+pet"] and isinstance(found["ct+pet"][name], float) and found["ct+pet"][name] >= 0
    assert "FID (paper, Inception-v3 pool)" not in found["ct+pet"]
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ("inference", "utility"), None, **{**settings, "seed_fraction": 0.8, "seed_split": "test"})
    assert "the test set is not held out" in error_chain(error.value)
    assert "also seeding cases" in error_chain(error.value)


def test_fid_project_overlay_uses_the_utility_segmenter() -> None:
    """fid_project.yaml rebuilds the network utility.yaml trains (the weights must fit it) and reads CT + PET."""
    utility_def = config_parser(BUNDLE, ("inference", "utility"))
    overlay = config_parser(BUNDLE, ("evaluate", "fid_project"))
    for key in ("_target_", "spatial_dims", "in_channels", "out_channels", "strides", "num_res_units"):
        assert overlay[f"fid_project_network_def#{key}"] == utility_def[f"segmenter_def#{key}"], key
    assert overlay["segmenter_channels"] == utility_def["segmenter_channels"]
    assert overlay["distribution_sets"] == ["ct+pet"]
    with pytest.raises(ValueError, match="config key 'distribution_sets'.*'mr'"):
        PairedEvaluation("unused", [], "unused", distribution_sets=["ct", "mr"])
