"""Tests of paired sampling (files, units, seeding, no overwrite) and paired evaluation (pairing metrics, report)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from common.inferers.paired import PairedDiffusionInferer
from common.metrics.pairing import pairing_metrics
from common.schedulers import RespacedDDPMScheduler
from common.workflows.paired_evaluation import PairedEvaluation, load_sample_triples
from common.workflows.paired_sampling import PairedSampling, from_unit_range, slice_affine, to_unit_range

MODALITIES = ("ct", "pet", "mask")


class _Constant(nn.Module):
    """Predicts ``value * x`` as noise: deterministic, cheap, enough to drive the sampler."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x, timesteps, conditions):
        return self.value * x + 0.0 * conditions.sum()


def _sampling(tmp_path: Path, **options) -> PairedSampling:
    network = nn.ModuleDict({m: _Constant(0.5) for m in MODALITIES})
    scheduler = RespacedDDPMScheduler(50, "linear_beta")
    settings = {
        "network": network,
        "inferer": PairedDiffusionInferer(DDPMScheduler(50)),
        "scheduler": scheduler,
        "num_inference_steps": 5,
        "output_dir": str(tmp_path / "out"),
        "spatial_size": (8, 8),
        "pixdim": (2.0, 2.0, 3.0),
        "num_samples": 3,
        "batch_size": 2,
        "verbose": False,
        **options,
    }
    return PairedSampling(**settings)


def _reference(n: int = 2, size: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            **{m: torch.rand(1, size, size, generator=generator) * 2 - 1 for m in MODALITIES},
            "case_id": f"case{i}",
            "slice_index": 10 + i,
        }
        for i in range(n)
    ]


def test_unit_range_round_trip_and_affine():
    hu = torch.tensor([-2000.0, -1000.0, 0.0, 500.0, 3000.0])
    unit = to_unit_range(hu, (-1000, 1000))
    torch.testing.assert_close(unit, torch.tensor([-1.0, -1.0, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(from_unit_range(unit, (-1000, 1000)), hu.clamp(-1000, 1000))
    affine = slice_affine((4, 6), (2.0, 2.0, 3.0))
    np.testing.assert_allclose(np.diag(affine), [2.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(affine[:3, 3], [-3.0, -5.0, 0.0])
    with pytest.raises(ValueError, match="high > low"):
        to_unit_range(hu, (1, 1))
    with pytest.raises(ValueError, match="2D spatial_size"):
        slice_affine((4, 4, 4), (1, 1, 1))


def test_sampling_writes_triples_in_output_units(tmp_path: Path):
    written = _sampling(tmp_path).run()
    assert [e["case_id"] for e in written] == [f"synthetic_seed0_000{i}" for i in range(3)]
    out = tmp_path / "out"
    for entry in written:
        ct, pet, mask = nib.load(entry["image"][0]), nib.load(entry["image"][1]), nib.load(entry["label"])
        assert ct.shape == pet.shape == mask.shape == (8, 8, 1)
        np.testing.assert_allclose(ct.affine, pet.affine)
        np.testing.assert_allclose(ct.affine, mask.affine)
        assert ct.get_fdata().min() >= -1000 and ct.get_fdata().max() <= 1000
        assert pet.get_fdata().min() >= 0 and pet.get_fdata().max() <= 10
        assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}
    datalist = json.loads((out / "dataset.json").read_text())
    assert datalist["numTraining"] == 3 and datalist["training"][0]["image"][0].startswith("imagesTr/")
    assert (out / "preview_seed0.png").read_bytes().startswith(b"\x89PNG")
    triples = load_sample_triples(out)
    assert len(triples) == 3 and triples[0]["ct"].shape == (1, 8, 8)
    assert [t["case_id"] for t in load_sample_triples(out, max_samples=2)] == [e["case_id"] for e in written[:2]]


def test_load_sample_triples_wants_a_ct_and_a_pet_per_entry(tmp_path: Path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "a__CT.nii.gz", "label": "a.nii.gz"}]}))
    with pytest.raises(ValueError, match=r"training\[0\]: expected 'image': \[CT path, PET path\]"):
        load_sample_triples(tmp_path)


def test_sampling_is_seeded_and_never_overwrites(tmp_path: Path):
    a = _sampling(tmp_path / "a").run()
    b = _sampling(tmp_path / "b").run()
    c = _sampling(tmp_path / "c", seed=1).run()
    first = nib.load(a[0]["image"][1]).get_fdata()
    np.testing.assert_array_equal(first, nib.load(b[0]["image"][1]).get_fdata())
    assert not np.array_equal(first, nib.load(c[0]["image"][1]).get_fdata())
    before = Path(a[0]["image"][1]).stat().st_mtime_ns
    assert _sampling(tmp_path / "a").run() == a  # the same run again: everything is on disk, nothing is redone
    assert Path(a[0]["image"][1]).stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="field 'seed' differs .this run: 2, found: 0.; samples are never over"):
        _sampling(tmp_path / "a", seed=2).run()


def test_seeded_sampling_records_its_references(tmp_path: Path):
    written = _sampling(tmp_path, reference_data=_reference(2), seed_fraction=0.5).run()
    assert [e["seeded_from"] for e in written] == ["case0:10", "case1:11", "case0:10"]


def test_sampling_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="needs real reference triples"):
        _sampling(tmp_path, seed_fraction=0.8)
    with pytest.raises(ValueError, match="only correct with all"):
        _sampling(tmp_path, scheduler=DDPMScheduler(50), num_inference_steps=10)
    with pytest.raises(ValueError, match="num_samples and batch_size"):
        _sampling(tmp_path, num_samples=0)
    bad = [{**item, "ct": torch.zeros(1, 4, 4)} for item in _reference(1)]
    with pytest.raises(ValueError, match="must have shape"):
        _sampling(tmp_path, reference_data=bad, seed_fraction=0.5).run()
    with pytest.raises(
        ValueError, match="config keys 'refine_rounds'/'refine_fraction': refine_fraction 0.01: no sampling timestep"
    ):
        _sampling(tmp_path, refine_rounds=1, refine_fraction=0.01)  # 5 steps of 50: nothing kept in (0, 0]
    with pytest.raises(ValueError, match="config keys 'refine_rounds'/'refine_fraction': refine_rounds must be"):
        _sampling(tmp_path, refine_rounds=-2)
    with pytest.raises(ValueError, match="config keys 'refine_rounds'/'refine_fraction': refine_rounds must be"):
        _sampling(tmp_path, refine_rounds=None)
    with pytest.raises(ValueError, match="config key 'refine_fraction': 0.9 must restart refinement below the seeded"):
        _sampling(tmp_path, reference_data=_reference(1), seed_fraction=0.5, refine_rounds=1, refine_fraction=0.9)


def test_refined_sampling_changes_the_triples(tmp_path: Path):
    plain = _sampling(tmp_path / "a", num_samples=2)
    refined = _sampling(tmp_path / "b", num_samples=2, refine_rounds=2, refine_fraction=0.5)
    a, _ = plain.generate(0, 2)
    b, _ = refined.generate(0, 2)
    for m in MODALITIES:
        assert a[m].shape == b[m].shape and not torch.allclose(a[m], b[m])


def test_pairing_metrics_by_hand():
    ct = torch.full((2, 1, 4, 4), -1000.0)
    ct[:, :, 1:3, :] = 40.0  # body: rows 1-2
    pet = torch.zeros(2, 1, 4, 4)
    pet[0, 0, 1, 1:3] = 8.0  # hot spot of two pixels
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 1, 1] = 1  # one pixel, inside the hot spot and the body
    mask[0, 0, 0, 0] = 1  # one pixel outside both
    metrics = pairing_metrics(ct, pet, mask, hot_spot_suv=4.0, body_hu=-500.0)
    assert metrics["pairing_dice_mean"] == pytest.approx(2 * 1 / (2 + 2))
    assert metrics["pairing_both_empty"] == 1  # the second triple
    assert metrics["mask_in_body"] == pytest.approx(0.5)
    assert metrics["empty_mask_fraction"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="share a"):
        pairing_metrics(ct, pet[:1], mask, 4.0, -500.0)


def _held_out(n: int = 3, size: int = 16) -> list[dict]:
    """Real slices of cases that seeded nothing (``held<i>``)."""
    return [{**item, "case_id": f"held{i}"} for i, item in enumerate(_reference(n, size))]


def test_paired_evaluation_report(tmp_path: Path):
    reference = _reference(3, size=16)
    _sampling(tmp_path, reference_data=reference, seed_fraction=0.5, spatial_size=(16, 16)).run()
    results = PairedEvaluation(str(tmp_path / "out"), _held_out(), str(tmp_path / "eval")).run()
    assert results["n_samples"] == 3 and results["n_seeded"] == 3
    assert results["ct"]["n_pairs"] == 3 and "mmd" in results["pet"]
    assert set(results["pairing_samples"]) >= {"pairing_dice_mean", "mask_in_body", "empty_mask_fraction"}
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["n_samples"] == 3
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        PairedEvaluation(str(tmp_path), reference, str(tmp_path / "e2")).run()
    with pytest.raises(ValueError, match="no real slices"):
        PairedEvaluation(str(tmp_path / "out"), [], str(tmp_path / "e3")).run()


def test_paired_evaluation_never_compares_with_the_seeding_cases(tmp_path: Path):
    """A seeded sample is compared with held-out slices in order, never with its seed; real slices from a seeding case
    stop the evaluation with an error naming the shared case ids."""
    reference = _reference(2, size=16)
    _sampling(tmp_path, reference_data=reference, seed_fraction=0.5, spatial_size=(16, 16)).run()
    samples = load_sample_triples(tmp_path / "out")
    held_out = _held_out(2)
    evaluation = PairedEvaluation(str(tmp_path / "out"), held_out, str(tmp_path / "eval"))
    assert [item["case_id"] for item in evaluation.real_items(samples)] == ["held0", "held1", "held0"]
    overlapping = [*held_out, reference[1]]
    with pytest.raises(ValueError, match=r"config key 'real_split'.*\['case1'\].*seeded samples"):
        PairedEvaluation(str(tmp_path / "out"), overlapping, str(tmp_path / "e2")).run()
