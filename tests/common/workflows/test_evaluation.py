"""Tests of common.workflows.evaluation: sample-to-mask ids and the sample evaluation workflow on a tiny synthetic
folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.data.layouts import case_paths, write_datalist
from common.io import atomic_write_nifti
from common.workflows.evaluation import SampleEvaluation, mask_id_of_sample

SHAPE = (12, 12, 12)  # evaluate_sets' SSIM window is 11 voxels
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.mark.parametrize(
    "case_id, mask_id",
    [
        ("head_003_sample001", "head_003"),
        ("head_003_sample12345", "head_003"),
        ("head_003", "head_003"),
        ("a_sample1_sample002", "a_sample1"),
        ("head_003_sampleX", "head_003_sampleX"),
        ("sample001", "sample001"),
    ],
)
def test_mask_id_of_sample(case_id: str, mask_id: str) -> None:
    assert mask_id_of_sample(case_id) == mask_id


def tumour_label() -> np.ndarray:
    label = np.zeros((1, *SHAPE), np.uint8)
    label[0, 1:11, 1:11, 1:11] = 1
    label[0, 4:8, 3:8, 5:9] = 2
    return label


def write_case(root: Path, case_id: str, image: np.ndarray) -> dict:
    images, label = case_paths(root, case_id, ["t1c"], "images_labels")
    atomic_write_nifti(image.astype(np.float32), AFFINE, images[0])
    atomic_write_nifti(tumour_label(), AFFINE, label)
    return {"case_id": case_id, "image": [str(images[0])], "label": str(label)}


def make_folders(root: Path, sample_ids: list[str], speck: bool = False) -> tuple[Path, Path]:
    """Real cases r0..r2 (noise) and samples that are +1 inside the tumour (label 2) and -1 elsewhere (with
    ``speck``, also +1 in a 2x2x2 block of the head away from the tumour)."""
    real_dir, sample_dir = root / "real", root / "samples"
    rng = np.random.default_rng(0)
    for index in range(3):
        write_case(real_dir, f"r{index}", rng.uniform(-1, 1, size=(1, *SHAPE)))
    bright_tumour = np.where(tumour_label() == 2, 1.0, -1.0)
    if speck:
        bright_tumour[0, 1:3, 9:11, 1:3] = 1.0
    samples = [write_case(sample_dir, i, bright_tumour + 0.01 * n) for n, i in enumerate(sample_ids)]
    write_datalist(sample_dir, samples, name="synthetic")
    return sample_dir, real_dir


def load(case: dict) -> dict:
    image = np.stack([nib.load(p).get_fdata(dtype=np.float32) for p in case["image"]])
    label = np.asanyarray(nib.load(case["label"]).dataobj)[None].astype(np.float32)
    return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}


def evaluation(sample_dir: Path, real_dir: Path, out: Path, **overrides: object) -> SampleEvaluation:
    options: dict = {"modalities": ["t1c"], "real_preprocessing": load, "sample_preprocessing": load}
    return SampleEvaluation(str(sample_dir), str(real_dir), str(out), **{**options, **overrides})


SAMPLE_IDS = ["r0_sample000", "r0_sample001", "r1_sample000", "x9_sample000"]


def test_pairs_match_samples_with_real_cases_by_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sample_dir, real_dir = make_folders(tmp_path, SAMPLE_IDS)
    caplog.set_level(logging.WARNING, logger="common")
    pairs = evaluation(sample_dir, real_dir, tmp_path / "eval").pairs()
    assert [(s["case_id"], r["case_id"]) for s, r in pairs] == [
        ("r0_sample000", "r0"),
        ("r0_sample001", "r0"),
        ("r1_sample000", "r1"),
    ]
    assert pairs[2][1]["image"] == [str(real_dir / "imagesTr" / "r1.nii.gz")]
    assert any("1 sample(s)" in r.getMessage() and "not cases of" in r.getMessage() for r in caplog.records)


def test_pairs_max_samples(tmp_path: Path) -> None:
    sample_dir, real_dir = make_folders(tmp_path, SAMPLE_IDS)
    pairs = evaluation(sample_dir, real_dir, tmp_path / "eval", max_samples=2).pairs()
    assert [s["case_id"] for s, _ in pairs] == ["r0_sample000", "r0_sample001"]


def test_fewer_than_two_pairs_is_an_error(tmp_path: Path) -> None:
    sample_dir, real_dir = make_folders(tmp_path, ["r0_sample000", "x9_sample000"])
    with pytest.raises(ValueError, match=r"sample_dir '.*samples': 1 sample\(s\) pair .* at least 2 are needed"):
        evaluation(sample_dir, real_dir, tmp_path / "eval").run()
    assert not (tmp_path / "eval").exists()


def test_missing_sample_dir_names_the_config_key(tmp_path: Path) -> None:
    _, real_dir = make_folders(tmp_path, ["r0_sample000"])
    with pytest.raises(FileNotFoundError, match="config key 'sample_dir'"):
        evaluation(tmp_path / "absent", real_dir, tmp_path / "eval").run()


def test_shape_mismatch_is_an_error(tmp_path: Path) -> None:
    sample_dir, real_dir = make_folders(tmp_path, SAMPLE_IDS)

    def cropped(case: dict) -> dict:
        return {"image": load(case)["image"][..., :10]}

    with pytest.raises(ValueError, match=r"r0_sample000.nii.gz' has shape \(1, 12, 12, 12\) .* \(1, 12, 12, 10\)"):
        evaluation(sample_dir, real_dir, tmp_path / "eval", real_preprocessing=cropped).run()


def test_run_writes_the_report(tmp_path: Path) -> None:
    sample_dir, real_dir = make_folders(tmp_path, SAMPLE_IDS)
    out = tmp_path / "eval"
    results = evaluation(sample_dir, real_dir, out, title="Tiny check").run()
    report = json.loads((out / "report.json").read_text())
    for key in (
        "mse_mean",
        "psnr_mean",
        "ssim_mean",
        "ms_ssim_to_real_mean",
        "mmd",
        "ms_ssim_diversity_fake",
        "ms_ssim_diversity_real",
    ):
        assert isinstance(report[key], float)
    assert report["n_pairs"] == 3 and report["n_real_cases"] == 2
    assert report["spatial_shape"] == list(SHAPE)
    assert report["sample_dir"] == str(sample_dir) and report["real_dir"] == str(real_dir)
    assert not any(key.startswith("lesion_dice") for key in report)
    assert sorted(report) == sorted(results)
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# Tiny check\n") and "| n_real_cases | 2 |" in markdown


@pytest.mark.parametrize("threshold, expected", [(0.5, 1.0), (2.0, 0.0)])
def test_lesion_rule_adds_lesion_dice(tmp_path: Path, threshold: float, expected: float) -> None:
    sample_dir, real_dir = make_folders(tmp_path, SAMPLE_IDS)
    rule = {"threshold": threshold, "labels": [2], "channel": 0}
    results = evaluation(sample_dir, real_dir, tmp_path / "eval", lesion_rule=rule).run()
    assert results["lesion_dice_mean"] == pytest.approx(expected)
    assert results["lesion_dice_std"] == pytest.approx(0.0)
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["lesion_dice_mean"] == pytest.approx(expected)


@pytest.mark.parametrize("largest, expected", [(False, 2 * 80 / (80 + 88)), (True, 1.0)])
def test_lesion_rule_largest_ignores_a_bright_speck_away_from_the_tumour(
    tmp_path: Path, largest: bool, expected: float
) -> None:
    sample_dir, real_dir = make_folders(tmp_path, SAMPLE_IDS, speck=True)  # tumour 4x5x4 = 80 voxels, speck 8
    rule = {"threshold": 0.5, "labels": [2], "largest": largest}
    results = evaluation(sample_dir, real_dir, tmp_path / "eval", lesion_rule=rule).run()
    assert results["lesion_dice_mean"] == pytest.approx(expected)


def test_real_beside_sample_preview_and_summary(tmp_path: Path) -> None:
    sample_dir, real_dir = make_folders(tmp_path, SAMPLE_IDS)
    workflow = evaluation(sample_dir, real_dir, tmp_path / "eval", lesion_rule={"threshold": 0.5, "labels": [2]})
    results = workflow.run()
    png = (tmp_path / "eval" / "real_vs_sample.png").read_bytes()
    # per pair (3 samples pair with a real case): the real case's row, then the sample's with its lesion Dice (the
    # row names are the PNG's tEXt Description, stored uncompressed)
    assert png.startswith(b"\x89PNG") and (
        b"Description\0rows: real r0, r0_sample000, lesion Dice 1.00, real r0, r0_sample001, lesion Dice 1.00, "
        b"real r1, r1_sample000, lesion Dice 1.00" in png
    )
    summary = workflow.summary(results)
    assert "Dice 1.000" in summary and "real_vs_sample.png" in summary


def test_preview_can_be_turned_off(tmp_path: Path) -> None:
    sample_dir, real_dir = make_folders(tmp_path, SAMPLE_IDS)
    evaluation(sample_dir, real_dir, tmp_path / "eval", preview=False).run()
    assert (tmp_path / "eval" / "report.json").exists() and not (tmp_path / "eval" / "real_vs_sample.png").exists()
