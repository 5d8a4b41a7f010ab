"""Tests of the paired trainer, evaluator and joint sampler."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from common.engines.paired import PairedDiffusionEvaluator, PairedDiffusionTrainer
from common.inferers.paired import PairedDiffusionInferer
from common.networks.paired_denoiser import PairedDenoiser, stack_conditions
from common.schedulers import DPMSolverMultistepScheduler, RespacedDDPMScheduler, predict_original

MODALITIES = ("ct", "pet", "mask")


def _networks(seed: int = 0) -> nn.ModuleDict:
    torch.manual_seed(seed)
    small = {"channels": (8, 8), "attention_levels": (False, False), "norm_num_groups": 4, "num_res_blocks": 1}
    return nn.ModuleDict({m: PairedDenoiser(2, 1, 1, 2, num_head_channels=8, **small) for m in MODALITIES})


def _batches(count: int = 2, batch: int = 2, size: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [
        {m: torch.rand(batch, 1, size, size, generator=generator) * 2 - 1 for m in MODALITIES} for _ in range(count)
    ]


def _trainer(network, **options) -> PairedDiffusionTrainer:
    optimizers = {m: torch.optim.Adam(network[m].parameters(), lr=1e-3) for m in MODALITIES}
    settings = {"max_epochs": 1, "perceptual_loss": lambda a, b: (a - b).abs().mean(), **options}
    return PairedDiffusionTrainer(
        "cpu",
        train_data_loader=_batches(),
        network=network,
        optimizers=optimizers,
        scheduler=DDPMScheduler(100),
        **settings,
    )


class _Recorder(nn.Module):
    """A fake denoiser recording its inputs and predicting ``weight * x`` (epsilon)."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x, timesteps, conditions):
        self.calls.append((x.clone(), timesteps.clone(), conditions.clone()))
        return self.weight * x


def test_stack_conditions_order():
    images = {m: torch.full((1, 1, 2, 2), float(i)) for i, m in enumerate(MODALITIES)}
    assert stack_conditions(images, MODALITIES, "pet")[0, :, 0, 0].tolist() == [0.0, 2.0]
    assert stack_conditions(images, MODALITIES, "ct")[0, :, 0, 0].tolist() == [1.0, 2.0]


def test_predict_original_inverts_the_forward_process():
    scheduler = DDPMScheduler(100)
    x0, noise = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 50, 99])
    noisy = scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(predict_original(scheduler, noisy, noise, t, clip=False), x0, atol=1e-4, rtol=1e-4)
    assert predict_original(scheduler, noisy, noise * 50, t).abs().max() <= 1.0


def test_trainer_steps_every_network_with_its_own_optimiser():
    network = _networks()
    before = copy.deepcopy(network.state_dict())
    trainer = _trainer(network)
    trainer.run()
    for m in MODALITIES:
        changed = [k for k, v in network[m].state_dict().items() if not torch.equal(v, before[f"{m}.{k}"])]
        assert changed, f"network {m} did not change"
        assert trainer.optimizers[m].state, f"optimiser {m} never stepped"
    output = trainer.state.output
    assert output["loss"].ndim == 0 and output["perceptual_loss"] == 0.0
    assert output["noise_loss"] == pytest.approx(sum(output[f"loss_{m}"] for m in MODALITIES), rel=1e-5)


def test_perceptual_loss_switches_on_at_its_epoch():
    seen = []

    def perceptual(a, b):
        seen.append((a.shape, float(a.abs().max()), float(b.abs().max())))
        return (a - b).abs().mean()

    trainer = _trainer(_networks(), max_epochs=3, perceptual_loss=perceptual, perceptual_start_epoch=3)
    assert not trainer.perceptual_active(2) and trainer.perceptual_active(3)
    epochs_with_term = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: epochs_with_term.append(e.state.epoch) if e.state.output["perceptual_loss"] else None,
    )
    trainer.run()
    assert set(epochs_with_term) == {3}
    assert len(seen) == 2 * 3  # two iterations in epoch 3, three modality pairs each
    assert all(max(a, b) <= 1.0 for _, a, b in seen)  # x0 estimates clipped
    assert not _trainer(_networks(), perceptual_weight=0.0).perceptual_active(100)


def test_trainer_errors():
    network = _networks()
    optimizers = {m: torch.optim.SGD(network[m].parameters(), lr=0.1) for m in MODALITIES}
    common = {"device": "cpu", "max_epochs": 1, "train_data_loader": _batches(), "scheduler": DDPMScheduler(10)}
    with pytest.raises(TypeError, match="ModuleDict"):
        PairedDiffusionTrainer(network=network["ct"], optimizers=optimizers, **common)
    with pytest.raises(ValueError, match="one network per modality"):
        PairedDiffusionTrainer(network=network, optimizers=optimizers, modalities=("ct", "dose"), **common)
    with pytest.raises(ValueError, match=r"missing \['mask'\]"):
        PairedDiffusionTrainer(network=network, optimizers={k: optimizers[k] for k in ("ct", "pet")}, **common)
    with pytest.raises(ValueError, match="perceptual_start_epoch"):
        PairedDiffusionTrainer(network=network, optimizers=optimizers, perceptual_start_epoch=0, **common)
    bad = PairedDiffusionTrainer(
        network=network,
        optimizers=optimizers,
        **{**common, "train_data_loader": [{"ct": torch.zeros(1, 1, 8, 8), "pet": torch.zeros(1, 1, 8, 8)}]},
    )
    with pytest.raises(KeyError, match="mask"):
        bad.run()


def test_evaluator_is_deterministic():
    network = _networks()
    results = []
    for _ in range(2):
        evaluator = PairedDiffusionEvaluator("cpu", _batches(), network, DDPMScheduler(100), seed=5)
        evaluator.run()
        results.append(evaluator.state.output)
    assert isinstance(results[0]["val_loss"], float)
    assert results[0]["val_loss"] == results[1]["val_loss"]
    assert results[0]["val_loss_ct"] == results[1]["val_loss_ct"]


def test_joint_sampling_conditions_each_network_on_the_others_current_states():
    recorders = nn.ModuleDict({m: _Recorder(0.1 * (i + 1)) for i, m in enumerate(MODALITIES)})
    scheduler = RespacedDDPMScheduler(50, "linear_beta", clip_sample=False)
    scheduler.set_timesteps(5)
    inferer = PairedDiffusionInferer(DDPMScheduler(50))
    out = inferer.sample((2, 1, 4, 4), recorders, scheduler, torch.Generator().manual_seed(0))
    assert {m: tuple(v.shape) for m, v in out.items()} == {m: (2, 1, 4, 4) for m in MODALITIES}
    for m in MODALITIES:
        assert [int(c[1][0]) for c in recorders[m].calls] == scheduler.timesteps.tolist()
    for step in range(5):  # at each step every network saw the same (pre-step) states
        states = {m: recorders[m].calls[step][0] for m in MODALITIES}
        for m in MODALITIES:
            torch.testing.assert_close(recorders[m].calls[step][2], stack_conditions(states, MODALITIES, m))


def test_sampling_is_reproducible_with_a_seed():
    network = _networks()
    inferer = PairedDiffusionInferer(DDPMScheduler(100))
    scheduler = RespacedDDPMScheduler(100, "linear_beta")
    scheduler.set_timesteps(4)
    a = inferer.sample((1, 1, 8, 8), network, scheduler, torch.Generator().manual_seed(7))
    b = inferer.sample((1, 1, 8, 8), network, scheduler, torch.Generator().manual_seed(7))
    c = inferer.sample((1, 1, 8, 8), network, scheduler, torch.Generator().manual_seed(8))
    for m in MODALITIES:
        torch.testing.assert_close(a[m], b[m])
        assert not torch.allclose(a[m], c[m])


def test_noise_seeding_starts_at_the_right_timestep_from_the_noised_reference():
    train_scheduler = DDPMScheduler(1000)
    inferer = PairedDiffusionInferer(train_scheduler)
    sampler = DPMSolverMultistepScheduler(1000, "linear_beta")
    sampler.set_timesteps(10)  # 999, 888, ..., 111, 0
    assert inferer.seed_timestep(sampler, 0.8) == 777  # largest kept timestep <= 0.8 * 999
    assert inferer.seed_timestep(sampler, 1.0) == 999
    recorders = nn.ModuleDict({m: _Recorder(0.0) for m in MODALITIES})
    reference = {m: torch.full((1, 1, 4, 4), 0.5 * (i - 1)) for i, m in enumerate(MODALITIES)}
    inferer.sample((1, 1, 4, 4), recorders, sampler, torch.Generator().manual_seed(3), reference, 0.8)
    assert [int(c[1][0]) for c in recorders["ct"].calls] == [777, 666, 555, 444, 333, 222, 111, 0]
    noise = torch.randn((1, 1, 4, 4), generator=torch.Generator().manual_seed(3))  # the first draw is the ct noise
    expected = train_scheduler.add_noise(reference["ct"], noise, torch.tensor([777]))
    torch.testing.assert_close(recorders["ct"].calls[0][0], expected)


def test_sampling_errors():
    inferer = PairedDiffusionInferer(DDPMScheduler(100))
    network = _networks()
    reference = {m: torch.zeros(1, 1, 8, 8) for m in MODALITIES}
    with pytest.raises(ValueError, match="both"):
        inferer.sample((1, 1, 8, 8), network, reference=reference)
    with pytest.raises(ValueError, match="seed fraction must be in"):
        inferer.sample((1, 1, 8, 8), network, reference=reference, seed_fraction=1.5)
    with pytest.raises(ValueError, match="reference 'ct' must have shape"):
        inferer.sample((1, 1, 4, 4), network, reference=reference, seed_fraction=0.5)
    sampler = RespacedDDPMScheduler(100, "linear_beta")
    sampler.set_timesteps(1)  # only t = 99
    with pytest.raises(ValueError, match="no sampling timestep"):
        inferer.seed_timestep(sampler, 0.5)


def test_agreement_refinement_renoises_the_finished_triple_and_samples_down_again():
    train_scheduler = DDPMScheduler(1000)
    inferer = PairedDiffusionInferer(train_scheduler)
    sampler = DPMSolverMultistepScheduler(1000, "linear_beta")
    sampler.set_timesteps(10)  # 999, 888, ..., 111, 0
    assert inferer.refinement_start(sampler, 2, 0.25) == 222  # largest kept timestep in (0, 0.25 * 999]
    assert inferer.refinement_evaluations(sampler, 2, 0.25) == 6  # 222, 111, 0 per round
    assert inferer.refinement_evaluations(sampler, 0, 0.25) == 0
    plain = inferer.sample((1, 1, 4, 4), _networks(), sampler, torch.Generator().manual_seed(3))
    recorders = nn.ModuleDict({m: _Recorder(0.0) for m in MODALITIES})
    finished = inferer.sample((1, 1, 4, 4), recorders, sampler, torch.Generator().manual_seed(3))
    recorders = nn.ModuleDict({m: _Recorder(0.0) for m in MODALITIES})
    generator = torch.Generator().manual_seed(3)
    refined = inferer.sample((1, 1, 4, 4), recorders, sampler, generator, refine_rounds=2, refine_fraction=0.25)
    expected_timesteps = sampler.timesteps.tolist() + [222, 111, 0] * 2
    assert [int(c[1][0]) for c in recorders["mask"].calls] == expected_timesteps
    replay = torch.Generator().manual_seed(3)
    for _ in MODALITIES:  # the start noise (DPM-Solver++ draws nothing while stepping)
        torch.randn((1, 1, 4, 4), generator=replay)
    ct_noise = torch.randn((1, 1, 4, 4), generator=replay)  # the first refinement draw is the ct noise
    restarted = train_scheduler.add_noise(finished["ct"], ct_noise, torch.tensor([222]))
    torch.testing.assert_close(recorders["ct"].calls[10][0], restarted)
    for m in MODALITIES:  # the refined triple is the last refinement round's result, not the first pass's
        assert refined[m].shape == plain[m].shape
        assert not torch.allclose(refined[m], finished[m])


def test_refinement_evaluations_match_the_network_calls_of_a_seeded_run():
    inferer = PairedDiffusionInferer(DDPMScheduler(1000))
    sampler = RespacedDDPMScheduler(1000, "linear_beta")
    sampler.set_timesteps(25)
    seeded = int((sampler.timesteps <= inferer.seed_timestep(sampler, 0.8)).sum())
    expected = seeded + inferer.refinement_evaluations(sampler, 2, 0.1)
    assert (seeded, expected) == (20, 26)  # 83, 42, 0 per round
    recorders = nn.ModuleDict({m: _Recorder(0.1) for m in MODALITIES})
    reference = {m: torch.zeros(1, 1, 4, 4) for m in MODALITIES}
    generator = torch.Generator().manual_seed(0)
    inferer.sample((1, 1, 4, 4), recorders, sampler, generator, reference, 0.8, refine_rounds=2, refine_fraction=0.1)
    assert all(len(recorders[m].calls) == expected for m in MODALITIES)


def test_refinement_with_the_full_ancestral_sampler():
    train_scheduler = DDPMScheduler(50)
    inferer = PairedDiffusionInferer(train_scheduler)
    recorders = nn.ModuleDict({m: _Recorder(0.1) for m in MODALITIES})
    assert inferer.refinement_start(train_scheduler, 1, 0.1) == 5  # round(0.1 * 49)
    inferer.sample((1, 1, 4, 4), recorders, train_scheduler, torch.Generator().manual_seed(0), refine_rounds=1)
    assert [int(c[1][0]) for c in recorders["pet"].calls] == list(range(49, -1, -1)) + [5, 4, 3, 2, 1, 0]


def test_agreement_refinement_errors():
    inferer = PairedDiffusionInferer(DDPMScheduler(100))
    sampler = RespacedDDPMScheduler(100, "linear_beta")
    sampler.set_timesteps(4)  # 99, 66, 33, 0
    network = _networks()
    with pytest.raises(ValueError, match="refine_rounds must be a non-negative integer"):
        inferer.sample((1, 1, 8, 8), network, sampler, refine_rounds=-1)
    for fraction in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"refine_fraction must be in \(0, 1\)"):
            inferer.sample((1, 1, 8, 8), network, sampler, refine_rounds=1, refine_fraction=fraction)
    with pytest.raises(ValueError, match="no sampling timestep in"):
        inferer.refinement_start(sampler, 1, 0.2)  # (0, 20] holds no kept timestep
    with pytest.raises(ValueError, match="refine_rounds must be a non-negative integer, got 1.5"):
        inferer.refinement_start(sampler, 1.5, 0.5)
    assert inferer.refinement_start(sampler, 2.0, 0.5) == 33  # a whole float is a round count
    reference = {m: torch.zeros(1, 1, 8, 8) for m in MODALITIES}
    with pytest.raises(ValueError, match="not below the seeded start 33"):
        inferer.sample(
            (1, 1, 8, 8), network, sampler, reference=reference, seed_fraction=0.4, refine_rounds=1, refine_fraction=0.4
        )
    assert inferer.refinement_start(sampler, 0, 0.2) == -1  # off: nothing to check
