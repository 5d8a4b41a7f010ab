"""tools.export: a trained denoiser exports to TorchScript and torch.export and matches the eager network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
    return atomic_torch_save({"ema": state, "network": state}, tmp_path / "model.pt")


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
    ckpt = atomic_torch_save({"ema": state, "network": state}, tmp_path / "model.pt")
    export_network(PAIRED, str(tmp_path / "petct.ts"), ckpt_path=str(ckpt), **PAIRED_TINY)
    for modality in ("ct", "pet", "mask"):
        module = torch.jit.load(str(tmp_path / f"petct_{modality}.ts"))
        out = module(torch.randn(2, 1, 16, 16), torch.tensor([1, 5]), torch.randn(2, 2, 16, 16))
        assert out.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="--modality must be one of"):
        export_network(PAIRED, str(tmp_path / "x.ts"), ckpt_path=str(ckpt), modality="dose", **PAIRED_TINY)
    with pytest.raises(FileExistsError, match="never overwrite"):
        export_network(PAIRED, str(tmp_path / "petct.ts"), ckpt_path=str(ckpt), modality="ct", **PAIRED_TINY)
