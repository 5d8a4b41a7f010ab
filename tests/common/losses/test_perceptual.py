"""Tests of common.networks.feature_extractors and common.losses.perceptual: the VGG-16 layout and offline loading,
the small extractor, the distance, the factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from common.losses.perceptual import FeaturePerceptualLoss
from common.networks.feature_extractors import (
    VGG16_PERCEPTUAL_LAYERS,
    VGG16_RELU_INDICES,
    SmallConvFeatures,
    VGG16Features,
    build_perceptual_network,
    load_vgg16_features,
)

# torchvision's vgg16().features, written out: (index, in_channels, out_channels) of each 3x3 convolution
VGG16_CONVS = [
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
]
VGG16_POOLS = [4, 9, 16, 23, 30]
VGG16_SHAPES = {
    **{f"features.{i}.weight": (c_out, c_in, 3, 3) for i, c_in, c_out in VGG16_CONVS},
    **{f"features.{i}.bias": (c_out,) for i, _, c_out in VGG16_CONVS},
}


def images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Uniform random images in [-1, 1]."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def constant_vgg_state(prefix: str = "features.") -> dict[str, torch.Tensor]:
    """A VGG-16 features state dict whose tensor number k is filled with k: right shapes, a few bytes on disk."""
    return {
        f"{prefix}{key.removeprefix('features.')}": torch.tensor([float(k)]).expand(shape)
        for k, (key, shape) in enumerate(VGG16_SHAPES.items())
    }


def holds_constant_weights(network: nn.Module) -> bool:
    state = network.state_dict()
    return all(bool((state[key] == k).all()) for k, key in enumerate(VGG16_SHAPES))


class AsFeatures(nn.Module):
    """Identity-like extractor: the input itself and twice the input as two feature maps."""

    layers = (0, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, 2 * x]


# ------------------------------------------------------------------------------------------------- VGG-16 layout


def test_vgg16_layout_matches_torchvision() -> None:
    network = VGG16Features()
    assert {key: tuple(value.shape) for key, value in network.state_dict().items()} == VGG16_SHAPES
    assert len(network.features) == 31
    for index, _, _ in VGG16_CONVS:
        assert isinstance(network.features[index], nn.Conv2d)
        assert network.features[index].kernel_size == (3, 3) and network.features[index].padding == (1, 1)
        assert isinstance(network.features[index + 1], nn.ReLU)
    assert all(isinstance(network.features[i], nn.MaxPool2d) for i in VGG16_POOLS)
    assert VGG16_PERCEPTUAL_LAYERS == (3, 8, 15, 22, 29)
    assert VGG16_RELU_INDICES["relu1_1"] == 1 and VGG16_RELU_INDICES["relu5_3"] == 29


def test_vgg16_forward_taps_grey_and_rgb() -> None:
    network = VGG16Features()
    grey = images((2, 1, 32, 32))
    taps = network(grey)
    assert [tuple(t.shape) for t in taps] == [
        (2, 64, 32, 32),
        (2, 128, 16, 16),
        (2, 256, 8, 8),
        (2, 512, 4, 4),
        (2, 512, 2, 2),
    ]
    assert all(bool((t >= 0).all()) for t in taps)  # taken after the ReLUs
    for from_grey, from_rgb in zip(taps, network(grey.repeat(1, 3, 1, 1))):
        torch.testing.assert_close(from_grey, from_rgb)


def test_vgg16_input_range_and_imagenet_normalisation() -> None:
    network = VGG16Features(layers=[1], input_range=(0.0, 255.0))
    rgb = torch.rand(1, 3, 16, 16)
    zero_one = VGG16Features(layers=[1])
    zero_one.load_state_dict(network.state_dict())
    torch.testing.assert_close(network(rgb * 255)[0], zero_one(rgb * 2 - 1)[0])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    conv_in = nn.functional.conv2d(
        (rgb - mean) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
        network.features[0].weight,
        network.features[0].bias,
        padding=1,
    )
    torch.testing.assert_close(network(rgb * 255)[0], conv_in.relu())


def test_vgg16_is_frozen_but_passes_gradients_to_the_input() -> None:
    network = VGG16Features()
    assert not any(p.requires_grad for p in network.parameters())
    assert not network.training
    network.train()
    assert not network.training
    x = images((1, 3, 32, 32)).requires_grad_()
    sum(t.mean() for t in network(x)).backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    assert all(p.grad is None for p in network.parameters())


def test_forward_stops_after_the_deepest_tap() -> None:
    network = VGG16Features(layers=[3, 8])
    calls: list[int] = []
    for index, module in enumerate(network.features):
        module.register_forward_hook(lambda *_, index=index: calls.append(index))
    assert [tuple(t.shape[1:]) for t in network(images((1, 1, 8, 8)))] == [(64, 8, 8), (128, 4, 4)]
    assert calls == list(range(9))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": []}, r"`layers` must be strictly increasing indices of ReLU layers .* got \[\]"),
        ({"layers": [8, 3]}, r"got \[8, 3\]"),
        ({"layers": [2]}, r"allowed: \[1, 3, 6, 8, .*29\]\), got \[2\]"),
        ({"input_range": (1.0, -1.0)}, r"`input_range` must be \(low, high\) with low < high, got \(1.0, -1.0\)"),
    ],
    ids=["empty", "not increasing", "not a relu", "range"],
)
def test_vgg16_rejects_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VGG16Features(**kwargs)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 2, 32, 32), r"expects 2D images \(B, C, H, W\) with C = 1 or 3, got shape \(1, 2, 32, 32\)"),
        ((1, 32, 32), r"got shape \(1, 32, 32\)"),
        ((1, 1, 8, 32), r"too small for layer 29 \(it follows 4 max-pools: at least 16 px per side\)"),
    ],
    ids=["channels", "dimensions", "too small"],
)
def test_vgg16_rejects_inputs(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VGG16Features()(torch.zeros(shape))


# -------------------------------------------------------------------------------------------- loading weights


def test_load_round_trip(tmp_path: Path) -> None:
    original = VGG16Features()
    torch.save(original.state_dict(), tmp_path / "vgg16.pth")
    loaded = load_vgg16_features(tmp_path / "vgg16.pth", layers=[3, 8], input_range=(0, 1))
    assert isinstance(loaded, VGG16Features) and loaded.layers == (3, 8) and loaded.input_range == (0.0, 1.0)
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in original.state_dict().items())
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def _torchvision_model(state: dict) -> object:
    classifier = {"classifier.0.weight": torch.zeros(1).expand(4096, 25088), "classifier.6.bias": torch.zeros(1000)}
    return {**state, **classifier}


def _features_only(state: dict) -> object:
    return {key.removeprefix("features."): value for key, value in state.items()}


def _wrapped(state: dict) -> object:
    return {"state_dict": _torchvision_model(state), "epoch": 74}


@pytest.mark.parametrize(
    "layout", [_torchvision_model, _features_only, _wrapped], ids=["torchvision", "bare", "wrapped"]
)
def test_load_accepts_the_file_layouts(tmp_path: Path, layout: Callable[[dict], object]) -> None:
    torch.save(layout(constant_vgg_state()), tmp_path / "weights.pth")
    assert holds_constant_weights(load_vgg16_features(tmp_path / "weights.pth"))


def test_load_missing_file_says_where_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "vgg16-397923af.pth"
    with pytest.raises(FileNotFoundError) as info:
        load_vgg16_features(missing, config_key="perceptual#weights", large_files_entry="models/vgg16-397923af.pth")
    message = str(info.value)
    for part in (
        "config key 'perceptual#weights'",
        str(missing),
        "large_files.yml",
        "'models/vgg16-397923af.pth'",
        "downloaded beforehand",
        "download_large_files",
    ):
        assert part in message


def _wrong_shape(state: dict) -> None:
    state["features.10.weight"] = torch.zeros(1).expand(256, 64, 3, 3)


def _missing_layer(state: dict) -> None:
    del state["features.28.bias"]


def _extra_layer(state: dict) -> None:
    state["features.1.running_mean"] = torch.zeros(64)


def _not_a_tensor(state: dict) -> None:
    state["features.0.weight"] = "conv"


FIT_ERRORS: dict[str, tuple[Callable[[dict], None], str]] = {
    "shape": (_wrong_shape, "layer 'features.10.weight' has shape (256, 64, 3, 3) in the checkpoint, (256, 128, 3, 3)"),
    "missing": (_missing_layer, "layer 'features.28.bias' is missing"),
    "extra": (_extra_layer, "it has layer 'features.1.running_mean' the network lacks"),
    "not a tensor": (_not_a_tensor, "is not a state dict: entry 'features.0.weight' holds a str, not a tensor"),
}


@pytest.mark.parametrize("name", list(FIT_ERRORS))
def test_load_names_what_does_not_fit(tmp_path: Path, name: str) -> None:
    damage, message = FIT_ERRORS[name]
    state = constant_vgg_state()
    damage(state)
    torch.save(state, tmp_path / "weights.pth")
    with pytest.raises(ValueError) as info:
        load_vgg16_features(tmp_path / "weights.pth", config_key="train#perceptual#weights")
    assert message in str(info.value) and "config key 'train#perceptual#weights'" in str(info.value)


def test_load_rejects_a_file_that_is_not_a_dict(tmp_path: Path) -> None:
    torch.save([torch.zeros(3)], tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="holds a list, not a dict"):
        load_vgg16_features(tmp_path / "weights.pth")


# --------------------------------------------------------------------------------------------- small extractor


def test_small_features_interface_and_seed() -> None:
    x = images((2, 1, 16, 16))
    network = SmallConvFeatures(channels=(4, 8), seed=3)
    assert network.layers == (1, 4)
    assert [tuple(t.shape) for t in network(x)] == [(2, 4, 16, 16), (2, 8, 8, 8)]
    assert not any(p.requires_grad for p in network.parameters()) and not network.training
    same, other = SmallConvFeatures(channels=(4, 8), seed=3), SmallConvFeatures(channels=(4, 8), seed=4)
    assert all(torch.equal(a, b) for a, b in zip(network(x), same(x)))
    assert not torch.equal(network(x)[0], other(x)[0])


def test_small_features_rejects_empty_channels() -> None:
    with pytest.raises(ValueError, match=r"`channels` must be a non-empty list of positive widths, got \[\]"):
        SmallConvFeatures(channels=())


# ------------------------------------------------------------------------------------------------ the distance


def test_distance_by_hand() -> None:
    # two samples, 2 channels, 3 positions; channel vectors per position
    a = torch.tensor([[[[3.0, 0.0, 0.0]], [[4.0, 2.0, 0.0]]], [[[1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]]])
    b = torch.tensor([[[[1.0, 0.0, 0.0]], [[0.0, -5.0, 3.0]]], [[[1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]]])
    # sample 0: (0.6, 0.8) vs (1, 0) -> 0.16 + 0.64; (0, 1) vs (0, -1) -> 4; (0, 0) vs (0, 1) -> 1; sample 1: equal
    per_layer = torch.tensor([(0.8 + 4.0 + 1.0) / 3, 0.0])
    loss = FeaturePerceptualLoss(AsFeatures(), layer_weights=[1.0, 0.5], reduction="none")
    torch.testing.assert_close(loss(a, b), 1.5 * per_layer)  # both maps give the same unit vectors
    torch.testing.assert_close(FeaturePerceptualLoss(AsFeatures())(a, b), (2 * per_layer).mean())
    torch.testing.assert_close(FeaturePerceptualLoss(AsFeatures(), reduction="sum")(a, b), (2 * per_layer).sum())


def test_distance_gradients_are_finite_at_zero_vectors() -> None:
    a = torch.zeros(1, 2, 2, 2, requires_grad=True)
    b = torch.ones(1, 2, 2, 2, requires_grad=True)
    FeaturePerceptualLoss(AsFeatures())(a, b).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@pytest.fixture(scope="module")
def small_loss() -> FeaturePerceptualLoss:
    return FeaturePerceptualLoss(SmallConvFeatures(seed=0), layer_weights=[1.0, 0.5, 0.25], reduction="none")


def test_loss_identity_symmetry_positivity(small_loss: FeaturePerceptualLoss) -> None:
    a, b = images((3, 1, 16, 16), 0), images((3, 1, 16, 16), 1)
    assert torch.allclose(small_loss(a, a), torch.zeros(3), atol=1e-7)
    torch.testing.assert_close(small_loss(a, b), small_loss(b, a))
    assert small_loss(a, b).shape == (3,) and bool((small_loss(a, b) > 0).all())
    assert small_loss(a, b)[0] > small_loss(a, 0.9 * a + 0.1 * b)[0]


def test_loss_is_differentiable_in_both_inputs(small_loss: FeaturePerceptualLoss) -> None:
    a, b = images((2, 1, 16, 16), 0).requires_grad_(), images((2, 1, 16, 16), 1).requires_grad_()
    small_loss(a, b).sum().backward()
    for x in (a, b):
        assert x.grad is not None and torch.isfinite(x.grad).all() and bool(x.grad.abs().sum() > 0)


def test_loss_with_vgg16() -> None:
    loss = FeaturePerceptualLoss(VGG16Features())
    a, b = images((2, 1, 32, 32), 0), images((2, 1, 32, 32), 1)
    value = loss(a, b)
    assert value.ndim == 0 and value > 0
    assert loss(a, a) < 1e-6
    loss.train()
    assert loss.training and not loss.extractor.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduction": "max"}, r"`reduction` must be one of \('mean', 'sum', 'none'\), got 'max'"),
        ({"layer_weights": [1.0, -1.0, 1.0]}, r"`layer_weights` must be non-negative numbers"),
        ({"layer_weights": []}, r"`layer_weights` must be non-negative numbers"),
        ({"layer_weights": [1.0, 1.0]}, r"`layer_weights` has 2 values but the extractor returns 3 feature maps"),
    ],
    ids=["reduction", "negative", "empty", "count"],
)
def test_loss_rejects_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeaturePerceptualLoss(SmallConvFeatures(), **kwargs)


def test_loss_checks_the_feature_count_at_run_time() -> None:
    loss = FeaturePerceptualLoss(nn.Sequential(AsFeatures()), layer_weights=[1.0, 1.0, 1.0])  # no `layers` to check
    with pytest.raises(ValueError, match="`layer_weights` has 3 values but the extractor returns 2 feature maps"):
        loss(torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2))


def test_loss_rejects_different_shapes(small_loss: FeaturePerceptualLoss) -> None:
    with pytest.raises(ValueError, match=r"same shape, got a \(1, 1, 16, 16\) and b \(1, 1, 16, 8\)"):
        small_loss(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 8))


# --------------------------------------------------------------------------------------------------- the factory


def test_build_vgg16_from_file(tmp_path: Path) -> None:
    torch.save(_torchvision_model(constant_vgg_state()), tmp_path / "vgg16.pth")
    network = build_perceptual_network("vgg16", str(tmp_path / "vgg16.pth"))
    assert isinstance(network, VGG16Features) and network.layers == VGG16_PERCEPTUAL_LAYERS
    assert holds_constant_weights(network)
    assert build_perceptual_network("vgg16", tmp_path / "vgg16.pth", layers=[22]).layers == (22,)


def test_build_small() -> None:
    network = build_perceptual_network("random", None, seed=5, input_range=(0, 1))
    assert isinstance(network, SmallConvFeatures) and network.input_range == (0.0, 1.0)
    assert torch.equal(network.features[0].weight, SmallConvFeatures(seed=5).features[0].weight)
    # a weights path left in the config is unused by the random network
    assert isinstance(build_perceptual_network("random", "unused.pth"), SmallConvFeatures)


def test_build_random_is_the_small_network_by_its_explicit_name() -> None:
    network = build_perceptual_network("random", "unused.pth", seed=5, input_range=(-1000, 1000))
    assert isinstance(network, SmallConvFeatures) and network.input_range == (-1000.0, 1000.0)
    assert torch.equal(network.features[0].weight, build_perceptual_network("random", None, seed=5).features[0].weight)


def test_build_vgg16_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config key 'perceptual#weights'.*large_files\.yml"):
        build_perceptual_network("vgg16", tmp_path / "absent.pth")


@pytest.mark.parametrize(
    ("name", "weights", "message"),
    [
        (
            "resnet50",
            None,
            r"`name` of the perceptual network must be one of \('vgg16', 'random'\), got 'resnet50'",
        ),
        ("vgg16", None, r"config key 'perceptual#weights' is null: the 'vgg16' perceptual network needs"),
    ],
    ids=["unknown", "vgg16 without weights"],
)
def test_build_rejects_settings(name: str, weights: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_perceptual_network(name, weights)


def test_no_silent_fallback_names_are_left() -> None:
    # "auto" (a random network when the VGG-16 file is missing) and its alias "small" are gone: random is opt-in
    for name in ("auto", "small"):
        with pytest.raises(ValueError, match="must be one of"):
            build_perceptual_network(name, None)
