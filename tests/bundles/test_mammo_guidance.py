"""End-to-end tests of the mammo_guidance bundle (paper 003) through its configs, in-process, on tiny phantoms."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import (
    assert_same_samples,
    check_release_samples,
    cli_args,
    config_parser,
    error_chain,
    load_plain_weights,
    make_workflow,
    run_released,
    run_torchrun,
    run_workflow,
)
from ignite.engine import Events

from common.io import atomic_write_nifti
from common.transforms.pathology import edge_fade_weight

BUNDLE = "mammo_guidance"
SHARED = {
    "spatial_size": [32, 32],
    "patch_size": 8,
    "network_def#channels": [16, 16],
    "network_def#attention_levels": [False, False],
    "network_def#num_head_channels": 16,
    "network_def#norm_num_groups": 8,
    "network_def#num_res_blocks": 1,
    "num_train_timesteps": 10,
    "anatomy_factor": 4,
    "pathology_stop": 2,
    "phantom_cases": 8,
}
TRAIN = {**SHARED, "num_workers": 0, "max_epochs": 2, "val_interval": 1, "save_interval": 1, "batch_size": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mammo_guidance")
    make_workflow(BUNDLE, ("train",), "train", bundle_root=str(root), **TRAIN).run()
    return root


def infer(root: Path, out: Path, **overrides) -> list[dict]:
    settings = {**SHARED, "bundle_root": str(root), "output_dir": str(out), "num_references": 1, **overrides}
    return run_workflow(BUNDLE, ("inference",), None, **settings)[0]


def test_train_infer_evaluate_on_phantoms(trained: Path, tmp_path: Path) -> None:
    data = trained / "data" / "phantoms_mammography"
    content = json.loads((data / "dataset.json").read_text())
    assert content["numTraining"] == 8 and len(content["patches"]) == 6
    patch_kinds = {Path(p["image"]).name: p["lesion"] for p in content["patches"]}
    assert list(patch_kinds.values()) == ["mass", "calcification"] * 3  # the INbreast stand-in: both lesion kinds
    assert sorted(p.name for p in (trained / "models").glob("*.pt"))[-1] == "model.pt"
    written = infer(trained, tmp_path / "samples", num_samples=2, num_references=2)
    assert len(written) == 4
    for entry in written:
        image, label = nib.load(entry["image"]), nib.load(entry["label"])
        assert image.shape == (32, 32) and label.get_data_dtype() == np.uint8
        pixels = image.get_fdata()
        assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0
        record = json.loads(Path(entry["provenance"]).read_text())
        pathology = record["conditions"]["pathology"]
        assert record["cancer"] == entry["cancer"] == 1 and record["conditions"]["anatomy"]["factor"] == 4
        # the placed patch's kind travels into the provenance record and the dataset entry
        assert record["lesion"] == pathology["lesion"] == entry["lesion"] == patch_kinds[Path(pathology["patch"]).name]
        assert pathology["factor"] == 2 and pathology["stop"] == 2 and 0.975 <= pathology["quantile"] <= 0.995
        mask = np.asarray(label.dataobj) > 0
        rows, cols = np.nonzero(mask)
        (top, left), (height, width) = pathology["corner"], pathology["patch_size"]
        assert mask.any() and top <= rows.min() and rows.max() < top + height
        assert left <= cols.min() and cols.max() < left + width
        breast = np.asarray(nib.load(record["anatomy_reference_label"]).dataobj) == 1
        assert breast[mask].all()  # the placed lesion lies inside the reference's breast
    datalist = json.loads((tmp_path / "samples" / "dataset.json").read_text())
    assert datalist["numTraining"] == 4 and all("provenance" in e for e in datalist["training"])
    assert (tmp_path / "samples" / "preview_seed0.png").read_bytes().startswith(b"\x89PNG")
    settings = {"bundle_root": str(trained), "sample_dir": str(tmp_path / "samples"), "anatomy_factor": 4}
    results = run_workflow(BUNDLE, ("evaluate",), None, output_dir=str(tmp_path / "eval"), **settings)[0]
    assert results["samples"] == 4 and results["positives (cancer flag)"] == 4
    kinds = [json.loads(Path(e["provenance"]).read_text())["lesion"] for e in written]
    masses = kinds.count("mass")
    assert results["summary"]["low_pass_psnr"]["n"] == 4 and results["summary"]["lesion_dice"]["n"] == masses
    assert {k: v["samples"] for k, v in results["by_lesion_kind"].items()} == {k: kinds.count(k) for k in set(kinds)}
    if "calcification" in kinds:  # not read back by the one-blob rule
        assert results["by_lesion_kind"]["calcification"]["lesion_dice"] == "not read back"
    assert (tmp_path / "eval" / "report.md").is_file()
    assert "got 2 real and 4 synthetic" in results["distribution"]["not computed"]  # 2 references: no statistic
    infer(trained, tmp_path / "three", num_samples=1, num_references=3)
    settings["sample_dir"] = str(tmp_path / "three")
    found = run_workflow(BUNDLE, ("evaluate",), None, output_dir=str(tmp_path / "eval3"), **settings)[0]
    assert found["distribution_sets"] == "3 samples vs their 3 anatomy references"
    assert np.isfinite(found["distribution"]["FDS (t-SNE of the images, KL real || synthetic)"])
    assert np.isfinite(found["distribution"]["DS (nearest-SSIM histograms, KL real || synthetic)"])
    assert "not computed" in found["distribution"]["FID"]  # fid_network: null, no paper network file here


def test_same_seed_same_samples_and_unguided_baseline(trained: Path, tmp_path: Path) -> None:
    runs = {name: infer(trained, tmp_path / name, seed=seed) for name, seed in (("a", 3), ("b", 3), ("c", 4))}
    image = {name: nib.load(cases[0]["image"]).get_fdata() for name, cases in runs.items()}
    np.testing.assert_array_equal(image["a"], image["b"])
    assert not np.allclose(image["a"], image["c"])
    unguided = infer(trained, tmp_path / "unguided", guided=False)
    record = json.loads(Path(unguided[0]["provenance"]).read_text())
    assert record["conditions"] == {} and record["cancer"] == 0
    assert not np.asarray(nib.load(unguided[0]["label"]).dataobj).any()


def utility(root: Path, out: Path, **overrides) -> dict:
    """The classification utility overlay in quick mode on the tiny trained generator (8 phantoms, 20 test images)."""
    settings = {
        **SHARED,
        "bundle_root": str(root),
        "output_dir": str(out),
        "quick": True,
        "real_count": 4,
        "positive_fraction": 0.0,  # the 8 tiny phantoms hold one positive, maybe in the validation split
        "f1_threshold": 0.5,  # so no tuned F1 threshold either (it needs 2 positives: one trains, one validates)
        "pathology_fraction": 0.5,
        "test_phantom_cases": 20,
        **overrides,
    }
    return run_workflow(BUNDLE, ("inference", "utility"), None, **settings)[0]


def test_utility_classifier_quick_run(trained: Path, tmp_path: Path) -> None:
    results = utility(trained, tmp_path / "a")
    assert list(results["arms"]) == ["real", "real+syn4", "real_all", "ceiling"]
    cases = results["cases"]
    assert cases["test"][0] == "mammo_008" and cases["test_positives"] == 2 and len(cases["shifted"]) == 20
    assert not (set(cases["test"]) | set(cases["shifted"])) & (set(cases["generator"]) | set(cases["seeding"]))
    assert cases["held_out_from"]["pathology_patches"] == 6
    assert results["arms"]["real+syn4"]["metrics"]["auc"]["mean"] is not None
    assert "auc" in results["comparisons"]["vs real (shifted)"]["real+syn4"]
    assert (tmp_path / "a" / "utility_auc.png").is_file() and "## shifted test set" in (
        tmp_path / "a" / "report.md"
    ).read_text()
    records = [json.loads(p.read_text()) for p in (tmp_path / "a" / "synthetic" / "provenance").glob("*.json")]
    assert len(records) >= 4 and {r["cancer"] for r in records} <= {0, 1}


def test_utility_tuned_threshold_needs_a_positive_to_validate_on(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception) as error:  # the config's default f1_threshold: tuned
        utility(trained, tmp_path, f1_threshold="tuned", synthetic_multiples=[])
    found = error_chain(error.value)
    assert re.search(
        r"ValueError: config key 'validation_fraction': the scarce real training images hold 0 positive", found
    )


def test_utility_refuses_a_test_set_the_generator_saw(trained: Path, tmp_path: Path) -> None:
    seen = trained / "data" / "phantoms_mammography"
    with pytest.raises(Exception) as error:
        utility(trained, tmp_path, test_dir=str(seen), synthetic_multiples=[])
    assert re.search(r"ValueError: the test set is not held out: case\(s\) \['mammo_00\d'", error_chain(error.value))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"anatomy_factor": 5}, "config key 'anatomy_factor': the factor 5 must divide the image size \\(32, 32\\)"),
        ({"pathology_stop": 10}, "config key 'pathology_stop'.*\\[0, 10\\), got 10"),
        ({"anatomy_stop": -1}, "config key 'anatomy_stop'.*got -1"),
        ({"patch_position": [0, 0]}, "config key 'patch_position': \\[0, 0\\] puts the lesion outside the breast"),
        ({"guidance_combine": "both"}, "config key 'guidance_combine'.*'both'"),
        ({"patch_fade": "edge"}, "config key 'patch_fade': expected one of \\['minimum', 'reference'\\], got 'edge'"),
        ({"patch_fade": "reference", "patch_edge_sigma_fraction": None}, "config key 'patch_edge_sigma_fraction'"),
        (
            {"patch_fade": "reference", "patch_normalize#edge_sigma_fraction": 0.25},
            "config key 'patch_normalize'.*must not fade it as well",
        ),
    ],
)
def test_bad_guidance_settings_name_the_key(trained: Path, tmp_path: Path, overrides: dict, match: str) -> None:
    with pytest.raises(RuntimeError) as error:
        infer(trained, tmp_path / "out", **overrides)
    assert re.search(match, error_chain(error.value)), error_chain(error.value)


def test_lesion_in_anatomy_overlay_guides_both_conditions_towards_the_patch(trained: Path, tmp_path: Path) -> None:
    """lesion_in_anatomy.yaml: the anatomy reference of a sample with a lesion is the pathology target (the reference
    with the patch blended in by its edge weight), the patch guides to the last step; the base keeps Eq. 4's
    lesion-free anatomy reference and the paper's fade. Both settings travel into the provenance records."""
    settings = {**SHARED, "bundle_root": str(trained), "output_dir": str(tmp_path / "unused"), "num_samples": 2}
    conditions = {}
    overlay = {k: v for k, v in settings.items() if k != "pathology_stop"}  # the overlay's own stop (0) applies
    for name, names, values in (
        ("base", ("inference",), settings),
        ("overlay", ("inference", "lesion_in_anatomy"), overlay),
    ):
        sampling = make_workflow(BUNDLE, names, None, **values).parser.get_parsed_content("sampling")
        item = sampling.prepare(sampling.items()[0])
        plans = [sampling.lesion_plan(item, index) for index in range(2)]
        assert all(plans)
        conditions[name] = (item, plans, sampling.conditions(item, plans), sampling)
    item, plans, (anatomy, pathology), sampling = conditions["overlay"]
    assert sampling.settings["pathology"]["stop"] == 0 and torch.equal(anatomy.reference, pathology.reference)
    reference = item.data["image"]
    for row, plan in enumerate(plans):
        target = pathology.reference[row]
        box = (slice(None), *(slice(c, c + s) for c, s in zip(plan["corner"], plan["patch"].shape[1:])))
        outside = torch.ones_like(target, dtype=torch.bool)
        outside[box] = False
        assert torch.equal(target[outside], reference[outside])  # only the box changes
        fade = edge_fade_weight(plan["patch"].shape[1:], 0.5)
        torch.testing.assert_close(target[box], reference[box] + fade * (plan["patch"] - reference[box]))
    item, plans, (anatomy, pathology), sampling = conditions["base"]
    assert anatomy.reference.shape[0] == 1 and torch.equal(anatomy.reference[0], item.data["image"])
    box = (slice(None), *(slice(c, c + s) for c, s in zip(plans[0]["corner"], plans[0]["patch"].shape[1:])))
    assert torch.equal(pathology.reference[0][box], plans[0]["patch"])  # the faded patch replaces its box
    written = run_workflow(BUNDLE, ("inference", "lesion_in_anatomy"), None, **{**overlay, "num_samples": 1,
                           "output_dir": str(tmp_path / "overlay")})[0]  # fmt: skip
    record = json.loads(Path(written[0]["provenance"]).read_text())
    assert record["patch_fade"] == "reference" and record["anatomy_carries_lesion"] is True
    assert record["conditions"]["pathology"]["stop"] == 0


def test_lung_ct_missing_weights_name_the_overlays_entry(tmp_path: Path) -> None:
    parser = config_parser(BUNDLE, ("inference", "lung_ct"), bundle_root=str(tmp_path), **SHARED)
    with pytest.raises(Exception) as error:
        parser.get_parsed_content("network")
    assert "models/lung_ct/model.pt" in error_chain(error.value) and "lung_ct.yaml" in error_chain(error.value)


def _folder_with(tmp_path: Path, image: np.ndarray, name: str = "imagesTr/case.nii.gz") -> Path:
    folder = tmp_path / "refs"
    atomic_write_nifti(image[None].astype(np.float32), np.eye(4), folder / name)
    return folder


@pytest.mark.parametrize(
    "image, match",
    [
        (np.ones((48, 48)), "config key 'references'.*shape \\(48, 48\\), expected the model grid"),
        (np.full((32, 32), np.nan), "config key 'references'.*NaN"),
    ],
    ids=["other_size", "nan"],
)
def test_bad_references_name_the_key(trained: Path, tmp_path: Path, image: np.ndarray, match: str) -> None:
    folder = _folder_with(tmp_path, image)
    patches = trained / "data" / "phantoms_mammography"
    with pytest.raises(RuntimeError) as error:
        infer(trained, tmp_path / "out", dataset_dir=str(folder), patch_dir=str(patches))
    assert re.search(match, error_chain(error.value)), error_chain(error.value)


def test_patch_larger_than_the_image_is_refused(trained: Path, tmp_path: Path) -> None:
    folder = tmp_path / "patches"
    atomic_write_nifti(np.ones((1, 40, 40), np.float32), np.eye(4), folder / "patches" / "patch_000.nii.gz")
    atomic_write_nifti(np.ones((1, 40, 40), np.uint8), np.eye(4), folder / "patches" / "patch_000_mask.nii.gz")
    with pytest.raises(RuntimeError) as error:
        infer(trained, tmp_path / "out", patch_dir=str(folder))
    assert "config key 'patch_size'" in error_chain(error.value)


def test_missing_dataset_dir_is_an_error(tmp_path: Path) -> None:
    parser = config_parser(BUNDLE, ("train",), bundle_root=str(tmp_path), dataset_dir=str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeError) as error:
        parser.get_parsed_content("datalist")
    assert "config key 'dataset_dir'" in error_chain(error.value) and "does not exist" in error_chain(error.value)


def test_base_configs_hold_the_papers_settings() -> None:
    parser = config_parser(BUNDLE, ("inference",))
    assert (
        parser["patch_quantile_range"] == [0.975, 0.995] and parser["noise_scheduler"]["variance_type"] == "fixed_large"
    )
    assert parser["guidance_combine"] == "sum" and parser["sampler"] == "ddpm"  # Eq. 4 literally, Eq. 2's sampler
    assert config_parser(BUNDLE, ("train",))["loss"]["_target_"] == "torch.nn.MSELoss"  # Eq. 1
    lung = config_parser(BUNDLE, ("inference", "lung_ct"))
    assert lung["phantom_kind"] == "thorax_ct_slices" and lung["breast_labels"] == [1]


def _model(settings: dict) -> dict:
    """The network overrides of ``settings`` (what inference.yaml needs to build the tiny denoiser)."""
    return {k: v for k, v in settings.items() if k.startswith("network_def#")}


def _train_cases(root: Path) -> int:
    parser = config_parser(BUNDLE, ("train",), bundle_root=str(root), **SHARED)
    return len(parser.get_parsed_content("datalist")["train"])


@pytest.mark.slow  # resume: semantic_mri's interrupted run is the default suite's representative
def test_resume_continues_from_the_newest_checkpoint(trained: Path, tmp_path: Path) -> None:
    """Given the checkpoints of epochs 1 and 2 and resume=true, a run to 3 epochs restores epoch 2's network, EMA,
    optimiser and engine state and trains epoch 3 only."""
    (tmp_path / "models").mkdir()
    (tmp_path / "data").symlink_to(trained / "data", target_is_directory=True)
    for epoch in (1, 2):
        name = f"checkpoint_epoch={epoch}.pt"
        shutil.copy2(trained / "models" / name, tmp_path / "models" / name)
    newest = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    workflow = make_workflow(
        BUNDLE, ("train",), "train", bundle_root=str(tmp_path), **{**TRAIN, "max_epochs": 3, "resume": True}
    )
    trainer = workflow.parser.get_parsed_content("train#trainer")
    network = workflow.parser.get_parsed_content("network")
    ema = workflow.parser.get_parsed_content("ema").ema_model
    optimizer = workflow.parser.get_parsed_content("optimizer")
    started = {}

    def record(engine) -> None:
        if started:
            return
        started.update(
            iteration=engine.state.iteration,
            weights={k: v.clone() for k, v in network.state_dict().items()},
            ema={k: v.clone() for k, v in ema.state_dict().items()},
            steps=[float(s["step"]) for s in optimizer.state_dict()["state"].values()],
        )

    trainer.add_event_handler(Events.EPOCH_STARTED, record)  # the first epoch this run starts
    workflow.run()
    length = trainer.state.epoch_length
    assert started["iteration"] == 2 * length  # the first epoch run is the third: continued, not restarted
    assert all(torch.equal(started["weights"][k], v) for k, v in newest["network"].items())
    assert all(torch.equal(started["ema"][k], v) for k, v in newest["ema"].items())
    assert started["steps"] and set(started["steps"]) == {2.0 * length}  # AdamW's step count came with it
    final = torch.load(tmp_path / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 3 * length
    assert not all(torch.equal(final["network"][k], v) for k, v in newest["network"].items())  # it trained on
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(v, final["ema"][k]) for k, v in model.items())


@pytest.mark.slow  # multi-process torchrun: semantic_mri's two-process training is the default suite's one
def test_torchrun_two_processes_on_cpu(trained: Path, tmp_path: Path) -> None:
    """multi_gpu_train.yaml: DDP with gloo on 2 CPU processes, DistributedSampler, rank-0 checkpoints of unwrapped
    weights; multi_gpu_inference.yaml: the batches dealt to 2 processes write every sample of one process once."""
    (tmp_path / "data").symlink_to(trained / "data", target_is_directory=True)
    overrides = {**TRAIN, "max_epochs": 1, "save_interval": 0, "batch_size": 2}
    args = ["--bundle_root", str(tmp_path), *cli_args(overrides)]
    result = run_torchrun(BUNDLE, ("train", "multi_gpu_train"), args, 29581)
    assert result.returncode == 0, result.stderr[-3000:]
    content = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in content["network"])  # unwrapped
    per_rank = math.ceil(_train_cases(trained) / 2)  # DistributedSampler pads to an even split
    assert content["trainer"]["iteration"] == content["trainer"]["epoch_length"] == math.ceil(per_rank / 2)
    load_plain_weights(tmp_path / "models" / "model.pt", BUNDLE, ("inference",), **_model(SHARED))

    sampling = {"num_references": 2, "num_samples": 3, "sample_batch_size": 2, "seed": 5}
    one = infer(trained, tmp_path / "one", **sampling)
    args = ["--bundle_root", str(trained), "--output_dir", str(tmp_path / "two"), *cli_args({**SHARED, **sampling})]
    result = run_torchrun(BUNDLE, ("inference", "multi_gpu_inference"), args, 29583)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "rank 0/2: 2 of 4 pending batch(es)" in log and "rank 1/2: 2 of 4 pending batch(es)" in log
    # 6 images + 6 lesion masks; one process and two round some float sums differently in the last bit (6e-8
    # measured on the images), so the images agree to 1e-6 rather than bit for bit
    assert_same_samples(tmp_path / "one", tmp_path / "two", count=12, atol=1e-6)
    records = sorted(p.name for p in (tmp_path / "two" / "provenance").glob("*.json"))
    assert records == sorted(Path(e["provenance"]).name for e in one)
    for name in records:
        one_record, two_record = (tmp_path / run / "provenance" / name for run in ("one", "two"))
        assert one_record.read_text() == two_record.read_text()
    listed = json.loads((tmp_path / "two" / "dataset.json").read_text())["training"]
    assert sorted(e["case_id"] for e in listed) == sorted(e["case_id"] for e in one)  # each sample exactly once
    assert len({e["case_id"] for e in listed}) == 6


@pytest.mark.slow  # whole release runs: semantic_mri's run inside its own folder is the default suite's one
def test_release_samples_from_its_own_folder(trained: Path, tmp_path: Path) -> None:
    """The release zip, unpacked elsewhere, samples on the tiny checkpoint with only its listed packages; renamed, the
    copy trains and samples again with bundle_root its own folder (from another folder, absolute config path)."""
    args = ["--num_references", "1", "--num_samples", "1", "--seed", "0"]
    folder = check_release_samples(BUNDLE, trained, tmp_path, SHARED, args)
    written = sorted((folder / "samples" / "imagesTr").glob("*.nii.gz"))
    assert len(written) == 1 and nib.load(written[0]).shape == (32, 32)
    assert (folder / "data" / "phantoms_mammography" / "dataset.json").is_file()  # references written in the copy

    renamed = tmp_path / "elsewhere" / "my_guidance"
    renamed.parent.mkdir()
    folder.rename(renamed)
    shutil.rmtree(renamed / "samples")
    overrides = [arg for key, value in {**TRAIN, "max_epochs": 1}.items() for arg in (f"--{key}", repr(value))]
    run_released(renamed, "train.yaml", overrides, False, tmp_path / "train_modules.json")
    assert (renamed / "models" / "checkpoint_epoch=1.pt").is_file()
    assert any((renamed / "runs").iterdir())  # TensorBoard logs inside the copy
    settings = [arg for key, value in SHARED.items() for arg in (f"--{key}", repr(value))]
    run_released(renamed, "inference.yaml", [*settings, *args], False, tmp_path / "infer_modules.json")
    provenance = [json.loads(p.read_text()) for p in (renamed / "samples" / "provenance").glob("*.json")]
    assert len(provenance) == 1
    assert Path(provenance[0]["anatomy_reference"]).resolve().is_relative_to(renamed.resolve())
    assert not folder.exists()  # nothing recreated the unpacked name


def test_lung_ct_overlay_trains_samples_and_evaluates(tmp_path: Path) -> None:
    """train.yaml + lung_ct.yaml on the thorax slice phantoms, then guided samples with their lesion masks inside the
    lungs and provenance records, then the evaluation report, all through the overlay."""
    root = tmp_path / "bundle"
    make_workflow(BUNDLE, ("train", "lung_ct"), "train", bundle_root=str(root), **{**TRAIN, "max_epochs": 1}).run()
    data = root / "data" / "phantoms_thorax_slices"
    assert json.loads((data / "dataset.json").read_text())["numTraining"] == 8
    assert (root / "models" / "lung_ct" / "model.pt").is_file() and not (root / "models" / "model.pt").exists()
    settings = {**SHARED, "bundle_root": str(root), "num_references": 2, "num_samples": 1}
    out = tmp_path / "samples"
    written = run_workflow(BUNDLE, ("inference", "lung_ct"), None, output_dir=str(out), **settings)[0]
    assert len(written) == 2
    for entry in written:
        assert nib.load(entry["image"]).shape == (32, 32)
        record = json.loads(Path(entry["provenance"]).read_text())
        assert record["cancer"] == 1 and Path(record["anatomy_reference"]).is_relative_to(data)
        mask = np.asarray(nib.load(entry["label"]).dataobj) > 0
        lungs = np.asarray(nib.load(record["anatomy_reference_label"]).dataobj) == 1
        assert mask.any() and lungs[mask].all()  # the tumour patch lies inside the lungs
    evaluation = {"bundle_root": str(root), "sample_dir": str(out), "anatomy_factor": 4, "read_sigma": 3.0}
    results = run_workflow(BUNDLE, ("evaluate", "lung_ct"), None, output_dir=str(tmp_path / "eval"), **evaluation)[0]
    assert results["samples"] == 2 and results["summary"]["low_pass_psnr"]["n"] == 2
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["samples"] == 2 and (tmp_path / "eval" / "report.md").is_file()
