"""Feature networks of the distribution metrics (FID / 3D-FID, IS), each loaded from a local file, never downloaded.

- The papers' networks: Med-DDPM's 3D-FID uses a pretrained 3D ResNet (Med3D / MedicalNet, paper 001 ref. [42]):
  MONAI's ``resnet50`` (shortcut B, no downsampling bias, one input channel, pooled 2048 features), filled with the
  MedicalNet state dict ``resnet_50_23dataset.pth``. MT-DDPM's FID and IS use Inception-v3 (paper 002): MONAI and the
  installed packages provide no Inception-v3 and torchvision is not a dependency, so the network is read from a
  TorchScript file that carries its own architecture (e.g. NVIDIA's TorchScript translation of the TensorFlow
  ``inception-2015-12-05`` graph used by the original FID/IS code). Either file is named by a config key and listed
  (with its public source) in the bundle's ``large_files.yml``; without it the paper's metric is refused.
- A project-trained network (any ``nn.Module`` with a state dict file, e.g. an autoencoder's encoder or a
  segmenter trained on the phantoms): its figures carry the network's own name, never the paper's metric name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import resnet50
from torch import nn

from common.checkpoint import check_listed_hash, check_state_dict_fits, read_checkpoint
from common.metrics.distribution import FeatureNetwork

__all__ = [
    "MEDICALNET_RESNET50_URL",
    "MEDICALNET_LARGE_FILES_ENTRY",
    "INCEPTION_TORCHSCRIPT_URL",
    "INCEPTION_LARGE_FILES_ENTRY",
    "require_weight_file",
    "medicalnet_resnet50",
    "TorchScriptClassifier",
    "torchscript_inception",
    "EncoderFeatures",
    "build_fid_network",
]


MEDICALNET_RESNET50_URL = (
    "https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet50/resolve/main/resnet_50_23dataset.pth"
)
"""Public source of MedicalNet's ResNet-50 (Med3D, trained on 23 medical datasets; MIT licence)."""

INCEPTION_TORCHSCRIPT_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
"""Public source of a TorchScript Inception-v3 (the TensorFlow FID/IS graph ``inception-2015-12-05``)."""

MEDICALNET_LARGE_FILES_ENTRY = "models/resnet_50_23dataset.pth"
INCEPTION_LARGE_FILES_ENTRY = "models/inception-2015-12-05.pt"


def require_weight_file(path: str | Path, config_key: str, large_files_entry: str, metric: str, source: str) -> Path:
    """``path`` when it is a file; else a FileNotFoundError naming the config key, the large_files.yml entry and the
    metric that cannot be reported without it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"config key '{config_key}': weight file '{path}' does not exist, so '{metric}' cannot be reported (it is "
            f"never computed with another network under that name). The bundle's large_files.yml names it as "
            f"'{large_files_entry}' (source: {source}; how to record its hash is described there); place it there "
            "beforehand: nothing is downloaded at run time. "
            "Without it, set 'fid_network' to 'project' (a project-trained network, reported under its own name) "
            "or null."
        )
    check_listed_hash(path, large_files_entry, config_key)
    return path


def medicalnet_resnet50(
    weights: str | Path,
    config_key: str = "fid_paper_weights",
    large_files_entry: str = MEDICALNET_LARGE_FILES_ENTRY,
) -> FeatureNetwork:
    """The paper's 3D-FID extractor: MONAI's 3D ResNet-50 with MedicalNet's weights, pooled 2048 features.

    The MedicalNet file holds ``{"state_dict": {"module.conv1.weight", ..., "module.conv_seg.*"}}``: the ``module.``
    prefix is dropped and the segmentation head (``conv_seg``) left out.
    """
    path = require_weight_file(weights, config_key, large_files_entry, "3D-FID (paper)", MEDICALNET_RESNET50_URL)
    content = read_checkpoint(path, config_key, large_files_entry=large_files_entry)
    state = content.get("state_dict", content)
    if not isinstance(state, Mapping):
        raise ValueError(f"config key '{config_key}': '{path}' holds no state dict (expected MedicalNet's format)")
    state = {
        key.removeprefix("module."): value
        for key, value in state.items()
        if not key.removeprefix("module.").startswith("conv_seg")
    }
    network = resnet50(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="B", bias_downsample=False)
    check_state_dict_fits(network, state, f"config key '{config_key}': '{path}'")
    network.load_state_dict(state)
    network.eval().requires_grad_(False)
    return FeatureNetwork(features=network, name="paper: MedicalNet 3D ResNet-50", paper=True)


class TorchScriptClassifier(nn.Module):
    """A TorchScript image classifier used for pool features and class probabilities (FID and IS).

    Images in ``input_range`` are mapped to ``network_range`` and single-channel images repeated to 3 channels; the
    network is called with ``feature_kwargs`` for (B, F) features and with ``probability_kwargs`` for class
    probabilities (``softmax=True``: it returns logits, softmax applied here).
    """

    def __init__(
        self,
        network: torch.jit.ScriptModule,
        input_range: Sequence[float] = (-1.0, 1.0),
        network_range: Sequence[float] = (0.0, 255.0),
        feature_kwargs: Mapping[str, Any] | None = None,
        probability_kwargs: Mapping[str, Any] | None = None,
        softmax: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        self.input_range = tuple(float(v) for v in input_range)
        self.network_range = tuple(float(v) for v in network_range)
        self.feature_kwargs = dict(feature_kwargs or {})
        self.probability_kwargs = dict(probability_kwargs or {})
        self.softmax = bool(softmax)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        (low, high), (net_low, net_high) = self.input_range, self.network_range
        scaled = (images.clamp(low, high) - low) / (high - low) * (net_high - net_low) + net_low
        return scaled.expand(-1, 3, *scaled.shape[2:]) if scaled.shape[1] == 1 else scaled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.prepare(images), **self.feature_kwargs)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        output = self.network(self.prepare(images), **self.probability_kwargs)
        return output.softmax(1) if self.softmax else output


def torchscript_inception(
    weights: str | Path,
    config_key: str = "fid_paper_weights",
    large_files_entry: str = INCEPTION_LARGE_FILES_ENTRY,
    input_range: Sequence[float] = (-1.0, 1.0),
    feature_kwargs: Mapping[str, Any] | None = None,
    probability_kwargs: Mapping[str, Any] | None = None,
    softmax: bool = False,
) -> FeatureNetwork:
    """The paper's 2D FID / IS network: Inception-v3 read from a TorchScript file (architecture and weights).

    Defaults follow NVIDIA's ``inception-2015-12-05.pt``: inputs in [0, 255] at any size (resized inside),
    ``return_features=True`` gives the 2048 pool features, ``no_output_bias=True`` the softmax over the 1008 classes
    without the output bias (as the original IS code).
    """
    path = require_weight_file(weights, config_key, large_files_entry, "FID / IS (paper)", INCEPTION_TORCHSCRIPT_URL)
    try:
        network = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # TorchScript raises several types for a file that is not a TorchScript archive
        raise ValueError(f"config key '{config_key}': '{path}' is not a TorchScript network ({e})") from e
    classifier = TorchScriptClassifier(
        network.eval(),
        input_range,
        feature_kwargs=feature_kwargs if feature_kwargs is not None else {"return_features": True},
        probability_kwargs=probability_kwargs if probability_kwargs is not None else {"no_output_bias": True},
        softmax=softmax,
    ).eval()
    return FeatureNetwork(
        features=classifier, name="paper: Inception-v3", probabilities=classifier.probabilities, paper=True
    )


class EncoderFeatures(nn.Module):
    """Features from a project-trained network: ``getattr(network, method)(x)``, item ``output_index`` of a tuple,
    or, with ``layer``, the output of that named submodule during the call (e.g. an encoder level of a MONAI ``UNet``
    such as ``"model.1.submodule.0"``: the features a segmenter computes before it decides on labels).

    E.g. an ``AutoencoderKL`` with ``method="encode"``, ``output_index=0``: the posterior mean map; a segmentation
    network's encoder with ``method="forward"`` and ``layer``. A feature map (B, F, *spatial) is averaged to ``grid``
    cells per axis and flattened when ``grid`` is given (keeps where the features are: a global average of a few
    latent channels says little), else left to the metrics' global average pooling.

    Raises:
        ValueError: no such method or layer (the available layer names are listed), a bad ``grid``.
    """

    def __init__(
        self,
        network: nn.Module,
        method: str = "forward",
        output_index: int | None = None,
        grid: int | None = None,
        layer: str | None = None,
    ) -> None:
        super().__init__()
        if not callable(getattr(network, method, None)):
            raise ValueError(f"the feature network {type(network).__name__} has no method '{method}'")
        if grid is not None and (isinstance(grid, bool) or int(grid) < 1):
            raise ValueError(f"grid must be a positive integer or None, got {grid!r}")
        modules = dict(network.named_modules())
        if layer is not None and layer not in modules:
            names = [name for name in modules if name][:40]
            raise ValueError(
                f"config key 'fid_project_layer': the feature network {type(network).__name__} has no submodule "
                f"'{layer}'; it has {names}{' ...' if len(modules) > 41 else ''}"
            )
        self.network = network.eval()
        self.method = method
        self.output_index = output_index
        self.grid = None if grid is None else int(grid)
        self.layer = layer
        self._captured: list[torch.Tensor] = []
        if layer is not None:
            modules[layer].register_forward_hook(lambda module, args, output: self._captured.append(output))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._captured.clear()
        output = getattr(self.network, self.method)(images)
        if self.layer is not None:
            output = self._captured[-1]
            self._captured.clear()
        output = output[self.output_index] if self.output_index is not None else output
        if self.grid is None or output.ndim <= 2:
            return output
        pool = nn.functional.adaptive_avg_pool3d if output.ndim == 5 else nn.functional.adaptive_avg_pool2d
        return pool(output, self.grid).flatten(1)


def build_fid_network(
    kind: str | None,
    spatial_dims: int,
    paper_weights: str | Path | None = None,
    project_network: nn.Module | Callable[[torch.Tensor], Any] | None = None,
    project_name: str = "project-trained encoder",
    config_key: str = "fid_paper_weights",
    large_files_entry: str | None = None,
    device: torch.device | str = "cpu",
) -> FeatureNetwork | None:
    """The feature network a bundle config asks for (config key ``fid_network``).

    Args:
        kind: ``"paper"`` (MedicalNet ResNet-50 for 3D, TorchScript Inception-v3 for 2D, from ``paper_weights``),
            ``"project"`` (``project_network``, reported as ``FID (<project_name>)``) or None (no FID / IS).
        spatial_dims: 2 or 3.
        paper_weights: the paper network's file (config key ``config_key``, large_files.yml ``large_files_entry``).
        project_network: a project-trained network (weights already loaded) or feature function.
        project_name: its label in every table, e.g. "project-trained 3D encoder (latent_ct autoencoder)".
        device: where the network runs.
    """
    if kind is None:
        return None
    if kind == "paper":
        if paper_weights is None:
            raise ValueError(f"config key '{config_key}' is null: fid_network 'paper' needs the paper's weight file")
        loader = medicalnet_resnet50 if spatial_dims == 3 else torchscript_inception
        default_entry = MEDICALNET_LARGE_FILES_ENTRY if spatial_dims == 3 else INCEPTION_LARGE_FILES_ENTRY
        entry = large_files_entry or default_entry
        network = loader(paper_weights, config_key, entry)
        if isinstance(network.features, nn.Module):
            network.features.to(device)
        return network
    if kind == "project":
        if project_network is None:
            raise ValueError("fid_network 'project' needs a project-trained network (config key 'fid_project_network')")
        if isinstance(project_network, nn.Module):
            project_network = project_network.to(device).eval()
        name = project_name if project_name.startswith("project") else f"project-trained {project_name}"
        return FeatureNetwork(features=project_network, name=name)
    raise ValueError(f"config key 'fid_network' must be 'paper', 'project' or null, got {kind!r}")
