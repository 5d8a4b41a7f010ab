"""Tests of tools/bench/utility.py: the issue's targets are computed from the measured figures."""

from __future__ import annotations

import pytest

from tools.bench.utility import classification_targets, utility_targets


def arm(dice: float) -> dict:
    return {"metrics": {"dice": {"mean": dice}}}


def results(**dice: float) -> dict:
    return {
        "arms": {name.replace("_", "+").replace("real+all", "real_all"): arm(v) for name, v in dice.items()},
        "sanity": {"ratio": 0.95},
        "settings": {"seeds": [0, 1, 2]},
        "cases": {"test": ["t0", "t1"], "generator": ["g0"], "seeding": ["g0"]},
    }


def test_targets_follow_the_measured_figures() -> None:
    measured = results(real=0.6, real_aug=0.8, real_syn4=0.7, real_syn4_aug=0.75, syn4=0.5)
    targets = {t["name"]: t for t in utility_targets(measured, rerun_difference=0.0, wall_minutes=12.0)}
    better = targets["scarce regime: real+syn4 Dice - real Dice"]
    assert better["value"] == pytest.approx(0.1) and better["met"]
    augmented = targets["does real+syn4+aug beat real+aug? Dice difference (reported either way)"]
    assert augmented["value"] == pytest.approx(-0.05) and not augmented["met"]
    assert all(t["met"] for name, t in targets.items() if name != augmented["name"])


def test_targets_report_failures() -> None:
    measured = results(real=0.6, real_aug=0.8, real_syn4=0.5, real_syn4_aug=0.9)
    measured["sanity"]["ratio"] = 0.8
    measured["cases"]["seeding"] = ["t1"]
    targets = utility_targets(measured, rerun_difference=1e-3, wall_minutes=31.0)
    assert [t["met"] for t in targets] == [False, False, False, True, True, False, False]
    assert targets[-1]["value"] == 1


def classification_results(difference: float, positives: int = 5) -> dict:
    compared = {"difference": difference, "ci_low": difference - 0.1, "ci_high": difference + 0.1, "p_bonferroni": 0.2}
    return {
        "comparisons": {"vs real (test)": {"real+syn50": {"auc": compared, "f1": {**compared, "difference": -0.01}}}},
        "settings": {"seeds": [0, 1, 2], "real_count": 50, "positive_fraction": 0.1},
        "cases": {
            "test": ["t0"], "shifted": ["s0"], "generator": ["g0"], "seeding": ["g0"], "training": ["g0"],
            "scarce_real_positives": positives,
        },
    }  # fmt: skip


def test_classification_targets_report_the_measured_sign() -> None:
    targets = classification_targets(classification_results(-0.02), rerun_difference=0.0, wall_minutes=9.0)
    auc = next(t for t in targets if t["name"].startswith("downstream, held-out test set: AUC of real+syn50"))
    assert auc["value"] == -0.02 and auc["ci_low"] == pytest.approx(-0.12) and not auc["met"]
    assert [t["met"] for t in targets] == [False, False, True, True, True, True, True]
    measured = classification_results(0.05, positives=4)
    measured["cases"]["shifted"] = ["g0"]
    targets = classification_targets(measured, rerun_difference=0.0, wall_minutes=9.0)
    assert [t["met"] for t in targets] == [True, False, False, True, True, False, True]


@pytest.mark.parametrize("bundle", ["semantic_mri", "paired_petct", "latent_ct", "mammo_guidance"])
def test_committed_utility_targets_follow_their_own_figures(bundle: str) -> None:
    """Each committed ``<bundle>_utility.json`` holds the targets its own figures give (no verdict edited by hand)."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / f"{bundle}_utility.json"
    raw = json.loads(path.read_text())
    wall_minutes = sum(raw["wall_seconds"]) / 60.0
    if "rerun_max_probability_difference" in raw:
        targets = classification_targets(raw["results"], raw["rerun_max_probability_difference"], wall_minutes)
    else:
        targets = utility_targets(raw["results"], raw["rerun_max_dice_difference"], wall_minutes)
    assert json.loads(json.dumps(targets)) == raw["targets"]
