"""Tests of MT-DDPM's Swin diffusion U-Net: shapes in 2D and 3D, gradients, timestep sensitivity, MONAI Swin blocks
with shifted windows, the conv-only variant, and one error per validation branch."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.swin_unetr import BasicLayer

from common.networks.swin_diffusion_unet import ConvSection, SwinDiffusionUNet, SwinSection

TINY = {"channels": (8, 16, 16), "swin_levels": (False, True, True), "num_heads": 2, "window_size": 4}
TINY["norm_num_groups"] = 4


def _net(spatial_dims: int, size: int = 16, **overrides) -> SwinDiffusionUNet:
    torch.manual_seed(0)
    return SwinDiffusionUNet(spatial_dims, 1, 2, [size] * spatial_dims, **{**TINY, **overrides})


def _randomise_output_layer(net: SwinDiffusionUNet) -> None:
    """The output layer starts at zero (zero prediction); give it weights so inputs reach the output."""
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_and_gradients(spatial_dims):
    net = _net(spatial_dims)
    x = torch.randn(2, 1, *[16] * spatial_dims)
    out = net(x, torch.tensor([0, 999]))
    assert out.shape == (2, 2, *[16] * spatial_dims)
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer
    _randomise_output_layer(net)
    net(x, torch.tensor([0, 999])).square().mean().backward()
    no_grad = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad[:5]


def test_timestep_changes_the_output_and_a_scalar_timestep_broadcasts():
    net = _net(2)
    _randomise_output_layer(net)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        early, late = net(x, torch.tensor([5])), net(x, torch.tensor([900]))
        broadcast = net(x.repeat(2, 1, 1, 1), torch.tensor(900))
    assert (early - late).abs().mean() > 1e-3
    torch.testing.assert_close(broadcast[1:], late)


def test_swin_levels_use_monai_basic_layers_with_shifted_windows():
    net = _net(2)
    swin = [m for m in net.modules() if isinstance(m, SwinSection)]
    conv = [m for m in net.modules() if isinstance(m, ConvSection)]
    # levels 1, 2 and the middle carry Swin blocks (2 sections each), level 0 conv blocks (3 sections), down and up
    assert len(swin) == 2 * 5 and len(conv) == 3 * 2
    layer = swin[0].attention
    assert isinstance(layer, BasicLayer) and len(layer.blocks) == 2
    assert layer.blocks[0].shift_size == (0, 0) and layer.blocks[1].shift_size == (2, 2)  # WA, then S-WA by l / 2
    assert layer.blocks[0].attn.qkv.bias is not None  # qkv_bias=True


def test_conv_only_variant_has_no_attention():
    net = _net(2, swin_levels=(False, False, False))
    assert not [m for m in net.modules() if isinstance(m, SwinSection)]
    assert net(torch.randn(1, 1, 16, 16), torch.tensor([1])).shape == (1, 2, 16, 16)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"window_size": 8}, r"network_def#window_size.*window 8 at level 2.*\[4, 4\]"),
        ({"image_size": [18, 18]}, r"network_def#image_size.*\[18, 18\].*not divisible by 4"),
        ({"image_size": [16]}, r"network_def#image_size.*expected 2 sizes"),
        ({"swin_levels": (True,)}, r"network_def#swin_levels"),
        ({"num_heads": 3}, r"network_def#num_heads.*3 heads.*16 channels"),
        ({"num_heads": [2, 2]}, r"network_def#num_heads.*one value per level \(3\)"),
        ({"channels": (8, 16, 18)}, r"network_def#channels.*norm_num_groups=4"),
        ({"spatial_dims": 1}, r"network_def#spatial_dims"),
        ({"swin_sections": 0}, r"network_def#swin_sections"),
    ],
)
def test_bad_arguments_name_the_config_key(overrides, match):
    arguments = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "image_size": [16, 16], **TINY, **overrides}
    with pytest.raises(ValueError, match=match):
        SwinDiffusionUNet(**arguments)


def test_bad_inputs_are_errors():
    net = _net(2)
    with pytest.raises(ValueError, match=r"not divisible by 4"):
        net(torch.randn(1, 1, 18, 18), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"expected input \(B, 1"):
        net(torch.randn(1, 2, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(1, 1, 16, 16), torch.tensor([1]), context=torch.zeros(1, 1, 4))
