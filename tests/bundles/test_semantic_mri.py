"""End-to-end tests of the semantic_mri bundle through its configs (in-process ``monai.bundle`` workflows,
tiny sizes)."""

from __future__ import annotations

import json
import os
import re
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
    release_and_unpack,
    run_released,
    run_torchrun,
    run_workflow,
)
from ignite.engine import Events

from common.checkpoint import file_hash
from common.io import atomic_write_nifti

BUNDLE = "semantic_mri"
SHARED = {
    "spatial_size": [16, 16, 16],
    "pixdim": [12.0, 12.0, 12.0],
    "network_def#channels": [32, 32],
    "network_def#attention_levels": [False, True],
    "network_def#num_head_channels": 32,
    "network_def#norm_num_groups": 32,
    "num_train_timesteps": 10,
}
TRAIN = {**SHARED, "num_workers": 0, "phantom#n": 4, "max_epochs": 2, "val_interval": 1, "save_interval": 1}


def train(root: Path, names: tuple[str, ...] = ("train",), **overrides) -> object:
    workflow = make_workflow(BUNDLE, names, "train", bundle_root=str(root), **{**TRAIN, **overrides})
    workflow.run()
    return workflow


def infer(root: Path, out: Path, masks, names: tuple[str, ...] = ("inference",), **overrides) -> list[dict]:
    settings = {**SHARED, "bundle_root": str(root), "output_dir": str(out), "masks": masks, **overrides}
    return run_workflow(BUNDLE, names, None, **settings)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("semantic_mri")
    train(root)
    return root


def phantom_masks(root: Path, n: int = 2) -> list[str]:
    return sorted(str(p) for p in (root / "data" / "phantoms_whole_head" / "labelsTr").glob("*.nii.gz"))[:n]


def test_training_writes_phantoms_checkpoints_and_tensorboard(trained: Path) -> None:
    assert len(list((trained / "data" / "phantoms_whole_head" / "imagesTr").glob("*.nii.gz"))) == 4
    models = trained / "models"
    assert sorted(p.name for p in models.glob("*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "model.pt"]
    content = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)  # the training state
    assert {"network", "ema", "optimizer", "lr_scheduler", "trainer"} <= set(content)
    assert content["trainer"]["iteration"] == 2 * content["trainer"]["epoch_length"]
    assert list((trained / "runs").glob("events.out.tfevents.*"))


def test_model_pt_is_the_ema_state_dict_inference_loads(trained: Path) -> None:
    models = trained / "models"
    network = load_plain_weights(models / "model.pt", BUNDLE, ("inference",), **SHARED)
    ema = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)["ema"]
    assert all(torch.equal(v, ema[k]) for k, v in network.state_dict().items())


def test_inference_writes_samples_with_the_mask_affine(trained: Path, tmp_path: Path) -> None:
    masks = phantom_masks(trained)
    written = infer(trained, tmp_path, masks, num_samples=2)
    assert len(written) == 4
    for case in written:
        mask_id = Path(case["label"]).name.split("_sample")[0]
        source = nib.load(str(Path(masks[0]).parent / f"{mask_id}.nii.gz"))
        image, label = nib.load(case["image"][0]), nib.load(case["label"])
        assert image.shape == (16, 16, 16) and image.get_data_dtype() == np.float32
        np.testing.assert_allclose(image.affine, source.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(label.dataobj), np.asarray(source.dataobj))
        assert np.isfinite(image.get_fdata()).all()
    datalist = json.loads((tmp_path / "dataset.json").read_text())
    assert datalist["numTraining"] == 4
    assert (tmp_path / "preview_seed0.png").read_bytes().startswith(b"\x89PNG")


def test_same_seed_same_samples(trained: Path, tmp_path: Path) -> None:
    masks = phantom_masks(trained, 1)
    runs = {name: infer(trained, tmp_path / name, masks, seed=seed) for name, seed in (("a", 3), ("b", 3), ("c", 4))}
    image = {name: nib.load(cases[0]["image"][0]).get_fdata() for name, cases in runs.items()}
    np.testing.assert_array_equal(image["a"], image["b"])
    assert not np.allclose(image["a"], image["c"])


def test_inference_never_overwrites_another_configuration(trained: Path, tmp_path: Path) -> None:
    masks = phantom_masks(trained, 1)
    first = infer(trained, tmp_path, masks)
    before = Path(first[0]["image"][0]).read_bytes()
    assert infer(trained, tmp_path, masks) == first  # the same run again resumes: nothing left to do
    with pytest.raises(RuntimeError) as error:
        infer(trained, tmp_path, masks, sampler="ddim", num_inference_steps=4)
    cause = error.value.__cause__
    assert isinstance(cause, FileExistsError) and "field 'num_inference_steps' differs" in str(cause)
    assert "never overwritten" in str(cause)
    assert Path(first[0]["image"][0]).read_bytes() == before
    manifest = json.loads((tmp_path / "run_manifest.json").read_text())
    metadata = json.loads((REPO_ROOT / "bundles" / BUNDLE / "configs" / "metadata.json").read_text())
    assert (manifest["bundle"], manifest["version"]) == (metadata["name"], metadata["version"])
    assert manifest["sampler"] == "ddpm"
    assert manifest["checkpoints"]["ckpt_path"]["sha256"] == file_hash(trained / "models" / "model.pt")
    assert list(manifest["masks"]) == [Path(masks[0]).name.split(".")[0]]
    infer(trained, tmp_path, masks, sampler="ddim", num_inference_steps=4, overwrite=True)
    assert Path(first[0]["image"][0]).read_bytes() != before


@pytest.mark.slow  # multi-process torchrun: semantic_mri's two-process training is the default suite's one
def test_torchrun_sampling_matches_one_process_and_resumes(trained: Path, tmp_path: Path) -> None:
    """multi_gpu_inference.yaml on 2 CPU processes (gloo): the same arrays as one process, file for file; a run that
    fails after its first samples resumes to the same files."""
    masks = phantom_masks(trained, 2)
    fast = {"sampler": "ddim", "num_inference_steps": 3, "num_samples": 3}
    single = infer(trained, tmp_path / "one", masks, **fast)
    args = ["--bundle_root", str(trained), "--output_dir", str(tmp_path / "two")]
    args += cli_args({"masks": masks, **SHARED, **fast})
    result = run_torchrun(BUNDLE, ("inference", "multi_gpu_inference"), args, port=29561)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "rank 1/2: 3 of 6 pending batch(es)" in log and "overall: " in log
    assert_same_samples(tmp_path / "one", tmp_path / "two", count=12)
    listed = json.loads((tmp_path / "two" / "dataset.json").read_text())["training"]
    assert [e["case_id"] for e in listed] == [e["case_id"] for e in single]

    workflow = make_workflow(
        BUNDLE, ("inference",), None, **SHARED, **fast, bundle_root=str(trained), output_dir=str(tmp_path / "cut"),
        masks=masks,
    )  # fmt: skip
    sampling = workflow.parser.get_parsed_content("sampling")
    original, calls = sampling.sample_item, []

    def fail_after_two(*args):
        if len(calls) == 2:
            raise RuntimeError("simulated kill")
        calls.append(args)
        return original(*args)

    sampling.sample_item = fail_after_two
    with pytest.raises(RuntimeError, match="simulated kill"):
        sampling.run()
    assert len(list((tmp_path / "cut").rglob("*.nii.gz"))) == 4 and not (tmp_path / "cut" / "dataset.json").exists()
    args[args.index("--output_dir") + 1] = str(tmp_path / "cut")
    resumed = run_torchrun(BUNDLE, ("inference", "multi_gpu_inference"), args, port=29563)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "resuming: 2 sample(s) of" in log and "rank 1/2: 2 of 4 pending batch(es)" in log
    assert_same_samples(tmp_path / "one", tmp_path / "cut", count=12)
    assert json.loads((tmp_path / "cut" / "dataset.json").read_text())["numTraining"] == 6


@pytest.mark.parametrize("sampler", ["dpm_solver", "ddim", "respaced_ddpm"])
def test_fast_samplers_use_the_same_weights(trained: Path, tmp_path: Path, sampler: str) -> None:
    written = infer(trained, tmp_path, phantom_masks(trained, 1), sampler=sampler, num_inference_steps=4)
    assert np.isfinite(nib.load(written[0]["image"][0]).get_fdata()).all()


def test_paper_sampler_refuses_respacing(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as error:
        infer(trained, tmp_path, phantom_masks(trained, 1), num_inference_steps=4)
    assert "respaced_ddpm" in str(error.value.__cause__)


def test_evaluate_writes_report(trained: Path, tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    infer(trained, samples, phantom_masks(trained, 2), num_samples=2)
    overrides = {
        "bundle_root": str(trained),
        "sample_dir": str(samples),
        "output_dir": str(tmp_path / "eval"),
        "spatial_size": [16, 16, 16],
        "pixdim": [12.0, 12.0, 12.0],
        "lesion_rule": {"threshold": 0.35, "labels": [2]},
    }
    results = run_workflow(BUNDLE, ("evaluate",), None, **overrides)[0]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    for key in (
        "mse_mean",
        "mmd",
        "ms_ssim_to_real_mean",
        "ms_ssim_diversity_fake",
        "ms_ssim_diversity_real",
        "lesion_dice_mean",
    ):
        assert key in report and key in results
    assert report["n_pairs"] == 4 and report["n_real_cases"] == 2
    assert "| mse_mean |" in (tmp_path / "eval" / "report.md").read_text()
    assert "need >= 3 real" in report["distribution"]["t1c"]["not computed"]  # 2 real cases: no FDS/DS/FID number


def utility(root: Path, out: Path, **overrides) -> dict:
    """The utility overlay in quick mode on the tiny trained generator (4 training phantoms, 3 test phantoms)."""
    settings = {
        **SHARED,
        "bundle_root": str(root),
        "output_dir": str(out),
        "phantom_cases": 4,
        "quick": True,
        **overrides,
    }
    return run_workflow(BUNDLE, ("inference", "utility"), None, **settings)[0]


def test_utility_quick_run_reports_and_repeats_exactly(trained: Path, tmp_path: Path) -> None:
    first = utility(trained, tmp_path / "a")
    assert set(first["arms"]) == {"real", "real+aug", "syn2", "real+syn2", "real+syn2+aug", "real_all", "ceiling"}
    assert first["cases"]["test"] == ["head_004", "head_005", "head_006"]
    assert not set(first["cases"]["test"]) & set(first["cases"]["generator"])
    assert first["arms"]["real+syn2"]["real_cases"] == 2 and first["arms"]["syn2"]["synthetic"] == 2
    report = (tmp_path / "a" / "report.md").read_text()
    assert "fewer than the 5 needed for a p-value" in report and "Harness sanity" in report
    assert (tmp_path / "a" / "utility_dice.png").is_file()
    assert len(list((tmp_path / "a" / "synthetic" / "imagesTr").glob("*.nii.gz"))) == 3  # one per training mask
    second = utility(trained, tmp_path / "b")
    for name, arm in first["arms"].items():  # the same numbers but the training time
        assert {k: v for k, v in arm.items() if k != "seconds"} == {
            k: v for k, v in second["arms"][name].items() if k != "seconds"
        }
    # the real_all arm's U-Net is kept and serves evaluate.yaml + fid_project.yaml as a project-trained FID network
    weights = tmp_path / "a" / "feature_network.pt"
    assert weights.is_file()
    samples = tmp_path / "samples"
    infer(trained, samples, phantom_masks(trained, 3), num_samples=1)
    overrides = {
        "spatial_size": SHARED["spatial_size"],
        "pixdim": SHARED["pixdim"],
        "bundle_root": str(trained),
        "sample_dir": str(samples),
        "output_dir": str(tmp_path / "eval"),
    }
    results = run_workflow(BUNDLE, ("evaluate", "fid_project"), None, fid_project_weights=str(weights), **overrides)[0]
    found = results["distribution"]["t1c"]
    name = "FID (project-trained 3D encoder: semantic_mri utility U-Net (real_all arm), encoder level 3)"
    assert isinstance(found[name], float) and found[name] >= 0 and "3D-FID (paper)" not in found
    weights.unlink()
    with pytest.raises(RuntimeError) as error:
        run_workflow(BUNDLE, ("evaluate", "fid_project"), None, fid_project_weights=str(weights), **overrides)
    assert "fid_project_weights" in error_chain(error.value)


def test_fid_project_overlay_uses_the_utility_segmenter() -> None:
    """fid_project.yaml rebuilds the network utility.yaml trains (the weights must fit it)."""
    utility_def = config_parser(BUNDLE, ("inference", "utility"))
    overlay = config_parser(BUNDLE, ("evaluate", "fid_project"))
    for key in ("_target_", "spatial_dims", "out_channels", "strides", "num_res_units"):
        assert overlay[f"fid_project_network_def#{key}"] == utility_def[f"segmenter_def#{key}"], key
    assert overlay["segmenter_channels"] == utility_def["segmenter_channels"]
    assert overlay["fid_project_network_def#in_channels"] == 1  # one modality at a time, as the metrics read them
    assert utility_def.get_parsed_content("segmenter_def#in_channels") == 1  # the default: t1c alone


def test_utility_refuses_a_test_set_the_generator_saw(trained: Path, tmp_path: Path) -> None:
    seen = trained / "data" / "phantoms_whole_head"
    with pytest.raises(Exception) as error:
        utility(trained, tmp_path, test_dir=str(seen), synthetic_multiples=[])
    assert re.search(r"ValueError: the test set is not held out: case\(s\) \['head_0\d\d'", error_chain(error.value))
    assert "also generator training cases" in error_chain(error.value)


def test_utility_with_real_data_needs_a_test_dir(trained: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    shutil.copytree(trained / "data" / "phantoms_whole_head", real)
    with pytest.raises(Exception) as error:
        utility(trained, tmp_path / "out", dataset_dir=str(real), synthetic_multiples=[])
    assert "ValueError: config key 'test_dir'" in error_chain(error.value)


def test_resume_after_an_interrupted_run(tmp_path: Path) -> None:
    train(tmp_path)
    models = tmp_path / "models"
    workflow = make_workflow(BUNDLE, ("train",), "train", bundle_root=str(tmp_path), **{**TRAIN, "max_epochs": 4})
    trainer = workflow.parser.get_parsed_content("train#trainer")

    def crash(engine) -> None:
        raise RuntimeError("simulated failure")

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2 * trainer.state.epoch_length + 1), crash)
    with pytest.raises(RuntimeError) as error:
        workflow.run()
    assert "simulated failure" in str(error.value.__cause__)
    saved = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)
    weights = torch.load(models / "model.pt", weights_only=True)  # those of the failed run's last checkpoint
    assert all(torch.equal(v, weights[k]) for k, v in saved["ema"].items())

    resumed = make_workflow(
        BUNDLE, ("train",), "train", bundle_root=str(tmp_path), **{**TRAIN, "max_epochs": 4, "resume": True}
    )
    trainer = resumed.parser.get_parsed_content("train#trainer")
    started = {}
    trainer.add_event_handler(Events.EPOCH_STARTED(once=3), lambda e: started.update(iteration=e.state.iteration))
    network = resumed.parser.get_parsed_content("network")
    resumed.run()
    assert started["iteration"] == 2 * trainer.state.epoch_length  # continued after epoch 2, not from scratch
    assert trainer.state.epoch == 4
    final = torch.load(models / "checkpoint_epoch=4.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 4 * trainer.state.epoch_length
    assert all(torch.equal(v, final["ema"][k]) for k, v in torch.load(models / "model.pt", weights_only=True).items())
    name = next(iter(saved["network"]))
    assert not torch.equal(network.state_dict()[name], saved["network"][name])


def test_resume_rejects_a_checkpoint_of_another_network(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "checkpoint_epoch=2.pt").write_bytes(
        (trained / "models" / "checkpoint_epoch=2.pt").read_bytes()
    )
    with pytest.raises(RuntimeError) as error:
        train(tmp_path, resume=True, **{"network_def#channels": [32, 64]})
    assert re.search(r"ValueError: checkpoint .* layer '.*' has shape .* in the checkpoint", error_chain(error.value))


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as error:
        infer(tmp_path, tmp_path / "out", [], ckpt_path=str(tmp_path / "none.pt"))
    message = str(error.value.__cause__)
    assert "ckpt_path" in message and "none.pt" in message and "Train first" in message


def test_missing_model_pt_names_the_key_and_the_large_files_entry(tmp_path: Path) -> None:
    (tmp_path / "large_files.yml").write_bytes((REPO_ROOT / "bundles" / BUNDLE / "large_files.yml").read_bytes())
    with pytest.raises(RuntimeError) as error:
        infer(tmp_path, tmp_path / "out", [])
    message = str(error.value.__cause__)
    assert f"config key 'ckpt_path': weight file '{tmp_path / 'models' / 'model.pt'}' does not exist" in message
    assert "large_files.yml' has no entry 'models/model.pt'" in message and "Train first" in message


def test_raw_weights_from_a_training_checkpoint(trained: Path, tmp_path: Path) -> None:
    raw = {"ckpt_path": str(trained / "models" / "checkpoint_epoch=2.pt"), "ckpt_key": "network"}
    written = infer(trained, tmp_path / "raw", phantom_masks(trained, 1), **raw)
    assert np.isfinite(nib.load(written[0]["image"][0]).get_fdata()).all()
    with pytest.raises(RuntimeError) as error:  # model.pt is a plain state dict: it has no entries
        infer(trained, tmp_path / "plain", phantom_masks(trained, 1), ckpt_key="network")
    assert "plain state dict) has no entry 'network'" in error_chain(error.value)


def test_checkpoint_that_does_not_fit_names_the_layer(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as error:
        infer(trained, tmp_path, phantom_masks(trained, 1), **{"network_def#channels": [32, 64]})
    assert "does not fit the network: layer" in str(error.value.__cause__)


def test_mask_with_unexpected_labels_is_rejected(trained: Path, tmp_path: Path) -> None:
    source = nib.load(phantom_masks(trained, 1)[0])
    labels = np.asarray(source.dataobj).copy()
    labels[0, 0, 0] = 7
    bad = atomic_write_nifti(labels[None], source.affine, tmp_path / "drawn.nii.gz")
    with pytest.raises(RuntimeError) as error:
        infer(trained, tmp_path / "out", [str(bad)])
    assert re.search(r"drawn\.nii\.gz': label values \[7\] are not allowed", error_chain(error.value))


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_user_dataset_dir_missing_or_empty(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data_in"
    if kind == "empty":
        data.mkdir()
    expected = "does not exist" if kind == "missing" else "no usable cases"
    with pytest.raises(RuntimeError) as error:
        train(tmp_path / "bundle", dataset_dir=str(data))
    assert "dataset_dir" in str(error.value.__cause__) and expected in str(error.value.__cause__)
    assert not data.exists() or not any(data.iterdir())  # never filled with phantoms


def test_nan_voxels_are_rejected_naming_the_file(trained: Path, tmp_path: Path) -> None:
    data = tmp_path / "data_in"
    for folder in ("imagesTr", "labelsTr"):
        (data / folder).mkdir(parents=True)
    phantoms = trained / "data" / "phantoms_whole_head"
    for case in ("head_000", "head_001"):
        image = nib.load(str(phantoms / "imagesTr" / f"{case}.nii.gz"))
        array = image.get_fdata(dtype=np.float32)
        if case == "head_001":
            array[3, 3, 3] = np.nan
        atomic_write_nifti(array[None], image.affine, data / "imagesTr" / f"{case}.nii.gz")
        (data / "labelsTr" / f"{case}.nii.gz").write_bytes((phantoms / "labelsTr" / f"{case}.nii.gz").read_bytes())
    with pytest.raises(RuntimeError) as error:
        train(tmp_path / "bundle", dataset_dir=str(data))
    assert re.search(r"head_001\.nii\.gz': 1 NaN/inf voxel", error_chain(error.value))


def test_brats_variant_end_to_end(tmp_path: Path) -> None:
    brats = {**TRAIN, "spatial_size": [16, 16, 12], "max_epochs": 1, "save_interval": 0}
    train(tmp_path, ("train", "brats"), **brats)
    from tools.condition_maps import write_condition_maps

    maps = write_condition_maps(
        config_files(BUNDLE, "train", "brats"), str(tmp_path / "conditions"), bundle_root=str(tmp_path), **brats
    )
    assert set(np.unique(np.asarray(nib.load(str(maps[0])).dataobj))) <= {0, 1, 2, 3, 4}
    settings = {**SHARED, "spatial_size": [16, 16, 12]}
    written = infer(tmp_path, tmp_path / "out", [str(maps[0])], names=("inference", "brats"), **settings)
    case = written[0]
    assert [Path(p).name.split("_sample000_")[1] for p in case["image"]] == [
        f"{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")
    ]
    assert all(nib.load(p).shape == (16, 16, 12) for p in case["image"])
    seg = np.asarray(nib.load(case["label"]).dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4}  # written back in the BraTS convention (ET = 4, brain = 0)


def test_command_line_train_and_sample(tmp_path: Path) -> None:
    """The contract's commands, as a user types them (one subprocess each)."""
    tiny = []
    for key, value in SHARED.items():
        tiny += [f"--{key}", str(value).replace(" ", "")]  # Python literals, as fire parses them
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    common = ["--bundle_root", str(tmp_path)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            config_files(BUNDLE, "train")[0],
            *common,
            *tiny,
            "--num_workers",
            "0",
            "--max_epochs",
            "1",
            "--phantom#n",
            "2",
        ],
        check=True,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
    )
    masks = str(tmp_path / "data" / "phantoms_whole_head" / "labelsTr")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            config_files(BUNDLE, "inference")[0],
            *common,
            *tiny,
            "--num_samples",
            "1",
            "--seed",
            "0",
            "--masks",
            masks,
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "out" / "imagesTr").glob("*.nii.gz"))) == 2


def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    """multi_gpu_train.yaml: DDP with gloo on CPU, DistributedSampler, rank-0 checkpoints."""
    args = ["--bundle_root", str(tmp_path), "--num_workers", "0", "--max_epochs", "2", "--phantom#n", "4"]
    for key, value in SHARED.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    files = "[" + ",".join(f"'{f}'" for f in config_files(BUNDLE, "train", "multi_gpu_train")) + "]"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    result = subprocess.run(
        [*torchrun, "-m", "monai.bundle", "run", "--config_file", files, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    content = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert content["trainer"]["iteration"] == 2 * content["trainer"]["epoch_length"]
    assert content["trainer"]["epoch_length"] == 2  # 3 training cases split over 2 ranks (padded to 2 each)
    load_plain_weights(tmp_path / "models" / "model.pt", BUNDLE, ("inference",), **SHARED)  # unwrapped EMA weights


@pytest.mark.parametrize(
    "inside",
    [
        pytest.param(True, id="inside_the_folder"),
        pytest.param(False, id="outside_with_pythonpath", marks=pytest.mark.slow),
    ],
)
def test_release_samples_from_its_own_folder(trained: Path, tmp_path: Path, inside: bool) -> None:
    """Inside the folder with the default masks (the phantom masks training would write, written on first use);
    from outside with the user's own mask."""
    args = ["--phantom_cases", "1"] if inside else ["--masks", phantom_masks(trained, 1)[0]]
    folder = check_release_samples(
        BUNDLE, trained, tmp_path, SHARED, [*args, "--num_samples", "1", "--seed", "0"], inside
    )
    written = sorted(str(p.relative_to(folder)) for p in (folder / "samples").rglob("*.nii.gz"))
    assert len(written) == 2 and any("imagesTr" in p for p in written)  # the sample and its mask
    assert (folder / "data" / "phantoms_whole_head" / "labelsTr").is_dir() == inside


@pytest.mark.slow  # whole release runs: semantic_mri's run inside its own folder is the default suite's one
def test_release_run_fails_without_a_package_the_code_needs(trained: Path, tmp_path: Path) -> None:
    """The check above can fail: with nibabel missing from the metadata, the released code cannot import it."""
    folder = release_and_unpack(BUNDLE, trained, tmp_path)
    metadata_path = folder / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    del metadata["required_packages_version"]["nibabel"]
    metadata_path.write_text(json.dumps(metadata))
    args = [arg for key, value in SHARED.items() for arg in (f"--{key}", repr(value))]
    args += ["--masks", phantom_masks(trained, 1)[0], "--num_samples", "1"]
    with pytest.raises(AssertionError, match="nibabel"):
        run_released(folder, "inference.yaml", args, True, tmp_path / "modules.json")


# Paper 001 (Med-DDPM, Dorjsembe et al.): every hyperparameter it states, the config key holding it, its section.
PAPER_TRAIN = {
    "num_train_timesteps": 250,  # III-B "the cosine noise schedule for 250 steps"
    "noise_schedule": "cosine",  # II Eq. 2 (Nichol & Dhariwal)
    "learning_rate": 1.0e-5,  # III-B "a learning rate of 10^-5 for the first 50,000 epochs, and 10^-6 for the last"
    "batch_size": 1,  # III-B "for 100,000 epochs with a batch size of 1"
    "train_iterations": 100000,  # III-B, as optimiser steps (the authors' code: total training steps)
    "modalities": ["t1c"],  # III-A contrast-enhanced T1-weighted whole-head MR
    "label_values": [0, 1, 2],  # II "0 represents the background, 1 ... the head area, and 2 ... the tumor area"
    "condition_labels": [1, 2],  # II one-hot "excluding the background class label 0"
    "spatial_size": [128, 128, 128],  # III-A "resized to 128x128x128"
    "pixdim": [1.5, 1.5, 1.5],  # III-A "with a slice thickness of 1.5x1.5x1.5mm"
}


def test_base_configs_hold_the_papers_settings(tmp_path: Path) -> None:
    """train.yaml and inference.yaml, no overlay, loaded as monai.bundle does: the values Med-DDPM states."""
    train_config = config_parser(BUNDLE, ("train",), bundle_root=str(tmp_path))
    for key, value in PAPER_TRAIN.items():
        assert train_config.get_parsed_content(key) == value, key
    assert train_config["loss"]["_target_"] == "torch.nn.L1Loss"  # II-A Eq. 4, L1 on the noise
    assert train_config["optimizer"]["_target_"] == "torch.optim.Adam"  # III-B "We used the Adam optimizer"
    assert train_config["lr_scheduler"]["gamma"] == 0.1  # 1e-5 -> 1e-6 ...
    train_config.update({"datalist": "${'train': [None] * 1292}"})  # the paper's 1292 training images
    assert train_config.get_parsed_content("max_epochs") == 77  # 100,000 steps of batch 1
    assert train_config.get_parsed_content("lr_drop_epoch") == 38  # ... for the second half
    intensity = train_config["final_transforms"][0]  # III-A "normalized the image intensities to the range of [-1,1]"
    assert (intensity["b_min"], intensity["b_max"]) == (-1.0, 1.0)
    network = train_config["network_def"]  # II: 3D U-Net, mask concatenated to x_t (Fig. 1)
    assert network["spatial_dims"] == 3 and train_config.get_parsed_content("network_def#in_channels") == 3
    assert train_config.get_parsed_content("unet_channels")[0] == 64  # III-B "64 channels in the first layer"
    levels = train_config.get_parsed_content("unet_attention_levels")  # III-B "an attention head at resolution 16"
    assert [128 // 2**i for i, on in enumerate(levels) if on] == [16]
    # II Eq. 2 with s = 0.008 (Nichol & Dhariwal): alpha_bar_t = f(t) / f(0)
    scheduler = train_config.get_parsed_content("noise_scheduler")
    t = np.arange(1, 250)  # the last step's beta is clipped at 0.999, as in the reference
    f = np.cos((np.concatenate([[0], t]) / 250 + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(scheduler.alphas_cumprod[:249].numpy(), f[1:] / f[0], rtol=1e-4, atol=1e-7)
    inference = config_parser(BUNDLE, ("inference",), bundle_root=str(tmp_path))
    for key in ("num_train_timesteps", "noise_schedule", "modalities", "condition_labels", "spatial_size", "pixdim"):
        assert inference.get_parsed_content(key) == PAPER_TRAIN[key], key
    assert inference.get_parsed_content("sampler") == "ddpm"  # Algorithm 2: all T steps
    assert inference.get_parsed_content("num_inference_steps") == 250
    assert inference["noise_scheduler"]["variance_type"] == "fixed_large"  # Eq. 3 "sigma_t = sqrt(beta_t)"
    brats = config_parser(BUNDLE, ("train", "brats"), bundle_root=str(tmp_path))  # III-F
    assert brats.get_parsed_content("modalities") == ["t1", "t1ce", "t2", "flair"]
    assert brats.get_parsed_content("condition_labels") == [1, 2, 3, 4]  # 4 -> 3, brain = 4, background dropped
    assert brats.get_parsed_content("spatial_size") == [192, 192, 144]  # "cropping and padding to 192x192x144"
    assert brats.get_parsed_content("train_iterations") == 200000  # "except we employed 200,000 epochs"
