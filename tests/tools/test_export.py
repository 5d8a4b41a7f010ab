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
