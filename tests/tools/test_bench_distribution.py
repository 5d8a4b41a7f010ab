"""Tests of tools/bench/distribution.py: the targets and the table follow the measured figures."""

from __future__ import annotations

from tools.bench.distribution import distribution_table, distribution_targets

FDS = "FDS (t-SNE of the images, KL real || synthetic)"
FID = "FID (project-trained 2D encoder: a U-Net)"


def test_targets_and_table_follow_the_measured_figures() -> None:
    rows = [
        ("ct+pet", "64 samples vs 66 test slices", {FDS: 17.4, FID: 0.2}),
        ("ct+pet", "floor", {FDS: 0.27, FID: 0.02}),
    ]
    targets = distribution_targets([FDS, FID], rows)
    assert [t["met"] for t in targets] == [True, True] and targets[0]["value"] == [FID]
    lines = distribution_table("set", [FDS, FID], rows, targets)
    assert "| set | sets | FDS (t-SNE of the images, KL real \\|\\| synthetic) | FID" in lines[2]
    assert lines[4] == "| ct+pet | 64 samples vs 66 test slices | 17.4 | 0.2 |" and lines[5].endswith("| 0.27 | 0.02 |")
    assert lines[-1].endswith("(target finite: met)")


def test_targets_catch_a_paper_name_and_a_missing_number() -> None:
    paper = "FID (paper, Inception-v3 pool)"
    rows = [("ct", "samples", {FDS: float("nan"), paper: 1.0}), ("ct", "floor", {FDS: 0.1, paper: 0.5})]
    assert [t["met"] for t in distribution_targets([FDS, paper], rows)] == [False, False]
    rows = [("ct", "samples", {FDS: "not computed: 2 samples", FID: 1.0})]
    assert [t["met"] for t in distribution_targets([FDS, FID], rows)] == [True, False]
