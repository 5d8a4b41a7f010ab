"""End-to-end tests of the latent_ct bundle: both training stages, inference, evaluation and the errors (tiny sizes)."""

from __future__ import annotations

import json
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
from monai.bundle import ConfigParser

from common.io import atomic_write_nifti
from common.networks import SmallConvFeatures

BUNDLE = "latent_ct"
MODEL = {
    "spatial_size": [16, 16, 16],
    "ae_channels": [8, 8],
    "ae_attention_levels": [False, True],
    "ae_num_res_blocks": 1,
    "ae_norm_num_groups": 4,
}
UNET = {
    "unet_channels": [8, 8, 8],
    "unet_num_head_channels": [0, 8, 8],
    "unet_norm_num_groups": 4,
    "unet_num_res_blocks": 1,
    "num_train_timesteps": 20,
}
TRAIN = {
    **MODEL,
    "phantom_size": 24,
    "phantom_cases": 4,
    "disc_channels": 4,
    "disc_num_layers": 2,
    "num_workers": 0,
    "max_epochs": 2,
    "val_interval": 1,
    "save_interval": 1,
    "perceptual_network_name": "random",
    "batch_size": 2,
}
AUTOENCODER = ("train_autoencoder",)
DIFFUSION = ("train_autoencoder", "train_diffusion")


def train(root: Path, names: tuple[str, ...] = AUTOENCODER, **overrides) -> object:
    settings = {**TRAIN, **(UNET if "train_diffusion" in names else {}), **overrides}
    workflow = make_workflow(BUNDLE, names, "train", bundle_root=str(root), **settings)
    workflow.run()
    return workflow


def infer(root: Path, out: Path, **overrides) -> list[dict]:
    settings = {**MODEL, **UNET, "bundle_root": str(root), "output_dir": str(out), "num_samples": 2, **overrides}
    return run_workflow(BUNDLE, ("inference",), None, **settings)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object, object]:
    root = tmp_path_factory.mktemp("latent_ct")
    autoencoder = train(root)
    diffusion = train(root, DIFFUSION)
    return root, autoencoder, diffusion


def test_stage_one_writes_phantoms_checkpoints_and_tensorboard(trained) -> None:
    root, workflow, _ = trained
    phantoms = root / "data" / "phantoms_thorax"
    entries = json.loads((phantoms / "dataset.json").read_text())["training"]
    assert len(entries) == 4 and "GTV-1" in entries[0]["masks"]
    models = sorted(p.name for p in (root / "models").glob("*autoencoder*.pt"))
    assert models == ["autoencoder_checkpoint_epoch=1.pt", "autoencoder_checkpoint_epoch=2.pt", "model_autoencoder.pt"]
    content = torch.load(root / "models" / "autoencoder_checkpoint_epoch=2.pt", weights_only=True)  # training state
    assert {"autoencoder", "discriminator", "g_optimizer", "d_optimizer", "trainer"} <= set(content)
    assert content["trainer"]["iteration"] == 2 * content["trainer"]["epoch_length"]
    # model_autoencoder.pt: the autoencoder's weights, loadable with load_state_dict into inference's autoencoder_def
    autoencoder = load_plain_weights(
        root / "models" / "model_autoencoder.pt", BUNDLE, ("inference",), "autoencoder_def", **MODEL
    )
    assert all(torch.equal(v, content["autoencoder"][k]) for k, v in autoencoder.state_dict().items())
    assert list((root / "runs" / "autoencoder").glob("events.out.tfevents.*"))
    output = workflow.parser.get_parsed_content("train#trainer").state.output
    assert float(output["reconstruction_loss"]) > 0 and float(output["discriminator_loss"]) > 0
    terms = workflow.parser.get_parsed_content("recon_loss").last_terms
    assert set(terms) == {"l1", "kl", "perceptual"}
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    assert metrics["val_recon_l1"] > 0 and np.isfinite(metrics["val_psnr"])


def test_stage_two_stores_the_scale_factor_and_the_training_grid(trained) -> None:
    root, _, workflow = trained
    content = torch.load(root / "models" / "diffusion_checkpoint_epoch=2.pt", weights_only=True)  # training state
    assert {"network", "optimizer", "stats", "trainer"} <= set(content)
    stats = content["stats"]
    assert bool(stats["computed"]) and float(stats["scale_factor"]) > 0
    # the inference files: model.pt (denoiser weights) and latent_scale.json (the same scale factor and grid)
    network = load_plain_weights(root / "models" / "model.pt", BUNDLE, ("inference",), **MODEL, **UNET)
    assert all(torch.equal(v, content["network"][k]) for k, v in network.state_dict().items())
    scale = json.loads((root / "models" / "latent_scale.json").read_text())
    assert scale["computed"] is True and scale["scale_factor"] == pytest.approx(float(stats["scale_factor"]))
    np.testing.assert_allclose(scale["pixdim"], stats["pixdim"].numpy())
    # 1 / std of latents drawn the way training draws them
    dataset = workflow.parser.get_parsed_content("train#dataset")
    latents = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(len(dataset))])
    assert float(latents.std()) == pytest.approx(1.0, rel=0.25)
    # 24 phantom voxels over 350 x 350 x 300 mm (24, 24, 21) resized to 16^3
    np.testing.assert_allclose(stats["pixdim"].numpy(), [350 / 16, 350 / 16, 300 / 16], rtol=0.02)
    assert list((root / "runs" / "diffusion").glob("events.out.tfevents.*"))


def test_diffusion_stage_without_autoencoder_names_the_file_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(Exception) as error:
        train(tmp_path, DIFFUSION, max_epochs=1)
    chain = error_chain(error.value)
    assert "model_autoencoder.pt" in chain and "autoencoder_ckpt" in chain and "train_autoencoder.yaml" in chain


def test_inference_writes_hu_volumes_with_the_training_grid(trained, tmp_path: Path) -> None:
    root, _, _ = trained
    written = infer(root, tmp_path / "out", sampler="dpm_solver", num_inference_steps=5)
    assert [w["case_id"] for w in written] == ["synthetic_seed0_0000", "synthetic_seed0_0001"]
    pixdim = json.loads((root / "models" / "latent_scale.json").read_text())["pixdim"]
    image = nib.load(written[0]["image"])
    assert image.shape == (16, 16, 16)
    np.testing.assert_allclose(image.header.get_zooms(), pixdim, rtol=1e-4)
    values = np.asarray(image.dataobj)
    assert values.min() >= -1000 and values.max() <= 1000 and values.std() > 0
    datalist = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert [e["image"] for e in datalist["training"]] == [f"{w['case_id']}/ct.nii.gz" for w in written]
    assert (tmp_path / "out" / "preview_seed0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inference_needs_only_the_inference_files(trained, tmp_path: Path) -> None:
    root, _, _ = trained
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    for name in ("model_autoencoder.pt", "model.pt", "latent_scale.json"):  # no training-state file
        (bundle / "models" / name).write_bytes((root / "models" / name).read_bytes())
    fast = {"sampler": "dpm_solver", "num_inference_steps": 5, "num_samples": 1}
    alone = infer(bundle, tmp_path / "alone", **fast)
    beside = infer(root, tmp_path / "beside", **fast)
    np.testing.assert_array_equal(*(np.asarray(nib.load(w[0]["image"]).dataobj) for w in (alone, beside)))
    (bundle / "models" / "latent_scale.json").unlink()
    with pytest.raises(Exception) as error:
        infer(bundle, tmp_path / "none", **fast)
    chain = error_chain(error.value)
    assert "config key 'latent_scale_file'" in chain and "'models/latent_scale.json'" in chain


def test_same_seed_same_samples_never_overwrite_and_tiled_decoding_agrees(trained, tmp_path: Path) -> None:
    root, _, _ = trained
    fast = {"sampler": "respaced_ddpm", "num_inference_steps": 5, "num_samples": 1}
    first = infer(root, tmp_path / "a", **fast)
    again = infer(root, tmp_path / "b", **fast)
    tiled = infer(root, tmp_path / "c", tiled_decode=True, decode_roi_size=16, **fast)
    a, b, c = (np.asarray(nib.load(w[0]["image"]).dataobj, dtype=np.float32) for w in (first, again, tiled))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() <= 1  # tiled decoding: the same volume (int16 HU rounding)
    assert infer(root, tmp_path / "a", **fast) == first  # the same run again resumes: nothing left to do
    with pytest.raises(RuntimeError) as error:
        infer(root, tmp_path / "a", **{**fast, "tiled_decode": True})
    assert "field 'tiled_decode' differs (this run: True, found: False)" in error_chain(error.value)


@pytest.mark.slow
def test_torchrun_sampling_matches_one_process(trained, tmp_path: Path) -> None:
    """multi_gpu_inference.yaml (gloo, 2 processes, 3 volumes: one rank gets two) writes the volumes of one process."""
    root, _, _ = trained
    fast = {"sampler": "ddim", "num_inference_steps": 3, "num_samples": 3}
    infer(root, tmp_path / "one", **fast)
    args = ["--bundle_root", str(root), "--output_dir", str(tmp_path / "two"), *cli_args({**MODEL, **UNET, **fast})]
    result = run_torchrun(BUNDLE, ("inference", "multi_gpu_inference"), args, port=29567)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_samples(tmp_path / "one", tmp_path / "two", count=3)
    args[args.index("--num_samples") + 1], args[args.index("--output_dir") + 1] = "1", str(tmp_path / "idle")
    idle = run_torchrun(BUNDLE, ("inference", "multi_gpu_inference"), args, port=29569)  # rank 1 has nothing to do
    assert idle.returncode == 0, idle.stderr[-3000:]
    assert "rank 1/2: 0 of 1 pending batch(es)" in idle.stdout + idle.stderr
    assert json.loads((tmp_path / "idle" / "dataset.json").read_text())["numTraining"] == 1


def test_evaluation_writes_the_report_and_the_tsne_map(trained, tmp_path: Path) -> None:
    root, _, _ = trained
    samples = tmp_path / "samples"
    infer(root, samples, sampler="dpm_solver", num_inference_steps=5, num_samples=3)
    out = tmp_path / "eval"
    settings = {
        **MODEL,
        "bundle_root": str(root),
        "dataset_dir": str(root / "data" / "phantoms_thorax"),
        "perceptual_network_name": "random",
    }
    results = run_workflow(
        BUNDLE, ("evaluate",), None, sample_dir=str(samples), output_dir=str(out), fid_pool=2, **settings
    )[0]
    reconstruction, sampled = results["reconstruction"], results["samples"]
    assert reconstruction["mse_hu2"] > 0 and reconstruction["kl"] > 0 and -1 <= reconstruction["ssim"] <= 1
    assert 0 < reconstruction["l1_hu"] <= reconstruction["mse_hu2"] ** 0.5
    assert np.isfinite(sampled["fid_2d_latent"]) and sampled["samples"] == 3
    assert "diversity_ms_ssim_synthetic" in sampled and "diversity_ssim_real" in sampled
    assert json.loads((out / "report.json").read_text())["samples"]["samples"] == 3
    distribution = sampled["distribution"]  # default: the bundle's autoencoder as the encoder, named as such
    assert np.isfinite(distribution["FID (project-trained 3D encoder: latent_ct autoencoder)"])
    assert not any("paper" in key for key in distribution)
    assert distribution["FDS (t-SNE of the images, KL real || synthetic)"] >= 0
    assert (out / "report.md").is_file() and (out / "tsne_latents.png").is_file()


def test_resume_continues_from_the_newest_checkpoint(trained, tmp_path: Path) -> None:
    root, _, _ = trained
    (tmp_path / "models").mkdir()
    (tmp_path / "data").symlink_to(root / "data", target_is_directory=True)
    checkpoint = torch.load(root / "models" / "autoencoder_checkpoint_epoch=1.pt", weights_only=True)
    torch.save(checkpoint, tmp_path / "models" / "autoencoder_checkpoint_epoch=1.pt")
    workflow = train(tmp_path, max_epochs=2, resume=True)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2
    assert trainer.state.iteration == 2 * trainer.state.epoch_length  # epoch 1 was not repeated


def test_vae_128_is_an_override(tmp_path: Path) -> None:
    settings = {**TRAIN, **UNET, "bundle_root": str(tmp_path), "latent_channels": 128}
    workflow = make_workflow(BUNDLE, DIFFUSION, "train", **{k: v for k, v in settings.items() if k != "phantom_cases"})
    autoencoder = workflow.parser.get_parsed_content("autoencoder_def", instantiate=True)
    unet = workflow.parser.get_parsed_content("network_def", instantiate=True)
    assert autoencoder.latent_channels == 128
    assert unet.in_channels == unet.out_channels == 128


def test_checkpoint_that_does_not_fit_names_the_layer(trained, tmp_path: Path) -> None:
    root, _, _ = trained
    with pytest.raises(Exception) as error:
        infer(root, tmp_path, ae_channels=[16, 16], ae_norm_num_groups=8)
    assert "encoder.blocks.0" in error_chain(error.value)


def test_missing_or_empty_dataset_dir(tmp_path: Path) -> None:
    with pytest.raises(Exception) as error:
        train(tmp_path, dataset_dir=str(tmp_path / "absent"))
    assert "absent" in error_chain(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception) as error:
        train(tmp_path, dataset_dir=str(tmp_path / "empty"))
    assert "empty" in error_chain(error.value)


def test_normalised_data_passed_as_hu_is_refused(trained, tmp_path: Path) -> None:
    root, _, _ = trained
    source = root / "data" / "phantoms_thorax"
    data = tmp_path / "data"
    entries = json.loads((source / "dataset.json").read_text())["training"][:2]
    for entry in entries:
        ct = nib.load(source / entry["image"])
        scaled = np.clip(np.asarray(ct.dataobj, dtype=np.float32) / 1000.0, -1, 1)  # already in [-1, 1]
        atomic_write_nifti(scaled[None], ct.affine, data / entry["image"], dtype="float32")
        for path in entry["masks"].values():
            (data / path).parent.mkdir(parents=True, exist_ok=True)
            (data / path).symlink_to(source / path)
    (data / "dataset.json").write_text(json.dumps({"training": entries}))
    with pytest.raises(Exception) as error:
        train(tmp_path, dataset_dir=str(data))
    chain = error_chain(error.value)
    assert "ct.nii.gz" in chain and "normalised" in chain


@pytest.mark.slow  # multi-process torchrun: semantic_mri's two-process training is the default suite's one
def test_torchrun_two_processes_on_cpu(trained, tmp_path: Path) -> None:
    """multi_gpu_train.yaml on stage 1: autoencoder and discriminator in DDP (gloo on CPU), rank-0 checkpoints."""
    root, _, _ = trained
    (tmp_path / "data").symlink_to(root / "data", target_is_directory=True)
    overrides = {**TRAIN, "max_epochs": 1, "save_interval": 0, "batch_size": 1}
    args = ["--bundle_root", str(tmp_path)]
    for key, value in overrides.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    result = run_torchrun(BUNDLE, ("train_autoencoder", "multi_gpu_train"), args, port=29547)
    assert result.returncode == 0, result.stderr[-3000:]
    content = torch.load(tmp_path / "models" / "autoencoder_checkpoint_epoch=1.pt", weights_only=True)
    assert not any(".module." in key or key.startswith("module.") for key in content["autoencoder"])
    assert content["trainer"]["iteration"] == content["trainer"]["epoch_length"]
    load_plain_weights(tmp_path / "models" / "model_autoencoder.pt", BUNDLE, ("inference",), "autoencoder_def", **MODEL)


def test_denoiser_and_decoder_export(trained, tmp_path: Path) -> None:
    from tools.export import export_network

    root, _, _ = trained
    config = config_files(BUNDLE, "inference")
    settings = {**MODEL, **UNET, "bundle_root": str(root)}
    unet = torch.jit.load(str(export_network(config, str(tmp_path / "unet.ts"), **settings)))
    assert unet(torch.randn(1, 3, 8, 8, 8), torch.tensor([3])).shape == (1, 3, 8, 8, 8)  # the latent grid
    decoder = export_network(config, str(tmp_path / "decoder.ts"), network_key="autoencoder", **settings)
    assert torch.jit.load(str(decoder))(torch.randn(1, 3, 8, 8, 8)).shape == (1, 1, 16, 16, 16)


@pytest.mark.slow  # multi-process torchrun: semantic_mri's two-process training is the default suite's one
def test_torchrun_stage_two_on_cpu(trained, tmp_path: Path) -> None:
    """multi_gpu_train.yaml on stage 2: the denoiser in DDP, one scale factor for both ranks (rank 0's)."""
    root, _, _ = trained
    (tmp_path / "data").symlink_to(root / "data", target_is_directory=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model_autoencoder.pt").symlink_to(root / "models" / "model_autoencoder.pt")
    overrides = {**TRAIN, **UNET, "max_epochs": 1, "save_interval": 0, "batch_size": 1}
    args = ["--bundle_root", str(tmp_path)]
    for key, value in overrides.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    result = run_torchrun(BUNDLE, ("train_autoencoder", "train_diffusion", "multi_gpu_train"), args, port=29549)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    factors = {line.rsplit(":", 1)[-1].strip() for line in lines if "latent scale factor" in line}
    assert sum("latent scale factor" in line for line in lines) == 2
    assert len(factors) == 1  # both ranks logged the same (broadcast) value
    load_plain_weights(tmp_path / "models" / "model.pt", BUNDLE, ("inference",), **MODEL, **UNET)  # unwrapped
    scale = json.loads((tmp_path / "models" / "latent_scale.json").read_text())
    assert scale["scale_factor"] == pytest.approx(float(next(iter(factors))), rel=1e-3)


@pytest.mark.slow  # whole release runs: semantic_mri's run inside its own folder is the default suite's one
def test_release_samples_from_its_own_folder(trained, tmp_path: Path) -> None:
    """The release zip, unpacked elsewhere, samples on the tiny checkpoint (bundle_helpers.check_release_samples)."""
    root, _, _ = trained
    check_release_samples(BUNDLE, root, tmp_path, {**MODEL, **UNET}, ["--num_samples", "1", "--seed", "0"])


# ------------------------------------------------------------------------------------- fidelity to the thesis


def parsed(*names: str, **overrides) -> ConfigParser:
    """The configs ``names`` read with MONAI's ConfigParser, no overlay unless named, ``overrides`` applied."""
    parser = config_parser(BUNDLE, names, **{"bundle_root": str(REPO_ROOT / "bundles" / BUNDLE), **overrides})
    parser.get_parsed_content("imports")  # `$import common` etc., for the expressions that use them
    return parser


def test_base_configs_hold_the_thesis_values() -> None:
    """Every value the thesis gives (Sec. 5.1, 5.3, 5.4, appendices A/B), read from the base configs alone."""
    autoencoder = parsed("train_autoencoder")
    thesis_autoencoder = {  # Sec. 5.3.1 (the best VAE-3 configuration) and Sec. 5.3.2 (loss weights)
        "spatial_size": [128, 128, 128],
        "resize_mode": "nearest",
        "hu_window": [-1000.0, 1000.0],
        "val_fraction": 0.05,
        "latent_channels": 3,
        "ae_channels": [64, 64, 64],
        "ae_num_res_blocks": 2,
        "ae_norm_num_groups": 32,
        "ae_attention_levels": [False, False, True],
        "kl_weight": 1e-6,
        "perceptual_weight": 1e-3,
        "adversarial_weight": 1e-2,
        "perceptual_network_name": "vgg16",  # a pretrained network (the thesis: LPIPS-SqueezeNet, see the README)
    }
    assert {k: autoencoder.get_parsed_content(k) for k in thesis_autoencoder} == thesis_autoencoder
    definition = autoencoder.get("autoencoder_def")
    assert definition["_target_"] == "AutoencoderKL" and definition["spatial_dims"] == 3
    assert autoencoder.get("g_optimizer#_target_") == "torch.optim.Adam"
    assert autoencoder.get("perceptual_loss#_target_") == "common.losses.FakeVolumePerceptualLoss"  # is_fake_3d
    names = [t["_target_"] for t in autoencoder.get("load_transforms")]
    assert names.index("common.transforms.MergeSegmentationd") < names.index("ScaleIntensityRanged")
    assert names.index("ScaleIntensityRanged") < names.index("Resized")
    thesis_diffusion = {  # Sec. 5.4.1 / 5.4.2 and Sec. 6.2 (1500 epochs)
        "num_train_timesteps": 1000,
        "noise_schedule": "scaled_linear_beta",
        "beta_start": 0.0015,
        "beta_end": 0.0195,
        "unet_channels": [64, 64, 64],
        "unet_attention_levels": [False, True, True],
        "unet_num_head_channels": [0, 64, 64],
        "unet_num_res_blocks": 2,
        "max_epochs": 1500,
    }
    diffusion = parsed("train_autoencoder", "train_diffusion")
    assert {k: diffusion.get_parsed_content(k) for k in thesis_diffusion} == thesis_diffusion
    assert diffusion.get("network_def#in_channels") == diffusion.get("network_def#out_channels") == "@latent_channels"
    assert diffusion.get("loss#_target_") == "torch.nn.MSELoss"
    assert diffusion.get("optimizer#_target_") == "torch.optim.Adam"
    inference = parsed("inference")
    thesis_inference = {
        **{k: thesis_diffusion[k] for k in thesis_diffusion if k != "max_epochs"},
        **{k: thesis_autoencoder[k] for k in ("spatial_size", "latent_channels", "ae_channels", "hu_window")},
        "sampler": "ddpm",  # Sec. 5.5: the DDPM ancestral sampler over all T steps
        "num_inference_steps": 1000,
    }
    assert {k: inference.get_parsed_content(k) for k in thesis_inference} == thesis_inference
    # the one documented departure (README "Project choices"): the window is mapped to [-1, 1]
    for config in (autoencoder, inference, parsed("evaluate")):
        assert config.get_parsed_content("intensity_range") == [-1.0, 1.0]


def test_hu_scale_overlay_sets_the_hu_scale_everywhere() -> None:
    """hu_scale.yaml: the HU window is only clipped (the thesis' scale), loss weights unchanged, outputs in HU."""
    base = parsed("train_autoencoder", perceptual_network_name="random")
    hu = parsed("train_autoencoder", "hu_scale", perceptual_network_name="random")
    assert hu.get_parsed_content("intensity_range") == [-1000.0, 1000.0]
    for key in ("kl_weight", "perceptual_weight", "adversarial_weight", "learning_rate", "hu_window"):
        assert hu.get_parsed_content(key) == base.get_parsed_content(key)
    scale = next(t for t in hu.get_parsed_content("load_transforms") if type(t).__name__ == "ScaleIntensityRanged")
    values = torch.tensor([[[-3000.0, -1000.0, -250.5, 0.0, 999.0, 3000.0]]])
    np.testing.assert_allclose(scale({"image": values})["image"], [[[-1000, -1000, -250.5, 0, 999, 1000]]])
    extractor = hu.get_parsed_content("perceptual_network")
    assert isinstance(extractor, SmallConvFeatures) and extractor.input_range == (-1000.0, 1000.0)
    psnr_max = hu.get_parsed_content("validate#evaluator#additional_metrics#val_psnr#max_val")
    assert psnr_max == 2000.0
    sampling = parsed("inference", "hu_scale")
    assert sampling.get_parsed_content("intensity_range") == [-1000.0, 1000.0]
    assert sampling.get("sampling#intensity_range") == "@intensity_range"
    assert parsed("evaluate", "hu_scale").get_parsed_content("intensity_range") == [-1000.0, 1000.0]


def test_missing_perceptual_weights_are_an_error_naming_the_key_and_the_entry(tmp_path: Path) -> None:
    """The base config asks for the pretrained perceptual network: no file is an error, never a random fallback."""
    (tmp_path / "large_files.yml").write_bytes((REPO_ROOT / "bundles" / BUNDLE / "large_files.yml").read_bytes())
    for names in (("train_autoencoder",), ("evaluate",)):
        key = "perceptual_network" if names == ("train_autoencoder",) else "perceptual_loss"
        with pytest.raises(Exception) as error:
            parsed(*names, bundle_root=str(tmp_path)).get_parsed_content(key)
        chain = error_chain(error.value)
        assert "FileNotFoundError: config key 'perceptual_weights'" in chain
        assert "large_files.yml entry 'models/vgg16-397923af.pth'" in chain and "download_large_files" in chain


def test_hu_scale_overlay_end_to_end(tmp_path: Path) -> None:
    """Both stages, sampling and evaluation with hu_scale.yaml (one epoch each): HU in, HU out."""
    hu = ("hu_scale",)
    train(tmp_path, AUTOENCODER + hu, max_epochs=1, save_interval=0)
    train(tmp_path, DIFFUSION + hu, max_epochs=1, save_interval=0)
    written = run_workflow(
        BUNDLE,
        ("inference", *hu),
        None,
        **MODEL,
        **UNET,
        bundle_root=str(tmp_path),
        output_dir=str(tmp_path / "out"),
        num_samples=2,
        sampler="dpm_solver",
        num_inference_steps=3,
    )[0]
    manifest = json.loads((tmp_path / "out" / "run_manifest.json").read_text())
    assert manifest["intensity_range"] == [-1000.0, 1000.0]
    image = nib.load(written[0]["image"])
    assert image.shape == (16, 16, 16) and image.get_data_dtype() == np.int16  # HU, not model units
    values = np.asarray(image.dataobj)
    assert values.min() >= -1000 and values.max() <= 1000  # a one-epoch model: near 0 HU, no air yet
    results = run_workflow(
        BUNDLE,
        ("evaluate", *hu),
        None,
        **MODEL,
        bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path / "data" / "phantoms_thorax"),
        sample_dir=str(tmp_path / "out"),
        output_dir=str(tmp_path / "eval"),
        perceptual_network_name="random",
        fid_pool=2,
    )[0]
    assert results["reconstruction"]["l1_hu"] > 0 and np.isfinite(results["samples"]["fid_2d_latent"])


def test_utility_quick_run_scores_the_real_arms(tmp_path: Path) -> None:
    settings = {
        "bundle_root": str(tmp_path),
        "output_dir": str(tmp_path / "utility"),
        "spatial_size": [16, 16, 16],
        "phantom_size": 24,
        "phantom_cases": 4,
        "test_phantom_cases": 3,
        "quick": True,
    }
    results = run_workflow(BUNDLE, ("train_autoencoder", "inference", "utility"), None, **settings)[0]
    assert set(results["arms"]) == {"real", "real+aug", "real_all", "ceiling"}  # no weights needed: no sampler built
    assert results["cases"]["test"] == ["LUNG_phantom_004", "LUNG_phantom_005", "LUNG_phantom_006"]
    assert results["arms"]["real"]["metrics"]["dice"]["n"] == 3
    assert "fewer than the 5 needed" in (tmp_path / "utility" / "report.md").read_text()


def test_utility_segmenter_keeps_the_input_grid() -> None:
    """The utility segmenter's first convolution has stride 1 (a tumour is a few voxels across: MONAI UNet, whose first
    convolution has stride 2, found too little of it on validation phantoms), and it maps a patch to a same-size map."""
    parser = config_parser(BUNDLE, ("train_autoencoder", "inference", "utility"))
    network = parser.get_parsed_content("segmenter_def")()
    first = next(m for m in network.modules() if isinstance(m, torch.nn.Conv3d))
    assert tuple(first.stride) == (1, 1, 1)
    patch = parser.get_parsed_content("segmenter_patch")
    with torch.no_grad():
        assert network.eval()(torch.zeros(1, 1, *patch)).shape == (1, 2, *patch)


def test_tumour_channel_overlay_generates_ct_with_its_tumour_and_feeds_the_utility(tmp_path: Path) -> None:
    """tumour_channel.yaml: both stages on CT + tumour, samples written with their masks, the utility's synthetic arms
    trained on them (the segmenter sees the CT only: a 2-channel input would not fit its 1-channel U-Net)."""
    tc = ("tumour_channel",)
    autoencoder = train(tmp_path, AUTOENCODER + tc, max_epochs=1, save_interval=0)
    assert autoencoder.parser.get_parsed_content("train#dataset")[0]["image"].shape[0] == 2
    assert "mask" in autoencoder.parser.get_parsed_content("recon_loss").last_terms
    train(tmp_path, DIFFUSION + tc, max_epochs=1, save_interval=0)
    out = tmp_path / "samples"
    sampling = {**MODEL, **UNET, "bundle_root": str(tmp_path), "sampler": "dpm_solver", "num_inference_steps": 3}
    written = run_workflow(BUNDLE, ("inference", *tc), None, output_dir=str(out), num_samples=3, **sampling)[0]
    for entry in written:
        ct, mask = nib.load(entry["image"]), nib.load(entry["label"])
        assert ct.get_data_dtype() == np.int16 and mask.get_data_dtype() == np.uint8
        assert mask.shape == ct.shape == (16, 16, 16) and np.allclose(mask.affine, ct.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
        assert entry["label"].endswith("masks/GTV-1.nii.gz")
    listed = json.loads((out / "dataset.json").read_text())["training"][0]
    assert listed["masks"] == {"GTV-1": listed["label"]} and not Path(listed["label"]).is_absolute()
    assert json.loads((out / "run_manifest.json").read_text())["tumour_channel"] is True
    evaluation = {**MODEL, "bundle_root": str(tmp_path), "sample_dir": str(out), "perceptual_network_name": "random"}
    evaluation["dataset_dir"] = str(tmp_path / "data" / "phantoms_thorax")
    results = run_workflow(BUNDLE, ("evaluate", *tc), None, output_dir=str(tmp_path / "eval"), fid_pool=2, **evaluation)
    reconstruction, sampled = results[0]["reconstruction"], results[0]["samples"]
    assert 0 <= reconstruction["tumour_dice"] <= 1 and reconstruction["mse_hu2"] > 0
    assert sampled["samples"] == 3 and 0 <= sampled["synthetic_with_tumour_fraction"] <= 1
    assert (
        0 < sampled["real_with_tumour_fraction"] <= 1 and sampled["real_tumour_voxels_median"] > 0
    )  # 16^3: small ones vanish
    assert "FID" in sampled["distribution"] and "not computed" in sampled["distribution"]["FID"]
    assert np.isfinite(sampled["distribution"]["FDS (t-SNE of the images, KL real || synthetic)"])
    with pytest.raises(Exception) as error:  # the project FID network reads CT + tumour, the 3D-FID the CT alone
        run_workflow(
            BUNDLE, ("evaluate", *tc), None, output_dir=str(tmp_path / "e2"), fid_network="project", **evaluation
        )
    assert "config key 'fid_network'" in error_chain(error.value)
    (tmp_path / "ct_only").mkdir()  # samples of CT-only weights: no tumour masks listed
    entries = [{"case_id": entry["case_id"], "image": entry["image"]} for entry in written]
    (tmp_path / "ct_only" / "dataset.json").write_text(json.dumps({"training": entries}))
    with pytest.raises(Exception) as error:
        evaluation["sample_dir"] = str(tmp_path / "ct_only")
        run_workflow(BUNDLE, ("evaluate", *tc), None, output_dir=str(tmp_path / "e3"), **evaluation)
    assert "without tumour 'masks'" in error_chain(error.value)
    utility = {
        **sampling,
        "output_dir": str(tmp_path / "utility"),
        "phantom_size": 24,
        "phantom_cases": 4,
        "test_phantom_cases": 3,
        "quick": True,
    }
    results = run_workflow(BUNDLE, ("train_autoencoder", "inference", "utility", *tc), None, **utility)[0]
    assert {"syn2", "real+syn2", "real+syn2+aug"} <= set(results["arms"])
    assert len(list((tmp_path / "utility" / "synthetic").glob("*/masks/GTV-1.nii.gz"))) == 2


def test_tumour_channel_needs_a_two_channel_autoencoder(trained, tmp_path: Path) -> None:
    root, _, _ = trained
    with pytest.raises(Exception) as error:
        infer(root, tmp_path, tumour_channel=True)
    message = error_chain(error.value)
    assert "'tumour_channel' is True" in message and "decodes 1" in message
