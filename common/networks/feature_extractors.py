"""Offline perceptual loss for 2D images: a frozen VGG-16 trunk loaded from a local file, and an LPIPS-style distance.

Why this exists: the ``paired_petct`` paper adds "a rudimentary perceptual loss with pre-trained VGG-16" between
the x0 estimates of its networks. MONAI's ``PerceptualLoss`` fetches its weights through torch.hub / LPIPS when it is
constructed, and nothing may download anything at run time here (training nodes are offline, tests must be
reproducible). So the project builds the VGG-16 convolutional trunk itself (:class:`VGG16Features`, plain torch,
module names identical to torchvision's ``vgg16().features``) and loads a LOCAL weights file named in the bundle
config (:func:`load_vgg16_features`). A missing file is an error that says where to get it; it is never fetched.

Getting the weights: the file is torchvision's ImageNet VGG-16, ``vgg16-397923af.pth``
(https://download.pytorch.org/models/vgg16-397923af.pth, about 528 MB, keys ``features.N.weight`` /
``features.N.bias`` and ``classifier.*``; the classifier is ignored). A bundle that uses it lists it in its
``large_files.yml`` (path, url, hash) and the user downloads it beforehand, e.g.
``python -m monai.bundle download_large_files --bundle_path bundles/paired_petct``. A state dict of
``vgg16().features`` alone (keys ``N.weight``) or one wrapped under ``"state_dict"`` loads as well.

The distance (:class:`FeaturePerceptualLoss`) is LPIPS (Zhang et al. 2018, eq. 1) without its learned linear heads:
for each tapped layer, each spatial position's channel vector is scaled to unit length, the squared difference is
summed over channels and averaged over space, and the layers are summed with fixed weights. For tests and CPU demos
without the weights, :class:`SmallConvFeatures` is a tiny seeded random extractor with the same interface, an
explicit opt-in (``random``), and :func:`build_perceptual_network` picks one of the two from config values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

import torch
from monai.utils import StrEnum
from torch import nn

from common.checkpoint import check_state_dict_fits, read_checkpoint

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16_BLOCKS",
    "VGG16_WEIGHTS_URL",
    "VGG16_LARGE_FILES_ENTRY",
    "PerceptualNetwork",
    "VGG16_RELU_INDICES",
    "VGG16_PERCEPTUAL_LAYERS",
    "VGG16Features",
    "SmallConvFeatures",
    "load_vgg16_features",
    "build_perceptual_network",
]

logger = logging.getLogger(__name__)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel (RGB) mean of ImageNet images in [0, 1]; torchvision's VGG-16 was trained on inputs normalised by it."""


IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel (RGB) standard deviation matching :data:`IMAGENET_MEAN`."""


VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
"""Output channels of the 13 3x3 convolutions of VGG-16 (Simonyan & Zisserman 2015, configuration D), per block;
each convolution is followed by a ReLU and each block by a 2x2 max-pool."""


VGG16_WEIGHTS_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
"""Where torchvision publishes the ImageNet VGG-16 weights (for docs and ``large_files.yml``; never fetched here)."""


VGG16_LARGE_FILES_ENTRY = "models/vgg16-397923af.pth"
"""Default ``path`` of the weights entry in a bundle's ``large_files.yml``, named in missing-file errors."""


DEFAULT_INPUT_RANGE = (-1.0, 1.0)


SMALL_CHANNELS = (8, 16, 32)


SMALL_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [0, 1] -> [-1, 1]: zero-centred input for the random trunk


class PerceptualNetwork(StrEnum):
    """Feature extractors :func:`build_perceptual_network` can build.

    vgg16: :class:`VGG16Features` with ImageNet weights from a local file (the paper's choice); a missing file is an
        error naming the config key and the ``large_files.yml`` entry.
    random: :class:`SmallConvFeatures`, random and seeded, no file: the explicit opt-in of tests and CPU demos (not
        the paper's loss).
    """

    VGG16 = "vgg16"
    RANDOM = "random"


def _relu_indices(blocks: Sequence[Sequence[int]]) -> dict[str, int]:
    """Positions of the ReLUs in the stack :func:`_conv_relu_pool_stack` builds, named ``relu{block}_{conv}``."""
    indices, position = {}, 0
    for block, widths in enumerate(blocks, start=1):
        for conv in range(1, len(widths) + 1):
            indices[f"relu{block}_{conv}"] = position + 1
            position += 2
        position += 1  # the block's max-pool
    return indices


def _block_output_indices(blocks: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Positions of the last ReLU of each block (for VGG-16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)."""
    indices = _relu_indices(blocks)
    return tuple(indices[f"relu{block}_{len(widths)}"] for block, widths in enumerate(blocks, start=1))


VGG16_RELU_INDICES: dict[str, int] = _relu_indices(VGG16_BLOCKS)
"""Index in ``VGG16Features.features`` of each ReLU, by its usual name (``relu1_1`` -> 1, ..., ``relu5_3`` -> 29)."""


VGG16_PERCEPTUAL_LAYERS: tuple[int, ...] = _block_output_indices(VGG16_BLOCKS)
"""The LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 = indices (3, 8, 15, 22, 29)."""


def _conv_relu_pool_stack(in_channels: int, blocks: Sequence[Sequence[int]]) -> nn.Sequential:
    """Blocks of (3x3 conv, padding 1, ReLU) pairs, each block closed by a 2x2 max-pool: VGG's layout and indexing."""
    layers: list[nn.Module] = []
    for widths in blocks:
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = width
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class _FrozenConvTrunk(nn.Module):
    """A frozen conv/ReLU/max-pool stack that returns the activations of chosen ReLUs (shared by both extractors).

    Args:
        blocks: output channels of the convolutions, per block (see :func:`_conv_relu_pool_stack`).
        layers: strictly increasing indices into ``features`` of the ReLUs to return; None: the last ReLU of each
            block.
        input_range: (low, high) range of the input images, mapped to [0, 1].
        mean: per-channel mean subtracted after the mapping to [0, 1].
        std: per-channel standard deviation divided by after subtracting ``mean``.

    Raises:
        ValueError: ``layers`` empty, not increasing or not ReLU indices; ``input_range`` not (low, high), low < high.
    """

    def __init__(
        self,
        blocks: Sequence[Sequence[int]],
        layers: Sequence[int] | None,
        input_range: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.features = _conv_relu_pool_stack(3, blocks)
        relus = sorted(_relu_indices(blocks).values())
        chosen = _block_output_indices(blocks) if layers is None else tuple(int(i) for i in layers)
        increasing = all(a < b for a, b in zip(chosen, chosen[1:]))
        if not chosen or not increasing or not set(chosen) <= set(relus):
            raise ValueError(
                f"`layers` must be strictly increasing indices of ReLU layers of {type(self).__name__}.features "
                f"(allowed: {relus}), got {list(chosen)}"
            )
        low_high = tuple(float(v) for v in input_range)
        if len(low_high) != 2 or not low_high[0] < low_high[1]:
            raise ValueError(f"`input_range` must be (low, high) with low < high, got {tuple(input_range)}")
        self.layers = chosen
        self.input_range = low_high
        pools_before = sum(isinstance(m, nn.MaxPool2d) for m in self.features[: chosen[-1]])
        self.min_size = 2**pools_before
        """Smallest height and width the deepest tapped layer can be computed from."""
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Self:
        """Stay in eval mode whatever ``mode`` is: the extractor is a fixed measuring instrument, never trained."""
        return super().train(False)

    def _normalise_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"{type(self).__name__} expects 2D images (B, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}"
            )
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(
                f"{type(self).__name__}: images of size {tuple(x.shape[2:])} are too small for layer {self.layers[-1]}"
                f" (it follows {self.min_size.bit_length() - 1} max-pools: at least {self.min_size} px per side)"
            )
        x = x.expand(-1, 3, -1, -1)  # grey images are repeated on the three colour channels
        low, high = self.input_range
        return ((x - low) / (high - low) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations of the tapped ReLUs for images ``x``.

        Args:
            x: (B, C, H, W) images, C = 1 (repeated to 3) or 3 (RGB), values in ``input_range``.

        Returns:
            One (B, C_l, H_l, W_l) tensor per index in ``layers``, in that order; layers after the deepest tap
            are not computed.

        Raises:
            ValueError: ``x`` not (B, 1 or 3, H, W), or smaller than ``min_size``.
        """
        h = self._normalise_input(x)
        activations = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self.layers:
                activations.append(h)
            if index == self.layers[-1]:
                break
        return activations


class VGG16Features(_FrozenConvTrunk):
    """The VGG-16 convolutional trunk, laid out as torchvision's ``vgg16().features``, frozen, returning ReLU taps.

    ``features`` is an ``nn.Sequential`` of 31 modules: Conv2d at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28,
    a ReLU after each, MaxPool2d at 4, 9, 16, 23, 30, so torchvision's ImageNet state dict (``features.N.*`` keys)
    loads strictly; :func:`load_vgg16_features` builds one and loads such a file. Constructed directly, the weights
    are random (PyTorch's default initialisation). Parameters do not require gradients and the module stays in eval
    mode, but gradients flow to the input.

    Args:
        layers: indices of the ReLUs whose activations ``forward`` returns (see :data:`VGG16_RELU_INDICES`);
            default :data:`VGG16_PERCEPTUAL_LAYERS`, the LPIPS taps relu1_2 ... relu5_3.
        input_range: (low, high) range of the input images, mapped to [0, 1] and then normalised by the ImageNet
            mean and standard deviation; default (-1, 1).

    Raises:
        ValueError: invalid ``layers`` or ``input_range``.
    """

    def __init__(
        self, layers: Sequence[int] = VGG16_PERCEPTUAL_LAYERS, input_range: Sequence[float] = DEFAULT_INPUT_RANGE
    ) -> None:
        super().__init__(VGG16_BLOCKS, layers, input_range, IMAGENET_MEAN, IMAGENET_STD)


class SmallConvFeatures(_FrozenConvTrunk):
    """A tiny random conv trunk with :class:`VGG16Features`' interface, for tests and CPU demos without VGG weights.

    One 3x3 conv + ReLU per stage, 2x2 max-pools between stages, Kaiming-normal weights drawn from a seeded
    generator and zero biases; frozen like VGG16Features. Random features give a usable, if crude, perceptual
    distance; they stand in for VGG-16 where the weights file is absent, not as its equal.

    Args:
        channels: output channels per stage; default (8, 16, 32).
        layers: indices of the ReLUs to return; default the ReLU of every stage (1, 4, 7 for three stages).
        input_range: (low, high) range of the input images, mapped to [-1, 1] for the trunk; default (-1, 1).
        seed: seed of the weights; None draws them from the global generator.

    Raises:
        ValueError: ``channels`` empty or not positive; invalid ``layers`` or ``input_range``.
    """

    def __init__(
        self,
        channels: Sequence[int] = SMALL_CHANNELS,
        layers: Sequence[int] | None = None,
        input_range: Sequence[float] = DEFAULT_INPUT_RANGE,
        seed: int | None = 0,
    ) -> None:
        if not channels or min(channels) < 1:
            raise ValueError(f"`channels` must be a non-empty list of positive widths, got {list(channels)}")
        super().__init__([(int(c),) for c in channels], layers, input_range, *SMALL_MEAN_STD)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
                nn.init.zeros_(module.bias)


def _features_state_dict(content: Mapping, source: str) -> dict[str, torch.Tensor]:
    """The ``features.*`` entries of a VGG-16 weights file, whichever of the accepted layouts it has.

    Accepted: torchvision's full model (``features.*`` and ``classifier.*``; the classifier is dropped), the
    ``features`` Sequential alone (``N.weight``; prefixed here), either of them wrapped under ``"state_dict"``.
    """
    state = content["state_dict"] if isinstance(content.get("state_dict"), Mapping) else content
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{source} is not a state dict: entry '{key}' holds a {type(value).__name__}, not a tensor"
            )
    if any(str(key).startswith("features.") for key in state):
        return {key: value for key, value in state.items() if not str(key).startswith("classifier.")}
    return {f"features.{key}": value for key, value in state.items()}


def load_vgg16_features(
    weights_path: str | Path,
    layers: Sequence[int] = VGG16_PERCEPTUAL_LAYERS,
    input_range: Sequence[float] = DEFAULT_INPUT_RANGE,
    config_key: str = "perceptual#weights",
    large_files_entry: str = VGG16_LARGE_FILES_ENTRY,
) -> VGG16Features:
    """A :class:`VGG16Features` with the weights of the local file ``weights_path`` (nothing is downloaded).

    Args:
        weights_path: torchvision's ``vgg16-397923af.pth`` or a state dict of the same ``features`` layers (the
            layouts are listed in the module docstring).
        layers: ReLU indices ``forward`` returns; default :data:`VGG16_PERCEPTUAL_LAYERS`.
        input_range: (low, high) range of the input images; default (-1, 1).
        config_key: the bundle config key that holds ``weights_path``, named in errors.
        large_files_entry: the ``path`` of the file's entry in the bundle's ``large_files.yml``, named in the
            missing-file error.

    Returns:
        The frozen extractor in eval mode, on CPU.

    Raises:
        FileNotFoundError: ``weights_path`` does not exist; the message names ``config_key``, the path and the
            ``large_files.yml`` entry to download beforehand.
        ValueError: the file cannot be read, is not a state dict, or does not fit VGG-16 (the message names the first
            missing, extra or mismatching layer with its shape in the file and in the network).
    """
    hint = (
        f"It is listed in the bundle's large_files.yml (entry '{large_files_entry}') and must be downloaded "
        "beforehand, e.g. `python -m monai.bundle download_large_files --bundle_path <bundle>`; nothing is "
        f"downloaded at run time. It is torchvision's ImageNet VGG-16, {VGG16_WEIGHTS_URL}."
    )
    content = read_checkpoint(weights_path, config_key, hint, large_files_entry)
    state = _features_state_dict(content, f"config key '{config_key}': '{weights_path}'")
    network = VGG16Features(layers, input_range)
    try:
        check_state_dict_fits(network, state, str(weights_path))
    except ValueError as e:
        raise ValueError(f"config key '{config_key}': {e}; expected torchvision's VGG-16, {VGG16_WEIGHTS_URL}") from e
    network.load_state_dict(state)
    return network


def build_perceptual_network(
    name: PerceptualNetwork | str,
    weights: str | Path | None = None,
    layers: Sequence[int] | None = None,
    input_range: Sequence[float] = DEFAULT_INPUT_RANGE,
    seed: int | None = 0,
    config_key: str = "perceptual#weights",
    large_files_entry: str = VGG16_LARGE_FILES_ENTRY,
) -> VGG16Features | SmallConvFeatures:
    """The feature extractor a bundle config asks for (wrap it in :class:`FeaturePerceptualLoss`).

    Args:
        name: ``"vgg16"`` (ImageNet VGG-16 from the local file ``weights``), ``"random"`` (:class:`SmallConvFeatures`,
            no file: the explicit opt-in of tests and CPU demos; there is no silent fallback to it).
        weights: path of the VGG-16 weights file; required for ``"vgg16"``, unused by ``"random"``.
        layers: ReLU indices to tap; None: the extractor's default (the LPIPS taps for VGG-16, every stage for small).
        input_range: (low, high) range of the input images; default (-1, 1).
        seed: seed of the random network's weights (unused by ``"vgg16"``).
        config_key: config key of ``weights``, named in errors.
        large_files_entry: ``path`` of the weights entry in the bundle's ``large_files.yml``, named in errors.

    Returns:
        The frozen extractor in eval mode.

    Raises:
        ValueError: unknown ``name`` (the message lists the choices); ``"vgg16"`` without ``weights``; and the errors
            of :func:`load_vgg16_features`.
        FileNotFoundError: the ``"vgg16"`` weights file does not exist.
    """
    choices = tuple(str(m) for m in PerceptualNetwork)
    if name not in choices:
        raise ValueError(f"`name` of the perceptual network must be one of {choices}, got {name!r}")
    if name == PerceptualNetwork.RANDOM:
        if weights is not None:  # a config's default weights path stays set when only the name is overridden
            logger.info(f"perceptual network '{name}' is random: config key '{config_key}' ({str(weights)!r}) unused")
        return SmallConvFeatures(layers=layers, input_range=input_range, seed=seed)
    if weights is None:
        raise ValueError(
            f"config key '{config_key}' is null: the 'vgg16' perceptual network needs the local ImageNet VGG-16 "
            f"weights file, listed in the bundle's large_files.yml (entry '{large_files_entry}')"
        )
    layers = VGG16_PERCEPTUAL_LAYERS if layers is None else layers
    return load_vgg16_features(weights, layers, input_range, config_key, large_files_entry)
