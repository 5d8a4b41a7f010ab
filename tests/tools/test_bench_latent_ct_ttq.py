"""The latent_ct time-to-quality benchmark's pieces: the HU Wasserstein distance, the real volumes in HU, the FLOPs of
a training step, the summary and targets with a run that did not reach the target."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from tools.bench.latent_ct_ttq import (
    StepFlops,
    _batch_size,
    _check_same_weights,
    _ratio_target,
    _real_hu,
    _summary,
    _total,
    bench_latent_ct_time_to_quality,
    hu_wasserstein,
)

WINDOW = (-1000.0, 1000.0)


def test_hu_wasserstein_of_two_shifted_sets_is_the_shift() -> None:
    # same shape, every quantile 5 HU apart: W1 = 5
    assert hu_wasserstein(torch.tensor([0.0, 1.0, 3.0]), torch.tensor([5.0, 6.0, 8.0]), WINDOW) == pytest.approx(5.0)
    # W1 = integral |F_a - F_b|: a = {0, 0, 0, 4}, b = {0, 4}: |3/4 - 1/2| over [0, 4) = 1
    assert hu_wasserstein([0.0, 0.0, 0.0, 4.0], [0.0, 4.0], WINDOW) == pytest.approx(1.0)


def test_hu_wasserstein_clips_both_sets_to_the_window() -> None:
    assert hu_wasserstein([-3000.0, 0.0], [-1000.0, 0.0], WINDOW) == 0.0
    assert hu_wasserstein([2500.0], [0.0], WINDOW) == pytest.approx(1000.0)


def test_hu_wasserstein_rejects_a_bad_window_and_empty_sets() -> None:
    with pytest.raises(ValueError, match="hu_window"):
        hu_wasserstein([0.0], [0.0], (1000.0, -1000.0))
    with pytest.raises(ValueError, match="non-empty"):
        hu_wasserstein([], [0.0], WINDOW)


class _Parser:
    def __init__(self, content: dict) -> None:
        self.content = content

    def get_parsed_content(self, key: str):
        return self.content[key]


def test_real_volumes_come_back_in_hu_clipped_to_the_window() -> None:
    image = torch.tensor([-1.0, 0.0, 0.5, 1.5]).reshape(1, 1, 2, 2)
    parser = _Parser({"held": [{"image": image}], "hu_window": [-1000.0, 1000.0], "intensity_range": [-1.0, 1.0]})
    hu = _real_hu(parser, "held")
    assert hu.shape == (1, 1, 1, 2, 2)
    assert hu.flatten().tolist() == [-1000.0, 0.0, 500.0, 1000.0]


def test_step_flops_counts_the_first_iteration_and_scales_by_the_samples_trained_on() -> None:
    net = nn.Linear(4, 3)

    def step(engine: Engine, batch: dict) -> None:
        net(batch["image"]).sum().backward()

    flops = StepFlops()
    engine = Engine(step)
    flops.attach(engine)
    batches = [{"image": torch.randn(2, 4)}, {"image": torch.randn(2, 4)}, {"image": torch.randn(1, 4)}]
    engine.run(batches, max_epochs=2)
    # forward 2 * batch * in * out; the input needs no gradient: backward is the weight gradient, as many again
    assert flops.step_flops == 2 * (2 * 2 * 4 * 3)
    assert flops.step_batch == 2
    assert flops.samples == 10
    assert flops.flops == pytest.approx(flops.step_flops / 2 * 10)


def test_step_flops_reads_the_batch_size_of_a_list_of_samples_and_rejects_other_batches() -> None:
    flops = StepFlops()
    engine = Engine(lambda engine, batch: None)
    flops.attach(engine)
    engine.run([[{"image": torch.zeros(1)}] * 3], max_epochs=1)
    assert flops.samples == 3
    with pytest.raises(TypeError, match="batch dict with 'image'"):
        _batch_size(torch.zeros(2), "image")


def test_check_same_weights_names_what_differs() -> None:
    weights = {"w": torch.ones(2)}
    _check_same_weights(weights, {"w": torch.ones(2)}, "model_autoencoder.pt")
    with pytest.raises(RuntimeError, match="model_autoencoder.pt"):
        _check_same_weights(weights, {"w": torch.zeros(2)}, "model_autoencoder.pt")


def _run(ae_s: float, dm_s: float | None) -> dict:
    diffusion = None if dm_s is None else {"reached": {"train_s": dm_s, "flops": 1.0}}
    return {"autoencoder": {"reached": {"train_s": ae_s, "flops": 10.0}}, "diffusion": diffusion}


def test_summary_and_targets_with_a_run_that_did_not_reach_the_target() -> None:
    runs = [_run(60.0, 60.0), _run(120.0, None)]
    assert _total(runs[0]) == {"train_s": 120.0, "flops": 11.0}
    assert _total(runs[1]) is None
    assert _total(runs[1], ("autoencoder",)) == {"train_s": 120.0, "flops": 10.0}
    summary = _summary(runs)
    assert summary["seeds"] == 2 and summary["reached"] == 1
    assert summary["train_min_median"] == 2.0 and summary["flops_median"] == 11.0
    assert summary["diffusion_min_median"] == 1.0
    baseline = _summary([_run(120.0, 120.0), _run(240.0, 120.0)])
    assert baseline["train_min_median"] == 5.0
    target = _ratio_target("cpu", summary, baseline, "train_min_median")
    assert target["value"] == pytest.approx(0.4)
    assert target["met"] is False  # one seed of the proposal never reached the target
    assert _ratio_target("cpu", baseline, baseline, "train_min_median")["met"] is True
    nothing = _summary([_run(60.0, None)])
    assert nothing["train_min_median"] is None and nothing["diffusion_min_median"] is None
    assert _ratio_target("cpu", nothing, baseline, "train_min_median") | {"name": "cpu"} == {
        "name": "cpu",
        "value": None,
        "target": target["target"],
        "met": False,
    }


def test_unknown_variant_is_refused_before_any_training() -> None:
    with pytest.raises(ValueError, match="unknown variants"):
        bench_latent_ct_time_to_quality(only=["no such recipe"])
