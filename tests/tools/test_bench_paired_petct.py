"""Statistics of the paired_petct benchmark: standard errors, the difference to the full sampler, the target verdict."""

from __future__ import annotations

import math

import pytest
import torch

from common.metrics.pairing import pairing_metrics
from tools.bench.harness import mean_standard_error
from tools.bench.paired_petct import (
    _steps_argument,
    bench_paired_petct,
    bench_paired_petct_feedback,
    compare_to_reference,
    feedback_effect,
    paired_petct_targets,
    target_verdict,
)


def _triples(dice_like: list[tuple[int, int, int]]) -> dict:
    """pairing_metrics of 4 x 4 slices built from (mask pixels, hot pixels, shared pixels) per triple."""
    masks, pets = [], []
    for mask_pixels, hot_pixels, shared in dice_like:
        mask, pet = torch.zeros(16), torch.zeros(16)
        mask[:mask_pixels] = 1.0
        start = mask_pixels - shared
        pet[start : start + hot_pixels] = 10.0
        masks.append(mask.view(1, 4, 4))
        pets.append(pet.view(1, 4, 4))
    mask, pet = torch.stack(masks), torch.stack(pets)
    return pairing_metrics(torch.zeros_like(pet), pet, mask, hot_spot_suv=4.0, body_hu=-500.0)


def test_standard_error_counts_only_scored_triples() -> None:
    # Dice 1 (identical), 0.5 (two pixels each, one shared) and a both-empty triple, which carries no score
    metrics = _triples([(2, 2, 2), (2, 2, 1), (0, 0, 0)])
    scored, se = mean_standard_error(metrics, 3)
    assert scored == 2
    assert metrics["pairing_dice_mean"] == pytest.approx(0.75)
    # sample standard deviation of (1, 0.5) is sqrt(0.125); over sqrt(2)
    assert se == pytest.approx(math.sqrt(0.125) / math.sqrt(2))


def test_standard_error_needs_two_scored_triples() -> None:
    scored, se = mean_standard_error(_triples([(2, 2, 2), (0, 0, 0)]), 2)
    assert scored == 1 and math.isnan(se)


def test_difference_adds_errors_in_quadrature() -> None:
    full = {"pairing_dice_mean": 0.5, "pairing_dice_se": 0.03}
    fast = {"pairing_dice_mean": 0.6, "pairing_dice_se": 0.04}
    difference, se = compare_to_reference(fast, full)
    assert difference == pytest.approx(0.1) and se == pytest.approx(0.05)


def _row(name: str, evaluations: int, mean: float, seed_fraction: float | None) -> dict:
    return {
        "sampler": name,
        "evaluations_per_network": evaluations,
        "pairing_dice_mean": mean,
        "pairing_dice_se": 0.03,
        "seed_fraction": seed_fraction,
    }


def test_verdict_judges_seeded_fast_samplers_only() -> None:
    full = _row("full", 1000, 0.5, None)
    samplers = [
        full,
        _row("fast unseeded", 25, 0.9, None),
        _row("fast seeded, better", 20, 0.55, 0.8),
        _row("fast seeded, worse", 20, 0.45, 0.8),
        _row("seeded, too many evaluations", 100, 0.6, 0.8),
    ]
    lines = target_verdict(samplers, full).splitlines()
    assert len(lines) == 3  # the full and the unseeded sampler are not judged
    assert "fast seeded, better: 50x fewer" in lines[0] and lines[0].endswith("target met.")
    assert "+1.2 standard errors" in lines[0]
    assert lines[1].endswith("target not met.") and "-0.050" in lines[1]
    assert "10x fewer" in lines[2] and lines[2].endswith("target not met.")


def test_targets_list_judges_seeded_fast_samplers_only() -> None:
    samplers = [
        _row("full", 1000, 0.5, None),
        _row("fast unseeded", 25, 0.75, None),
        _row("seeded, better", 40, 0.625, 0.8),
        _row("seeded, level, 20x", 50, 0.5, 0.8),
        _row("seeded, worse", 20, 0.375, 0.8),
        _row("seeded, better, too many evaluations", 51, 0.75, 0.8),
    ]
    targets = paired_petct_targets({"samplers": samplers})
    assert all(list(t) == ["name", "value", "target", "met"] for t in targets)
    assert [t["met"] for t in targets] == [True, True, False, False]  # the full and the unseeded one are not judged
    assert [t["value"] for t in targets] == [0.125, 0.0, -0.125, 0.25]
    assert targets[0]["name"].startswith("seeded fast sampling, seeded, better (25x fewer evaluations")
    assert "+2.9 standard errors" in targets[0]["name"]  # 0.125 / (0.03 * sqrt(2))


def test_steps_argument_reproduces_the_command_line() -> None:
    assert _steps_argument([25]) == "25"
    assert _steps_argument([25, 50]) == '"[25,50]"'


def test_verdict_without_spread() -> None:
    full = {**_row("full", 1000, 1.0, None), "pairing_dice_se": 0.0}
    seeded = {**_row("seeded", 20, 1.0, 0.8), "pairing_dice_se": 0.0}
    assert target_verdict([full, seeded], full) == (
        "- seeded: 50x fewer evaluations, pairing Dice +0.000 (n/a standard errors) vs the full sampler: target met."
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"train_epochs": 0}, "train_epochs must be a positive number of epochs, got 0"),
        ({"num_samples": 1}, "num_samples must be at least 2"),
        ({"full_samples": 1}, "full_samples must be at least 2"),
        ({"fast_steps": [25, 0]}, "fast_steps must be a positive number of steps"),
        ({"fast_steps": []}, "fast_steps must be a positive number of steps"),
        ({"refine_rounds": -1}, "refine_rounds must be a whole number >= 0 and refine_fraction in"),
        ({"refine_rounds": 1.5}, "refine_rounds must be a whole number"),
        ({"refine_fraction": 0.03}, r"--refine_fraction with --fast_steps 25: refine_fraction 0.03: no sampling"),
        ({"refine_fraction": 1.0}, r"refine_fraction in \(0, 1\), got 2 and 1.0"),
        ({"feedback": "maybe"}, "feedback must be true or false, got 'maybe'"),
    ],
)
def test_bench_rejects_bad_options_before_any_work(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bench_paired_petct(**options)


def test_feedback_effect_in_standard_errors() -> None:
    off = {"pairing_dice_mean": 0.5, "pairing_dice_se": 0.03}
    on = {"pairing_dice_mean": 0.65, "pairing_dice_se": 0.04}
    effect = feedback_effect(off, on)
    assert effect["difference"] == pytest.approx(0.15) and effect["difference_se"] == pytest.approx(0.05)
    assert effect["standard_errors"] == pytest.approx(3.0) and not effect["within_noise"]
    assert feedback_effect(off, {**on, "pairing_dice_mean": 0.45})["within_noise"]  # -1 standard error
    assert feedback_effect({**off, "pairing_dice_se": 0.0}, {**on, "pairing_dice_se": 0.0})["within_noise"]  # no spread


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sides": "both"}, "sides must be 'off', 'on' or both, got 'both'"),
        ({"sides": []}, "sides must be 'off', 'on' or both"),
        ({"train_epochs": 0}, "train_epochs must be a positive number of epochs, got 0"),
        ({"num_samples": 1}, "num_samples must be at least 2"),
        ({"sampler": "ddim"}, "sampler must be one of"),
    ],
)
def test_feedback_bench_rejects_bad_options_before_any_work(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bench_paired_petct_feedback(**options)


def test_choices_bench_names_a_missing_checkpoint(tmp_path) -> None:
    from tools.bench.paired_petct_choices import bench_paired_petct_choices

    with pytest.raises(FileNotFoundError, match="missing.pt'.*no such training checkpoint"):
        bench_paired_petct_choices(ckpt_path=str(tmp_path / "missing.pt"), workdir=str(tmp_path))


def test_choices_bench_needs_a_training_checkpoint_not_model_pt(tmp_path) -> None:
    from tools.bench.paired_petct_choices import bench_paired_petct_choices

    weights_only = tmp_path / "model.pt"
    torch.save({"ct.weight": torch.zeros(1)}, weights_only)
    with pytest.raises(KeyError, match=r"lacks \['network', 'ema'\].*checkpoint_epoch=N.pt"):
        bench_paired_petct_choices(ckpt_path=str(weights_only), workdir=str(tmp_path))


def test_choices_bench_switches_clipping_of_the_selected_sampler() -> None:
    from tools.bench.paired_petct_choices import CHOICE_ARMS, _clip_key

    assert _clip_key("ddpm") == "noise_scheduler#clip_sample"
    assert _clip_key("respaced_ddpm") == "samplers#respaced_ddpm#clip_sample"
    # the first arm is the bundle default (EMA, clipped); each other arm changes exactly one of the two
    default, *others = CHOICE_ARMS.values()
    assert default == ("ema", True)
    assert all(sum(a != b for a, b in zip(arm, default)) == 1 for arm in others)
