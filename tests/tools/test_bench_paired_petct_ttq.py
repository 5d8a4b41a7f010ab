"""The paired_petct time-to-quality benchmark's pieces: the pass rule, the mask area, the FLOPs of training."""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine
from torch import nn

from tools.bench.paired_petct_ttq import EpochFlops, mask_area, passes, time_to_quality_targets
from tools.bench.semantic_mri_ttq import _summary

OPTIONS = {"target": 0.5, "min_scored_fraction": 0.25, "min_mask_in_body": 0.95, "max_area_ratio": 2.0}


def reading(**changes: float) -> dict[str, float]:
    score = {"pairing_dice_mean": 0.6, "mask_in_body": 1.0, "mask_area": 100.0, "triples": 16, "triples_scored": 8}
    score.update(changes)
    return score


def test_mask_area_is_the_mean_over_the_non_empty_masks() -> None:
    mask = torch.zeros(3, 1, 8, 8)
    mask[0, 0, :2, :2] = 1  # 4 pixels
    mask[2, 0, :4, :4] = 1  # 16 pixels; mask 1 is empty and not counted
    assert mask_area(mask) == 10.0
    assert math.isnan(mask_area(torch.zeros(2, 1, 4, 4)))


def test_passes_needs_every_condition() -> None:
    real_area = 67.0
    assert passes(reading(), OPTIONS, real_area)
    assert not passes(reading(pairing_dice_mean=0.49), OPTIONS, real_area)
    assert not passes(reading(triples_scored=3), OPTIONS, real_area)  # 3 of 16 < 25 %
    assert not passes(reading(mask_in_body=0.9), OPTIONS, real_area)
    assert not passes(reading(mask_area=135.0), OPTIONS, real_area)  # an untrained network's blobs: > 2 x 67
    assert passes(reading(mask_area=134.0), OPTIONS, real_area)
    assert not passes(reading(pairing_dice_mean=float("nan")), OPTIONS, real_area)  # nothing scored
    assert not passes(reading(mask_area=float("nan")), OPTIONS, real_area)  # no mask drawn


def test_epoch_flops_counts_the_first_iteration_of_each_epoch_and_charges_every_iteration() -> None:
    layer = nn.Linear(3, 5, bias=False)
    data = [torch.randn(2, 3) for _ in range(4)]

    def step(engine: Engine, x: torch.Tensor) -> None:
        layer(x).sum().backward()

    engine = Engine(step)
    flops = EpochFlops()
    flops.attach(engine)
    engine.run(data, max_epochs=2)
    forward = 2 * 2 * 3 * 5  # 2 FLOPs per multiply-add: batch, in, out
    # the input needs no gradient: the backward pass is the weight gradient alone, as many FLOPs as the forward
    assert flops.per_iteration == 2 * forward
    assert flops.total == 8 * 2 * forward  # 2 epochs of 4 iterations


def run(reached: dict | None, s_per_iteration: float = 1.0) -> dict:
    last = {"epoch": 10, "iterations": 100, "flops": 1000.0}
    return {"reached": reached, "s_per_iteration": s_per_iteration, "snapshots": [last]}


def test_targets_divide_by_the_demo_time_to_quality_or_by_its_whole_budget() -> None:
    reached_demo = {"train_s": 120.0, "flops": 400.0, "epoch": 10}
    runs = {"demo": [run(reached_demo)], "other": [run({"train_s": 60.0, "flops": 100.0, "epoch": 5})]}
    summaries = {name: _summary(r) for name, r in runs.items()}
    cpu, flops = time_to_quality_targets(runs, summaries, "quality", 40)
    assert (cpu["value"], flops["value"], cpu["met"]) == (0.5, 0.25, True)
    # the demo never reached it: its whole 40-epoch budget (10 iterations / epoch at 1 s, 100 FLOPs / epoch) instead
    runs["demo"] = [run(None)]
    summaries = {name: _summary(r) for name, r in runs.items()}
    cpu, flops = time_to_quality_targets(runs, summaries, "quality", 40)
    assert "whole 40-epoch budget" in cpu["name"]
    assert cpu["value"] == 1.0 / (400 / 60) and flops["value"] == 100.0 / 4000.0
    # a recipe with a seed that did not reach the quality gets no ratio
    runs["other"].append(run(None))
    summaries = {name: _summary(r) for name, r in runs.items()}
    assert [t["value"] for t in time_to_quality_targets(runs, summaries, "quality", 40)] == [None, None]
