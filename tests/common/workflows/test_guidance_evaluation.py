"""Tests of common.workflows.guidance_evaluation: the figures per sample and per lesion kind (masses read back,
calcification clusters not), on a hand-made folder of guided samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.io import atomic_write_nifti, read_nifti
from common.workflows.guidance_evaluation import READ_BACK_SKIPPED, GuidanceEvaluation, sample_lesion_kind

SIZE = 32


def write_samples(root: Path) -> Path:
    """A reference and three samples written as an inference run would: no lesion, a mass, a calcification cluster
    (the samples in [0, 1], their lesion masks and provenance records)."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    reference = np.clip(1.0 - np.hypot(rows - 16, cols) / 30.0, 0.0, 1.0) * 0.6  # a breast-like ramp from the left
    atomic_write_nifti(reference[None].astype(np.float32), np.eye(4), root / "reference.nii.gz")
    mass = np.hypot(rows - 14, cols - 10) <= 2.5
    specks = np.zeros((SIZE, SIZE), dtype=bool)
    specks[[12, 15, 17, 13], [20, 22, 19, 24]] = True
    samples = {"plain": (None, np.zeros_like(mass)), "mass": ("mass", mass), "calc": ("calcification", specks)}
    entries = []
    for name, (kind, mask) in samples.items():
        image = reference + 0.35 * mask
        record = {
            "anatomy_reference": str(root / "reference.nii.gz"),
            "conditions": {"anatomy": {"factor": 4}},
            "cancer": int(kind is not None),
            "lesion": kind or "none",
        }
        if kind is not None:
            corner = [8, 6] if kind == "mass" else [10, 18]
            record["conditions"]["pathology"] = {"corner": corner, "patch_size": [8, 8], "lesion": kind}
        paths = {
            "image": f"imagesTr/{name}.nii.gz",
            "label": f"labelsTr/{name}.nii.gz",
            "provenance": f"provenance/{name}.json",
        }
        atomic_write_nifti(image[None].astype(np.float32), np.eye(4), root / paths["image"])
        atomic_write_nifti(mask[None].astype(np.uint8), np.eye(4), root / paths["label"])
        (root / "provenance").mkdir(exist_ok=True)
        (root / paths["provenance"]).write_text(json.dumps(record))
        entries.append({"case_id": name, **paths, "cancer": record["cancer"], "lesion": record["lesion"]})
    (root / "dataset.json").write_text(json.dumps({"training": entries}))
    return root


def load_reference(entry: dict) -> dict:
    return {"image": torch.as_tensor(read_nifti(entry["image"]).numpy() * 2.0 - 1.0)[None]}  # (1, H, W)


def test_lesion_dice_for_masses_only_and_figures_by_kind(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "samples")
    evaluation = GuidanceEvaluation(
        str(samples), str(tmp_path / "eval"), load_reference, anatomy_factor=4, read_sigma=3.0
    )
    results = evaluation.run()
    per_sample = results["per_sample"]
    assert [per_sample[n]["lesion"] for n in ("plain", "mass", "calc")] == ["none", "mass", "calcification"]
    assert per_sample["mass"]["lesion_dice"] > 0.5 and "lesion_dice" not in per_sample["calc"]
    assert "seam_ratio" in per_sample["calc"] and set(per_sample["plain"]) == {"low_pass_psnr", "lesion"}
    assert results["summary"]["lesion_dice"]["n"] == 1 and results["summary"]["seam_ratio"]["n"] == 2
    by_kind = results["by_lesion_kind"]
    assert set(by_kind) == {"mass", "calcification"} and by_kind["calcification"]["lesion_dice"] == "not read back"
    assert by_kind["mass"]["lesion_dice"]["mean"] == pytest.approx(per_sample["mass"]["lesion_dice"])
    assert by_kind["calcification"]["samples"] == 1 and by_kind["calcification"]["seam_ratio"]["n"] == 1
    assert "calcification" in results["lesion_dice_rule"] and READ_BACK_SKIPPED == ("calcification",)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "by_lesion_kind.calcification.lesion_dice | not read back" in report
    assert "by_lesion_kind.mass.lesion_dice.mean" in report


def test_lesion_kind_of_a_record() -> None:
    assert sample_lesion_kind({"conditions": {"anatomy": {}}}) == "none"
    assert sample_lesion_kind({"lesion": "calcification", "conditions": {"pathology": {}}}) == "calcification"
    assert sample_lesion_kind({"conditions": {"pathology": {"lesion": "mass"}}}) == "mass"
    assert sample_lesion_kind({"conditions": {"pathology": {"corner": [0, 0]}}}) == "unspecified"  # an older record
