"""Tests of the paired-diffusion building blocks: TLP, timestep CBAM, cross-encoder attention, paired denoiser."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from common.networks.paired_denoiser import ConditionEncoder, CrossEncoderAttention, PairedDenoiser
from common.networks.timestep_blocks import TimestepCBAM, TimestepLowPass, low_pass_gain, normalised_radial_frequency

SMALL = {
    "channels": (8, 16),
    "attention_levels": (False, False),
    "norm_num_groups": 4,
    "num_res_blocks": 1,
    "num_head_channels": 8,
}


def _randomise(module: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


# ---- TimestepLowPass -------------------------------------------------------------------------------------------


def test_radial_frequency_range_and_shape():
    rho = normalised_radial_frequency((8, 6))
    assert rho.shape == (8, 4)
    assert rho[0, 0] == 0
    assert rho.max() == pytest.approx(1.0)  # Nyquist corner of an even grid
    rho3 = normalised_radial_frequency((4, 4, 4))
    assert rho3.shape == (4, 4, 3) and rho3.max() == pytest.approx(1.0)


def test_low_pass_gain_formula():
    rho = torch.tensor([0.0, 0.25, 0.5, 1.0])
    gain = low_pass_gain(rho, torch.tensor([0.3]), torch.tensor([0.1]))
    expected = 0.1 + 0.9 * torch.exp(-rho.square() / (2 * 0.09))
    assert gain.shape == (1, 1, 4)
    torch.testing.assert_close(gain[0, 0], expected)
    assert gain[0, 0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tlp_shapes_and_size_agnostic(spatial_dims):
    tlp = TimestepLowPass(spatial_dims)
    for size in (8, 13):
        x = torch.randn(2, 3, *(size,) * spatial_dims)
        assert tlp(x, torch.tensor([0, 999])).shape == x.shape


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tlp_matches_formula_on_a_single_frequency(spatial_dims):
    tlp = TimestepLowPass(spatial_dims)
    n, k = 16, 3
    axis = torch.cos(2 * math.pi * k * torch.arange(n) / n)
    x = axis.reshape(n, *(1,) * (spatial_dims - 1)).expand((n,) * spatial_dims).reshape(1, 1, *(n,) * spatial_dims)
    timesteps = torch.tensor([500])
    cutoff, floor = (p.detach() for p in tlp.parameters_at(timesteps))
    rho = math.sqrt((2 * k / n) ** 2 / spatial_dims)
    expected_gain = floor + (1 - floor) * math.exp(-(rho**2) / (2 * cutoff**2))
    y = tlp(x, timesteps)
    torch.testing.assert_close(y, x * expected_gain.item(), atol=1e-5, rtol=1e-4)


def test_tlp_starts_as_a_low_pass_not_identity():
    tlp = TimestepLowPass(2)
    cutoff, floor = tlp.parameters_at(torch.tensor([0, 250, 999]))
    torch.testing.assert_close(cutoff, torch.full((3,), 0.25))
    torch.testing.assert_close(floor, torch.full((3,), 0.05))
    noise = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    filtered = tlp(noise, torch.full((4,), 999))
    assert filtered.var() < 0.25 * noise.var()  # white noise loses most of its energy
    constant = torch.full((1, 1, 16, 16), 0.7)
    torch.testing.assert_close(tlp(constant, torch.tensor([10])), constant)  # the mean passes


def test_tlp_parameters_follow_the_timestep_and_get_gradients():
    tlp = TimestepLowPass(2)
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    tlp(x, torch.tensor([5, 900])).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tlp.mlp[-1].parameters())
    _randomise(tlp)
    cutoff, floor = tlp.parameters_at(torch.tensor([5, 900]))
    assert not torch.allclose(cutoff[0], cutoff[1]) and ((cutoff >= 0) & (cutoff <= 1) & (floor <= 1)).all()


def test_tlp_errors():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        TimestepLowPass(1)
    with pytest.raises(ValueError, match="init_cutoff must be in"):
        TimestepLowPass(2, init_cutoff=1.0)
    with pytest.raises(ValueError, match="expects"):
        TimestepLowPass(2)(torch.randn(1, 1, 4, 4, 4), torch.tensor([1]))


# ---- TimestepCBAM ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cbam_shapes_batch_one_and_no_batchnorm(spatial_dims):
    cbam = TimestepCBAM(spatial_dims, channels=8, temb_channels=12)
    x = torch.randn(1, 8, *(6,) * spatial_dims)
    assert cbam(x, torch.randn(1, 12)).shape == x.shape
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in cbam.modules())


def test_cbam_is_plain_cbam_at_initialisation():
    torch.manual_seed(0)
    cbam = TimestepCBAM(2, channels=8, temb_channels=4)
    x = torch.randn(2, 8, 5, 5)
    channel_logits = cbam.channel_mlp(x.mean(dim=(2, 3))) + cbam.channel_mlp(x.amax(dim=(2, 3)))
    channel_gate = torch.sigmoid(channel_logits)[..., None, None]
    gated = x * channel_gate
    pooled = torch.cat([gated.amax(1, keepdim=True), gated.mean(1, keepdim=True)], 1)
    expected = gated * torch.sigmoid(cbam.spatial_conv(pooled))
    for temb in (torch.zeros(2, 4), torch.randn(2, 4)):
        torch.testing.assert_close(cbam(x, temb), expected)


def test_cbam_gating_responds_to_the_timestep():
    cbam = TimestepCBAM(3, channels=4, temb_channels=6)
    _randomise(cbam, seed=1)
    x = torch.randn(1, 4, 4, 4, 4).expand(2, -1, -1, -1, -1)
    temb = torch.randn(2, 6, generator=torch.Generator().manual_seed(2))
    channel_gate, spatial_gate = cbam.gates(x, temb)
    assert ((channel_gate > 0) & (channel_gate < 1)).all() and ((spatial_gate > 0) & (spatial_gate < 1)).all()
    assert not torch.allclose(channel_gate[0], channel_gate[1])
    assert not torch.allclose(spatial_gate[0], spatial_gate[1])
    out = cbam(x, temb)
    assert not torch.allclose(out[0], out[1])


def test_cbam_gradients_and_errors():
    cbam = TimestepCBAM(2, channels=4, temb_channels=3)
    temb = torch.randn(2, 3, requires_grad=True)
    cbam(torch.randn(2, 4, 5, 5), temb).sum().backward()
    # the FiLM layers start at zero: they get gradients, so the timestep dependence can be learnt
    assert cbam.channel_film.weight.grad.abs().sum() > 0 and cbam.spatial_film.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="spatial_kernel must be odd"):
        TimestepCBAM(2, 4, 3, spatial_kernel=4)
    with pytest.raises(ValueError, match="spatial_dims"):
        TimestepCBAM(4, 4, 3)


# ---- CrossEncoderAttention and ConditionEncoder -----------------------------------------------------------------


def test_cross_encoder_attention_scales_condition_between_one_and_two():
    attention = CrossEncoderAttention(2, channels=8, norm_num_groups=4)
    condition = torch.rand(2, 8, 6, 6) + 0.1
    out = attention(condition, torch.randn(2, 8, 6, 6))
    assert out.shape == condition.shape
    assert ((out > condition) & (out < 2 * condition)).all()
    with pytest.raises(ValueError, match="same shape"):
        attention(condition, torch.randn(2, 8, 3, 3))


def test_condition_encoder_levels_and_low_pass_switch():
    encoder = ConditionEncoder(2, 1, (8, 16), temb_channels=32, num_res_blocks=(1, 1), norm_num_groups=4)
    anchors = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 8, 8)]
    out = encoder(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), torch.randn(2, 32), anchors)
    assert out.shape == (2, 16, 8, 8)
    assert isinstance(encoder.low_pass, TimestepLowPass)
    plain = ConditionEncoder(2, 1, (8, 16), 32, (1, 1), 4, low_pass=False)
    assert plain.low_pass is None


# ---- PairedDenoiser ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_paired_denoiser_shapes_and_gradients(spatial_dims):
    torch.manual_seed(0)
    net = PairedDenoiser(spatial_dims, 1, 1, num_conditions=2, **SMALL)
    size = (8,) * spatial_dims
    x, conditions = torch.randn(2, 1, *size), torch.randn(2, 2, *size)
    out = net(x, torch.tensor([3, 700]), conditions)
    assert out.shape == x.shape
    (out - 1.0).square().mean().backward()  # the output conv starts at zero (MONAI): gradients reach it
    assert net.out[2].conv.weight.grad.abs().sum() > 0
    _randomise(net.out)
    net.zero_grad()
    (net(x, torch.tensor([3, 700]), conditions) - 1.0).square().mean().backward()
    encoder_grads = [p.grad for p in net.condition_encoders.parameters()]
    assert all(g is not None for g in encoder_grads) and sum(g.abs().sum() for g in encoder_grads) > 0


def test_paired_denoiser_uses_the_conditions_and_severed_ignores_them():
    torch.manual_seed(0)
    net = PairedDenoiser(2, 1, 1, num_conditions=2, **SMALL)
    _randomise(net.out)
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([100])
    a = net(x, t, torch.randn(1, 2, 8, 8))
    b = net(x, t, torch.randn(1, 2, 8, 8))
    assert not torch.allclose(a, b)

    severed = PairedDenoiser(2, 1, 1, num_conditions=2, severed=True, **SMALL)
    _randomise(severed.out)
    assert len(severed.condition_encoders) == 0 and severed.fusion_project is None
    torch.testing.assert_close(severed(x, t, torch.randn(1, 2, 8, 8)), severed(x, t, None))


def test_paired_denoiser_options_and_errors():
    no_cbam = PairedDenoiser(2, 1, 1, num_conditions=1, timestep_cbam=False, low_pass=False, **SMALL)
    assert no_cbam.fusion_cbam is None and no_cbam.condition_encoders[0].low_pass is None
    net = PairedDenoiser(2, 1, 1, num_conditions=2, **SMALL)
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([1])
    with pytest.raises(ValueError, match="got None"):
        net(x, t, None)
    with pytest.raises(ValueError, match=r"2 modalities x 1 channels"):
        net(x, t, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="num_conditions must be >= 0"):
        PairedDenoiser(2, 1, 1, num_conditions=-1, **SMALL)


def test_feedback_starts_at_zero_and_learns():
    torch.manual_seed(0)
    with_feedback = PairedDenoiser(2, 1, 1, num_conditions=2, feedback=True, **SMALL)
    without = PairedDenoiser(2, 1, 1, num_conditions=2, **SMALL)  # the paper's network: no feedback by default
    assert without.feedback is None and len(with_feedback.feedback) == len(SMALL["channels"])
    without.load_state_dict({k: v for k, v in with_feedback.state_dict().items() if not k.startswith("feedback.")})
    _randomise(with_feedback.out)
    _randomise(without.out)
    x, t, conditions = torch.randn(2, 1, 8, 8), torch.tensor([3, 40]), torch.randn(2, 2, 8, 8)
    torch.testing.assert_close(with_feedback(x, t, conditions), without(x, t, conditions))  # zero-initialised
    (with_feedback(x, t, conditions) - 1.0).square().mean().backward()
    assert all(conv.conv.weight.grad.abs().sum() > 0 for conv in with_feedback.feedback)
    _randomise(with_feedback.feedback, seed=3)
    assert not torch.allclose(with_feedback(x, t, conditions), without(x, t, conditions))
