"""Tests of common.inferers.tiled_decoding: tiled decoding vs whole decoding, receptive radius, peak RSS."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from monai.networks.nets import AutoencoderKL

from common.inferers.tiled_decoding import TiledDecoder, decode, decoder_receptive_radius, tiled_decode
from tools.bench.memory import measure_peak_rss


def local_decoder(spatial_dims: int) -> torch.nn.Module:
    """A purely local decoder (no normalisation, no attention), 2x upsampling, receptive radius 2 latent voxels."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(
        conv(3, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Upsample(scale_factor=2), conv(4, 1, 3, padding=1)
    ).eval()


def autoencoder(spatial_dims: int, channels: tuple[int, ...] = (8, 8), nonlocal_attn: bool = False) -> AutoencoderKL:
    """The latent_ct autoencoder's kind (no attention levels) at test size, randomly initialised."""
    torch.manual_seed(0)
    return AutoencoderKL(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=1,
        channels=channels,
        latent_channels=3,
        num_res_blocks=1,
        norm_num_groups=4,
        attention_levels=(False,) * len(channels),
        with_encoder_nonlocal_attn=nonlocal_attn,
        with_decoder_nonlocal_attn=nonlocal_attn,
    ).eval()


def latents(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def relative_l1(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x - reference).abs().sum() / reference.abs().sum())


# ------------------------------------------------------------------------------------------------ receptive radius


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_receptive_radius_of_a_local_decoder(spatial_dims: int) -> None:
    # conv at latent resolution: 1 voxel; 3x3 conv after nearest 2x upsampling reaches one more latent voxel
    assert decoder_receptive_radius(local_decoder(spatial_dims), (3,) + (9,) * spatial_dims) == 2


@pytest.mark.parametrize(("channels", "expected"), [((8, 8), 5), ((8, 8, 8), 6)])
def test_receptive_radius_of_autoencoder_kl(channels: tuple[int, ...], expected: int) -> None:
    # conv_in 1 + two convs per res block per level (1, 1/2, 1/4 latent voxel each) + upsampling and output convs
    model = autoencoder(2, channels)
    z = latents((1, 3, 8, 8))
    with torch.no_grad():
        before = model.decode(z)
    assert decoder_receptive_radius(model, (3, 17, 17)) == expected
    assert all(not m._forward_hooks for m in model.modules())  # the probe's GroupNorm hooks are gone
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model.decode(z), before)


def test_receptive_radius_rejects() -> None:
    with pytest.raises(ValueError, match="global operation"):
        decoder_receptive_radius(autoencoder(2, nonlocal_attn=True), (3, 16, 16))
    with pytest.raises(ValueError, match="reaches the border"):
        decoder_receptive_radius(local_decoder(2), (3, 4, 9))
    with pytest.raises(ValueError, match="latent_shape must be"):
        decoder_receptive_radius(local_decoder(2), (3, 9))
    with pytest.raises(ValueError, match="must be >= 3"):
        decoder_receptive_radius(local_decoder(2), (3, 2, 9))
    with pytest.raises(TypeError, match="decode"):
        decoder_receptive_radius(object(), (3, 9, 9))
    with pytest.raises(ValueError, match="zero gradient"):
        decoder_receptive_radius(lambda t: torch.nn.functional.interpolate(t, scale_factor=2) * 0, (3, 9, 9))


# --------------------------------------------------------------------------------------------------- tiled decode


@pytest.mark.parametrize(
    ("shape", "roi", "overlap"), [((2, 3, 20, 17), (8, 9), (0.5, 0.6)), ((1, 3, 13, 11, 9), (8, 7, 9), 0.6)]
)
def test_tiled_equals_whole_for_a_local_decoder_with_margin(shape, roi, overlap) -> None:
    model, z = local_decoder(len(shape) - 2), latents(shape)
    with torch.no_grad():
        whole = model(z)
    tiled = tiled_decode(model, z, roi, overlap=overlap, margin=2)
    assert tiled.shape == whole.shape == (shape[0], 1, *(2 * s for s in shape[2:]))
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    # a margin below the receptive radius lets zero-padded tile borders into the blend
    assert float((tiled_decode(model, z, roi, overlap=overlap, margin=1) - whole).abs().max()) > 1e-3


def test_batched_tiles_and_constant_mode_match() -> None:
    model, z = local_decoder(2), latents((2, 3, 19, 14))
    reference = tiled_decode(model, z, 8, overlap=0.5, margin=2)
    torch.testing.assert_close(tiled_decode(model, z, 8, overlap=0.5, margin=2, sw_batch_size=5), reference)
    torch.testing.assert_close(
        tiled_decode(model, z, 8, overlap=0.5, margin=2, mode="constant"), reference, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    ("shape", "roi", "sw_batch_size"), [((2, 3, 24, 20), (14, 20), 3), ((1, 3, 16, 16, 16), (14, 16, 14), 1)]
)
def test_tiled_equals_whole_for_autoencoder_kl_with_whole_volume_group_norm(shape, roi, sw_batch_size) -> None:
    model, z = autoencoder(len(shape) - 2), latents(shape)
    radius = decoder_receptive_radius(model, (3,) + (13,) * (len(shape) - 2))
    with torch.no_grad():
        whole = model.decode(z)
    tiled = tiled_decode(model, z, roi, overlap=0.75, margin=radius, group_norm="whole", sw_batch_size=sw_batch_size)
    torch.testing.assert_close(tiled, whole, atol=2e-5, rtol=1e-5)
    assert all("forward" not in m.__dict__ for m in model.modules())  # the GroupNorm layers are restored
    # with each tile's own statistics the same tiles differ smoothly (no seams: see the next test)
    assert relative_l1(tiled_decode(model, z, roi, overlap=0.75, margin=radius), whole) > 1e-3


def test_tiled_autoencoder_kl_3d_with_tile_group_norm_has_no_seams() -> None:
    """Tiles' own GroupNorm statistics: a smooth difference from the whole decode; abutting tiles show a seam."""
    model, z = autoencoder(3), latents((1, 3, 16, 16, 16))
    with torch.no_grad():
        whole = model.decode(z)
    blended = tiled_decode(model, z, 14, overlap=0.75, margin=5)
    abutting = tiled_decode(model, z, 8, overlap=0.0, mode="constant")
    assert blended.shape == whole.shape == (1, 1, 32, 32, 32)
    # measured: relative L1 0.026 blended (GroupNorm only), 0.63 abutting (tile borders inside the receptive field)
    assert relative_l1(blended, whole) < 0.05
    assert relative_l1(abutting, whole) > 5 * relative_l1(blended, whole)
    # the abutting tiles meet at latent 8 = output 16 along every axis: the error peaks there, not for the blend
    near_seam, far = slice(12, 20), np.r_[0:4, 28:32]
    for tiled, has_seam in ((abutting, True), (blended, False)):
        error = (tiled - whole).abs()[0, 0]
        ratio = float(error[near_seam].mean() / error[far].mean())
        assert (ratio > 1.8) == has_seam, ratio
        assert (ratio < 1.3) == (not has_seam), ratio


def test_tiles_larger_than_the_latent_decode_it_whole() -> None:
    model, z = autoencoder(2), latents((2, 3, 6, 10))
    with torch.no_grad():
        whole = model.decode(z)
    inferer = TiledDecoder(64, device="cpu")
    assert inferer.tile_size((6, 10)) == (6, 10)
    tiled = inferer(z, model)
    assert tiled.shape == (2, 1, 12, 20) and tiled.device.type == "cpu"
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decode(model, z), whole)
    torch.testing.assert_close(decode(model, z, tiled=True, roi_size=(4, 6), margin=0), tiled_decode(model, z, (4, 6)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"roi_size": 0}, "roi_size must be a positive integer"),
        ({"roi_size": (4, 2.5)}, "roi_size must be a positive integer"),
        ({"roi_size": 4, "overlap": 1.0}, r"overlap must be a fraction in \[0, 1\)"),
        ({"roi_size": 4, "overlap": -0.1}, r"overlap must be a fraction in \[0, 1\)"),
        ({"roi_size": 4, "mode": "linear"}, "mode must be one of"),
        ({"roi_size": 4, "group_norm": "batch"}, "group_norm must be one of"),
        ({"roi_size": 4, "margin": -1}, "margin must be a non-negative integer"),
        ({"roi_size": 4, "sigma_scale": 0.0}, "sigma_scale must be a positive number"),
        ({"roi_size": 4, "sw_batch_size": 0}, "sw_batch_size must be a positive integer"),
    ],
)
def test_tiled_decoder_rejects_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TiledDecoder(**kwargs)


def test_tiled_decoder_rejects_inputs() -> None:
    model, z = local_decoder(2), latents((1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"leave latent voxel 6 inside the 2-voxel margin.*at least 2 \* margin = 4"):
        tiled_decode(model, z, 8, overlap=0.0, margin=2)
    with pytest.raises(ValueError, match="one entry per latent spatial axis"):
        tiled_decode(model, z, (8, 8, 8))
    with pytest.raises(ValueError, match="one entry per latent spatial axis"):
        tiled_decode(model, z, 8, overlap=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"z must be non-empty latents \(B, C, H, W\)"):
        tiled_decode(model, z[0], 8)
    with pytest.raises(ValueError, match="z must be float32 or float64"):
        tiled_decode(model, z.half(), 8)
    with pytest.raises(ValueError, match="integer factor"):
        tiled_decode(lambda t: torch.nn.functional.interpolate(t, scale_factor=1.5), z, 8)
    with pytest.raises(ValueError, match="must map latents"):
        tiled_decode(lambda t: (t, t), z, 8)
    with pytest.raises(TypeError, match="decode"):
        tiled_decode(object(), z, 8)
    with pytest.raises(ValueError, match="group_norm='whole' needs the autoencoder as a torch.nn.Module"):
        tiled_decode(lambda t: model(t), z, 8, group_norm="whole")
    with pytest.raises(ValueError, match="only \\(z, autoencoder\\)"):
        TiledDecoder(8)(z, model, 3)
    with pytest.raises(ValueError, match="roi_size .* is required"):
        decode(model, z, tiled=True)


# ------------------------------------------------------------------------------------------------------- peak RSS


def test_measure_peak_rss_sees_a_large_allocation() -> None:
    n_values = 200 * 2**20 // 8  # 200 MiB of float64 ones (written, so resident)
    result, big = measure_peak_rss(np.ones, n_values, keep_result=False)
    assert result is None
    result, small = measure_peak_rss(np.ones, 10)
    np.testing.assert_array_equal(result, np.ones(10))
    assert big > 180 and small < 20 and big - small > 160, (big, small)  # measured: 200.0 and 0.0
    assert measure_peak_rss(print, "printed output does not disturb the reply")[0] is None
    assert measure_peak_rss(os.getenv, "LATENT_TEST_VARIABLE", env={"LATENT_TEST_VARIABLE": "set"})[0] == "set"


def test_measure_peak_rss_reports_failures() -> None:
    with pytest.raises(RuntimeError, match="math domain error"):
        measure_peak_rss(math.sqrt, -1.0)


def _attention_autoencoder() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(8, 8, 8),
        latent_channels=3,
        num_res_blocks=1,
        norm_num_groups=4,
        attention_levels=(False, False, True),
        use_flash_attention=True,
    ).eval()


def test_split_decoder_is_the_decoder_with_attention_only_in_the_head() -> None:
    from monai.networks.blocks import SpatialAttentionBlock

    from common.inferers.tiled_decoding import split_decoder

    autoencoder = _attention_autoencoder()
    head, tail = split_decoder(autoencoder)
    assert any(isinstance(m, SpatialAttentionBlock) for m in head.modules())
    assert not any(isinstance(m, SpatialAttentionBlock) for m in tail.modules())
    z = torch.randn(1, 3, 6, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(tail(head(z)), autoencoder.decode(z))
    with pytest.raises(TypeError, match="AutoencoderKL"):
        split_decoder(torch.nn.Conv3d(3, 3, 1))


def test_tiled_tail_equals_whole_decoding_with_decoder_attention() -> None:
    """The paper's decoder has attention at latent resolution: head whole + tail tiled is still exact."""
    from common.inferers.tiled_decoding import decode_tiled_tail, tail_receptive_radius

    autoencoder = _attention_autoencoder()
    radius = tail_receptive_radius(autoencoder)
    assert 1 <= radius <= 6
    z = torch.randn(1, 3, 12, 12, 12)
    whole = decode(autoencoder, z)
    tiled = decode_tiled_tail(autoencoder, z, roi_size=2 * radius + 2, overlap=0.9, margin=radius)
    assert tiled.shape == whole.shape == (1, 1, 48, 48, 48)
    assert float((tiled - whole).abs().max()) < 1e-4
    plain = decode(autoencoder, z, tiled=True, roi_size=2 * radius + 2, overlap=0.5)  # attention per tile
    assert float((plain - whole).abs().mean()) > 100 * float((tiled - whole).abs().mean())
