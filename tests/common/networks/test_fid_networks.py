"""Tests of the FID / IS feature networks: loaded from local files only, refused without them, named by origin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.nets import resnet50
from torch import nn

from common.networks.fid_networks import (
    EncoderFeatures,
    TorchScriptClassifier,
    build_fid_network,
    medicalnet_resnet50,
    torchscript_inception,
)


class _TinyClassifier(nn.Module):
    """Stands in for the TorchScript Inception: the same call convention, 4 features, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        pooled = self.features(x.mean((2, 3)))
        if return_features:
            return pooled
        logits = pooled @ self.head.weight.T if no_output_bias else self.head(pooled)
        return logits.softmax(1)


def test_medicalnet_file_is_loaded_into_monai_resnet50(tmp_path: Path) -> None:
    reference = resnet50(
        spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="B", bias_downsample=False
    )
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(2, 2, 1, 1, 1)  # MedicalNet's segmentation head: left out
    path = tmp_path / "resnet_50_23dataset.pth"
    torch.save({"state_dict": state}, path)
    network = medicalnet_resnet50(path)
    assert network.paper and network.name.startswith("paper") and network.probabilities is None
    volume = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(network.features(volume), reference.eval()(volume))
    assert network.features(volume).shape == (2, 2048)


def test_medicalnet_file_of_another_network_names_the_first_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"module.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="config key 'fid_paper_weights'.*conv1.weight"):
        medicalnet_resnet50(path)


@pytest.mark.parametrize(
    "spatial_dims, entry", [(3, "models/resnet_50_23dataset.pth"), (2, "models/inception-2015-12-05.pt")]
)
def test_paper_network_without_its_file_is_refused(tmp_path: Path, spatial_dims: int, entry: str) -> None:
    with pytest.raises(FileNotFoundError) as error:
        build_fid_network("paper", spatial_dims, tmp_path / "models" / "missing.pt", config_key="fid_paper_weights")
    message = str(error.value)
    assert "config key 'fid_paper_weights'" in message and f"'{entry}'" in message
    assert "cannot be reported" in message and "nothing is downloaded" in message


def test_torchscript_inception_gives_features_and_probabilities(tmp_path: Path) -> None:
    path = tmp_path / "inception.pt"
    tiny = _TinyClassifier().eval()
    torch.jit.save(torch.jit.script(tiny), str(path))
    network = torchscript_inception(path)
    images = torch.rand(5, 1, 8, 8) * 2 - 1  # grey images in [-1, 1]
    as_network_input = ((images + 1) / 2 * 255).expand(-1, 3, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(network.features(images), tiny(as_network_input, return_features=True))
        probabilities = network.probabilities(images)
        torch.testing.assert_close(probabilities, tiny(as_network_input, no_output_bias=True))
    assert network.paper and probabilities.shape == (5, 3)
    (tmp_path / "bad.pt").write_bytes(b"not a network")
    with pytest.raises(ValueError, match="config key 'fid_paper_weights'.*not a TorchScript network"):
        torchscript_inception(tmp_path / "bad.pt")


def test_torchscript_classifier_applies_softmax_to_logits() -> None:
    class Logits(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3))

    classifier = TorchScriptClassifier(Logits(), network_range=(-1.0, 1.0), softmax=True)
    images = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(classifier.probabilities(images), images.mean((2, 3)).softmax(1))


def test_project_network_is_named_as_such_and_pools_to_a_grid() -> None:
    class Encoder(nn.Module):
        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.repeat(1, 2, 1, 1, 1), x

    features = EncoderFeatures(Encoder(), "encode", 0, grid=2)
    volume = torch.arange(64.0).reshape(1, 1, 4, 4, 4)
    pooled = features(volume)
    assert pooled.shape == (1, 2 * 8)
    assert float(pooled[0, 0]) == pytest.approx(float(volume[0, 0, :2, :2, :2].mean()))
    network = build_fid_network("project", 3, project_network=features, project_name="latent_ct autoencoder")
    assert network.name == "project-trained latent_ct autoencoder" and not network.paper
    assert build_fid_network(None, 3) is None
    with pytest.raises(ValueError, match="config key 'fid_network' must be"):
        build_fid_network("imagenet", 3)
    with pytest.raises(ValueError, match="needs a project-trained network"):
        build_fid_network("project", 3)
    with pytest.raises(ValueError, match="has no method 'embed'"):
        EncoderFeatures(Encoder(), "embed")


def test_encoder_features_from_a_named_layer() -> None:
    """layer: the output of that submodule during the forward call (an encoder level of a MONAI UNet), pooled."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    unet = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    level = dict(unet.named_modules())["model.1.submodule.0"]
    volume = torch.rand(2, 1, 16, 16, 16)
    features = EncoderFeatures(unet, layer="model.1.submodule.0")
    with torch.no_grad():
        expected = level(unet.model[0](volume))
        found = features(volume)
    assert found.shape == (2, 8, 4, 4, 4)
    torch.testing.assert_close(found, expected)
    assert EncoderFeatures(unet, layer="model.1.submodule.0", grid=2)(volume).shape == (2, 8 * 8)
    with pytest.raises(ValueError, match="config key 'fid_project_layer'.*no submodule 'model.9'.*'model.0'"):
        EncoderFeatures(unet, layer="model.9")
