"""Autoencoder losses, the latent cache transforms and the checkpointed latent statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.nets import AutoencoderKL, PatchDiscriminator

from common.data.latent_scale import LatentStats
from common.inferers.autoencoder import KLAutoencoderInferer
from common.losses.adversarial import DiscriminatorAdversarialLoss, GeneratorAdversarialLoss
from common.losses.autoencoder import AutoencoderLoss, kl_divergence
from common.losses.perceptual import FakeVolumePerceptualLoss, FeaturePerceptualLoss
from common.networks.feature_extractors import SmallConvFeatures
from common.transforms.latent import EncodeLatentd, SampleLatentd


def tiny_autoencoder() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(8, 8),
        latent_channels=3,
        num_res_blocks=1,
        norm_num_groups=4,
        attention_levels=(False, False),
    )


def test_kl_divergence_matches_the_closed_form_per_element() -> None:
    mu = torch.tensor([[0.5, -1.0]])
    sigma = torch.tensor([[2.0, 0.5]])
    expected = sum(0.5 * (m**2 + s**2 - math.log(s**2) - 1) for m, s in [(0.5, 2.0), (-1.0, 0.5)])
    assert kl_divergence(mu, sigma).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(torch.zeros(2, 3), torch.ones(2, 3)).item() == pytest.approx(0.0)


def test_kl_divergence_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same shape"):
        kl_divergence(torch.zeros(1, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="positive"):
        kl_divergence(torch.zeros(1, 2), torch.zeros(1, 2))


def test_inferer_returns_the_reconstruction_and_keeps_the_posterior() -> None:
    network = tiny_autoencoder()
    inferer = KLAutoencoderInferer()
    x = torch.rand(2, 1, 8, 8, 8) * 2 - 1
    reconstruction = inferer(x, network)
    assert reconstruction.shape == x.shape
    assert inferer.z_mu.shape == inferer.z_sigma.shape == (2, 3, 4, 4, 4)
    with pytest.raises(TypeError, match="reconstruction, z_mu, z_sigma"):
        inferer(x, torch.nn.Identity())


def test_autoencoder_loss_is_l1_plus_weighted_kl_and_perceptual_and_trains_the_encoder() -> None:
    network = tiny_autoencoder()
    inferer = KLAutoencoderInferer()
    perceptual = FakeVolumePerceptualLoss(FeaturePerceptualLoss(SmallConvFeatures(channels=(4, 8))), ratio=1.0)
    loss_fn = AutoencoderLoss(inferer, kl_weight=1e-3, perceptual_loss=perceptual, perceptual_weight=0.5)
    x = torch.rand(1, 1, 8, 8, 8) * 2 - 1
    reconstruction = inferer(x, network)
    loss = loss_fn(reconstruction, x)
    expected = (
        torch.nn.functional.l1_loss(reconstruction, x)
        + 1e-3 * kl_divergence(inferer.z_mu, inferer.z_sigma)
        + 0.5 * perceptual(reconstruction, x)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(loss_fn.last_terms) == {"l1", "kl", "perceptual"}
    loss.backward()
    encoder_grads = [p.grad for p in network.encoder.parameters() if p.grad is not None]
    assert encoder_grads and any(float(g.abs().sum()) > 0 for g in encoder_grads)


def test_autoencoder_loss_validation() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        AutoencoderLoss(KLAutoencoderInferer(), kl_weight=-1.0)
    with pytest.raises(RuntimeError, match="call the inferer first"):
        AutoencoderLoss(KLAutoencoderInferer())(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4))


def test_autoencoder_loss_reads_perceptual_and_mask_channels_only() -> None:
    """Image + mask autoencoders (latent_ct's tumour_channel.yaml): the perceptual term sees the image channel, the
    mask term the mask channel mapped from the model range to [0, 1]."""
    seen = []

    def perceptual(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append((a.clone(), b.clone()))
        return (a - b).abs().mean()

    def dice(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((p.clone(), t.clone()))
        return 1 - (2 * (p * t).sum() + 1e-5) / (p.sum() + t.sum() + 1e-5)

    inferer = KLAutoencoderInferer()
    inferer.z_mu, inferer.z_sigma = torch.zeros(1, 3, 2, 2, 2), torch.ones(1, 3, 2, 2, 2)
    loss_fn = AutoencoderLoss(
        inferer,
        kl_weight=0.0,
        perceptual_loss=perceptual,
        perceptual_weight=0.5,
        perceptual_channels=[0],
        mask_loss=dice,
        mask_weight=2.0,
        mask_channels=[1],
        mask_range=(-1.0, 1.0),
    )
    target = torch.full((1, 2, 4, 4, 4), -1.0)
    target[0, 1, :2] = 1.0  # the mask: half the volume
    reconstruction = target.clone()
    reconstruction[0, 0] += 0.2
    reconstruction[0, 1, :2] = 0.0  # the mask read as probability 0.5 inside, 0 outside
    loss = loss_fn(reconstruction, target)
    (image, image_ref), (probability, mask) = seen
    assert image.shape[1] == 1 and torch.equal(image_ref, target[:, :1])
    assert torch.allclose(probability[0, 0, :2], torch.full((2, 4, 4), 0.5)) and float(probability[0, 0, 2:].sum()) == 0
    assert torch.equal(mask[0, 0], (target[0, 1] > 0).float())
    expected_dice = 1 - (2 * 16 + 1e-5) / (16 + 32 + 1e-5)
    l1 = (reconstruction - target).abs().mean().item()
    assert loss.item() == pytest.approx(l1 + 0.5 * 0.2 + 2.0 * expected_dice, rel=1e-5)
    assert set(loss_fn.last_terms) == {"l1", "kl", "perceptual", "mask"}
    with pytest.raises(ValueError, match="'perceptual_channels': channels \\[2\\]"):
        AutoencoderLoss(inferer, perceptual_loss=perceptual, perceptual_channels=[2])(reconstruction, target)


def test_autoencoder_loss_channel_validation() -> None:
    inferer = KLAutoencoderInferer()
    with pytest.raises(ValueError, match="'perceptual_channels'"):
        AutoencoderLoss(inferer, perceptual_channels=[])
    with pytest.raises(ValueError, match="'mask_channels'"):
        AutoencoderLoss(inferer, mask_loss=torch.nn.L1Loss(), mask_weight=1.0)
    with pytest.raises(ValueError, match="'mask_channels'"):
        AutoencoderLoss(inferer, mask_channels=[-1])
    with pytest.raises(ValueError, match="'mask_range'"):
        AutoencoderLoss(inferer, mask_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="mask -1"):
        AutoencoderLoss(inferer, mask_weight=-1.0)


def test_fake_volume_perceptual_uses_slices_of_every_axis() -> None:
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, a, b):
            seen.append(tuple(a.shape))
            return (a - b).abs().mean()

    loss = FakeVolumePerceptualLoss(Recorder(), ratio=0.5)
    a, b = torch.zeros(2, 1, 4, 6, 8), torch.ones(2, 1, 4, 6, 8)
    assert loss(a, b).item() == pytest.approx(1.0)
    assert seen == [(2 * 2, 1, 6, 8), (2 * 3, 1, 4, 8), (2 * 4, 1, 4, 6)]
    assert loss(a, a).item() == 0.0
    with pytest.raises(ValueError, match="ratio"):
        FakeVolumePerceptualLoss(Recorder(), ratio=0.0)
    with pytest.raises(ValueError, match="volumes of one shape"):
        loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


def test_adversarial_losses_follow_least_squares_targets_on_the_last_discriminator_output() -> None:
    discriminator = PatchDiscriminator(spatial_dims=3, num_layers_d=2, channels=4, in_channels=1, out_channels=1)
    x = torch.rand(1, 1, 16, 16, 16)
    outputs = discriminator(x)
    assert isinstance(outputs, list) and len(outputs) > 1
    generator_loss = GeneratorAdversarialLoss(weight=0.1)(outputs)
    logits = torch.nn.functional.leaky_relu(outputs[-1], 0.05)  # MONAI's least-squares activation
    assert generator_loss.item() == pytest.approx(0.1 * ((logits - 1) ** 2).mean().item(), rel=1e-5)
    generator_loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in discriminator.parameters())
    real, fake = [torch.ones(1, 1, 2, 2, 2)], [torch.zeros(1, 1, 2, 2, 2)]
    assert DiscriminatorAdversarialLoss(weight=1.0)(real, fake).item() == pytest.approx(0.0)
    assert DiscriminatorAdversarialLoss(weight=1.0)(fake, real).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=">= 0"):
        GeneratorAdversarialLoss(weight=-1.0)
    with pytest.raises(ValueError, match=">= 0"):
        DiscriminatorAdversarialLoss(weight=-1.0)


def test_encode_then_sample_latents_follows_the_posterior_and_the_scale() -> None:
    network = tiny_autoencoder()
    image = torch.rand(1, 8, 8, 8) * 2 - 1
    encoded = EncodeLatentd("image", network)({"image": image, "case_id": "a"})
    assert "image" not in encoded and encoded["case_id"] == "a"
    with torch.no_grad():
        mu, sigma = network.encode(image[None])
    torch.testing.assert_close(encoded["image_mu"], mu[0])
    sampler = SampleLatentd("image", scale_factor=2.0)
    sampler.set_random_state(0)
    draws = torch.stack([sampler(encoded)["image"] for _ in range(400)])
    assert draws.shape == (400, 3, 4, 4, 4)
    torch.testing.assert_close(draws.mean(0), 2.0 * mu[0], atol=0.35 * float(sigma.max()) * 2, rtol=0)
    ratio = draws.std(0) / (2.0 * sigma[0])
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.1)
    sampler.set_random_state(0)
    first = sampler(encoded)["image"]
    sampler.set_random_state(0)
    torch.testing.assert_close(sampler(encoded)["image"], first)
    with pytest.raises(KeyError, match="image_mu"):
        sampler({"image": image})


def test_latent_stats_round_trip_through_a_state_dict() -> None:
    stats = LatentStats(pixdim=(2.0, 2.0, 3.0))
    assert float(stats.scale_factor) == 1.0 and not bool(stats.computed)
    stats.set_scale(0.25)
    copy = LatentStats()
    copy.load_state_dict(stats.state_dict())
    assert float(copy.scale_factor) == 0.25 and bool(copy.computed)
    np.testing.assert_allclose(copy.pixdim.numpy(), [2.0, 2.0, 3.0])
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="positive finite"):
            stats.set_scale(bad)
