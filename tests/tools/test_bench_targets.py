"""The ``targets`` lists of the semantic_mri and latent_ct benches on small hand-made results (figures are binary
fractions, so no verdict hangs on rounding; paired_petct's are in test_bench_paired_petct.py), and the harness's target
table."""

from __future__ import annotations

import numpy as np
import pytest

from tools.bench.harness import TARGETS_HEADING, target_entry, targets_markdown
from tools.bench.latent_ct import latent_ct_not_measured, latent_ct_targets
from tools.bench.semantic_mri import semantic_mri_targets

KEYS = ["name", "value", "target", "met"]


def _semantic(overhead: float, paper_dice: float, fast: list[tuple[int, float]]) -> dict:
    """semantic_mri results: the paper sampler (250 steps) first, then fast samplers as (steps, tumour Dice)."""
    paper = {"sampler": "ddpm, paper", "steps": 250, "dice_mean": paper_dice, "n": 4}
    rows = [{"sampler": f"fast {steps}", "steps": steps, "dice_mean": dice, "n": 4} for steps, dice in fast]
    return {"overhead": {"overhead": overhead}, "samplers": [paper, *rows]}


def test_semantic_mri_targets() -> None:
    results = _semantic(
        0.0625,
        0.875,
        [(25, 0.84375), (10, 0.9375), (25, 0.8125), (50, 0.875)],  # -0.031, +0.0625, -0.0625, level at 5x
    )
    targets = semantic_mri_targets(results)
    assert all(list(t) == KEYS for t in targets)
    assert [t["met"] for t in targets] == [True, True, True, True, False, False]
    assert [t["value"] for t in targets] == [0.0625, 0.875, -0.03125, 0.0625, -0.0625, 0.0]
    assert "largest connected region" in targets[1]["name"] and "mean over 4 masks" in targets[1]["name"]
    assert "fast 25, 25 steps (10x fewer" in targets[2]["name"]
    assert "(5x fewer" in targets[5]["name"]  # level Dice, but too many evaluations


def test_semantic_mri_targets_not_met() -> None:
    targets = semantic_mri_targets(_semantic(0.125, 0.75, [(25, 0.75)]))
    assert [t["met"] for t in targets] == [False, False, True]  # the fast sampler is judged against the paper's


def _latent(fast_seconds: list[float], memory: list[dict]) -> dict:
    samplers = [{"sampler": "ddpm", "steps": 1000, "s_per_volume": 100.0}]
    samplers += [{"sampler": f"fast{i}", "steps": 25, "s_per_volume": s} for i, s in enumerate(fast_seconds)]
    return {"samplers": samplers, "memory": memory}


def _memory_row(volume: int, **tiled: float) -> dict:
    return {"volume": volume, "roi": 24, "whole_mib": 1000.0, **{f"tiled_{k}_gn_mib": v for k, v in tiled.items()}}


def test_latent_ct_targets() -> None:
    memory = [_memory_row(128, whole=300.0, tile=300.0), _memory_row(256, whole=312.5, tile=250.0)]
    results = _latent([4.0, 6.25], memory)
    targets = latent_ct_targets(results)
    assert all(list(t) == KEYS for t in targets)
    assert [t["value"] for t in targets] == [25.0, 16.0, 0.3125, 0.25]
    assert [t["met"] for t in targets] == [True, False, False, True]
    assert "256^3, exact" in targets[2]["name"] and "256^3, tile statistics" in targets[3]["name"]
    assert latent_ct_not_measured(results) == []


def test_latent_ct_targets_name_what_the_run_left_out() -> None:
    no_exact = _latent([4.0], [_memory_row(128, whole=300.0, tile=300.0), _memory_row(256, tile=250.0)])
    assert [t["value"] for t in latent_ct_targets(no_exact)] == [25.0, 0.25]
    (line,) = latent_ct_not_measured(no_exact)
    assert "256^3, exact" in line and "`--exact_sizes` without 256" in line and "measured at 128^3" in line
    no_volume = _latent([4.0], [_memory_row(128, tile=300.0)])
    assert [t["value"] for t in latent_ct_targets(no_volume)] == [25.0]  # no memory value invented
    (line,) = latent_ct_not_measured(no_volume)
    assert "not measured by this run (`--volume_sizes` without 256)" in line


def test_targets_markdown() -> None:
    targets = [target_entry("speed-up", 25, ">= 20", True), target_entry("memory ratio", 0.5, "<= 0.25", False)]
    assert targets[0] == {"name": "speed-up", "value": 25.0, "target": ">= 20", "met": True}
    text = targets_markdown(targets, ["peak memory: not measured by this bench (see x.md)"])
    assert text.startswith(TARGETS_HEADING + "\n\n| target | value | wanted | met |")
    assert "| speed-up | 25.000 | >= 20 | yes |" in text and "| memory ratio | 0.500 | <= 0.25 | no |" in text
    assert text.endswith("\n\n- peak memory: not measured by this bench (see x.md)")
    assert not targets_markdown(targets).endswith("\n")


@pytest.mark.parametrize("met", [True, False])
def test_target_entry_stores_plain_types(met: bool) -> None:
    entry = target_entry("x", np.float32(0.5), "<= 1", np.bool_(met))
    assert type(entry["value"]) is float and type(entry["met"]) is bool and entry["met"] is met
