"""tools.export: a trained denoiser exports to TorchScript and torch.export, matches the eager network and carries
the bundle's metadata.json and inference config as extra files (where MONAI Deploy reads them)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from monai.data import load_net_with_metadata

from common.checkpoint import atomic_torch_save
from tools.export import export_network

REPO_ROOT = Path(__file__).resolve().parents[2]
INFERENCE = str(REPO_ROOT / "bundles" / "semantic_mri" / "configs" / "inference.yaml")
TINY = {
    "spatial_size": [16, 16, 16],
    "network_def#channels": [32, 32],
    "network_def#attention_levels": [False, True],
    "network_def#num_head_channels": 32,
    "num_train_timesteps": 10,
}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update(TINY)
    network = parser.get_parsed_content("network_def")
    state = network.state_dict()
    return atomic_torch_save(state, tmp_path / "model.pt")  # the inference weights: a plain state dict


@pytest.mark.parametrize(
    "fmt, load", [("torchscript", torch.jit.load), ("export", lambda p: torch.export.load(p).module())]
)
def test_export_round_trip(tmp_path: Path, checkpoint: Path, fmt: str, load) -> None:
    out = export_network(INFERENCE, str(tmp_path / f"model.{fmt}"), format=fmt, ckpt_path=str(checkpoint), **TINY)
    module = load(str(out))
    x = torch.randn(1, 3, 16, 16, 16)
    t = torch.tensor([3])
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update({**TINY, "ckpt_path": str(checkpoint)})
    reference = parser.get_parsed_content("network").eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x, t), reference(x, t), atol=1e-4, rtol=1e-4)


def test_export_refuses_to_overwrite_and_bad_format(tmp_path: Path, checkpoint: Path) -> None:
    target = tmp_path / "model.ts"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="never overwrite"):
        export_network(INFERENCE, str(target), ckpt_path=str(checkpoint), **TINY)
    assert target.read_bytes() == b"keep"
    with pytest.raises(ValueError, match="format must be one of"):
        export_network(INFERENCE, str(tmp_path / "m.onnx"), format="onnx", ckpt_path=str(checkpoint), **TINY)


PAIRED = str(REPO_ROOT / "bundles" / "paired_petct" / "configs" / "inference.yaml")
PAIRED_TINY = {
    "roi_size": [16, 16],
    "unet_channels": [16, 16],
    "unet_attention_levels": [False, False],
    "unet_num_res_blocks": 1,
    "unet_num_head_channels": 16,
    "unet_norm_num_groups": 8,
    "num_train_timesteps": 10,
}


def test_paired_networks_export_one_file_per_modality(tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(PAIRED)
    parser.update(PAIRED_TINY)
    state = parser.get_parsed_content("network_def").state_dict()
    ckpt = atomic_torch_save(state, tmp_path / "model.pt")
    export_network(PAIRED, str(tmp_path / "petct.ts"), ckpt_path=str(ckpt), **PAIRED_TINY)
    for modality in ("ct", "pet", "mask"):
        module, metadata, _ = load_net_with_metadata(str(tmp_path / f"petct_{modality}.ts"))
        assert metadata == _metadata(PAIRED)
        out = module(torch.randn(2, 1, 16, 16), torch.tensor([1, 5]), torch.randn(2, 2, 16, 16))
        assert out.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="--modality must be one of"):
        export_network(PAIRED, str(tmp_path / "x.ts"), ckpt_path=str(ckpt), modality="dose", **PAIRED_TINY)
    with pytest.raises(FileExistsError, match="never overwrite"):
        export_network(PAIRED, str(tmp_path / "petct.ts"), ckpt_path=str(ckpt), modality="ct", **PAIRED_TINY)


def _metadata(config: str) -> dict:
    return json.loads((Path(config).parent / "metadata.json").read_text())


@pytest.mark.parametrize("fmt, name", [("torchscript", "model.ts"), ("export", "model.pt2")])
def test_export_embeds_metadata_and_inference_config(tmp_path: Path, checkpoint: Path, fmt: str, name: str) -> None:
    out = export_network(INFERENCE, str(tmp_path / name), format=fmt, ckpt_path=str(checkpoint), **TINY)
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        assert {"model/extra/metadata.json", "model/extra/inference.json"} <= set(names)  # root = the file's stem
        metadata = json.loads(archive.read("model/extra/metadata.json"))
        config = json.loads(archive.read("model/extra/inference.json"))
    assert metadata == _metadata(INFERENCE)
    assert config["spatial_size"] == TINY["spatial_size"] and config["ckpt_path"] == str(checkpoint)
    assert "network_def" in config and "inferer" in config
    assert config["bundle_root"] == "$common.bundle.loaded_bundle_root()"  # the rule, not the exporting folder
    assert all(n.startswith("model/") for n in names)  # one root folder, the final name (no temporary name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "model.pt"])  # no temporary left
    if fmt == "torchscript":
        _, loaded_meta, extra = load_net_with_metadata(str(out), more_extra_files=["inference.json"])
        assert loaded_meta == metadata and json.loads(extra["inference.json"]) == config
    else:
        extra = {"metadata.json": "", "inference.json": ""}
        torch.export.load(str(out), extra_files=extra)
        assert json.loads(extra["metadata.json"]) == metadata


def test_export_embeds_the_given_metadata_and_needs_one(tmp_path: Path, checkpoint: Path) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"version": "9.9.9"}))
    out = export_network(INFERENCE, str(tmp_path / "m.ts"), meta_file=str(meta), ckpt_path=str(checkpoint), **TINY)
    with zipfile.ZipFile(out) as archive:
        assert json.loads(archive.read("m/extra/metadata.json")) == {"version": "9.9.9"}
    with pytest.raises(FileNotFoundError, match=r"--meta_file: '.*absent.json' does not exist"):
        export_network(INFERENCE, str(tmp_path / "n.ts"), meta_file=str(tmp_path / "absent.json"), **TINY)
    meta.write_text("[1]")
    with pytest.raises(ValueError, match=r"--meta_file: .* holds a JSON list"):
        export_network(INFERENCE, str(tmp_path / "n.ts"), meta_file=str(meta), **TINY)
    with pytest.raises(ValueError, match=r"--out '.*model' has no extension"):
        export_network(INFERENCE, str(tmp_path / "model"), ckpt_path=str(checkpoint), **TINY)
    assert not (tmp_path / "n.ts").exists()
