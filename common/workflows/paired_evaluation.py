"""Evaluation of paired (CT, PET, mask) samples: per-modality image metrics and how well the modalities agree.

Image metrics (``common.metrics.report.evaluate_sets``, per modality, images in the training scale [-1, 1]): MSE, PSNR,
SSIM and MS-SSIM of sample ``i`` against held-out real slice ``i`` (real slices taken in order: the samples are not
paired with real slices, so these numbers only describe typical differences), MMD between the sets and diversity (mean
pairwise MS-SSIM within each set). A noise-seeded sample is never compared with the slice that seeded it: the real
slices must be held out from the seeding cases (``seeded_from`` in the sample datalist), else the evaluation stops with
an error naming the shared case ids. Optionally (``distribution``) the distribution metrics of the CT and PET sets:
FID, IS, FDS and DS (:class:`common.metrics.distribution.DistributionMetrics`).

Pairing metrics (computed on the samples and, as the reference, on the real slices):

- ``pairing_dice``: Dice between the mask and the PET hot spot (PET above ``hot_spot_suv``), per slice, mean over
  slices where either is non-empty (slices where both are empty are counted separately);
- ``mask_in_body``: share of mask pixels inside the body of the CT (CT above ``body_hu``), over all mask pixels;
- ``empty_mask_fraction``: share of slices whose mask is empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from common.metrics.distribution import DistributionMetrics
from common.metrics.pairing import pairing_metrics
from common.metrics.report import evaluate_sets
from common.workflows.base import EvaluationWorkflow, read_sample_datalist
from common.workflows.paired_sampling import from_unit_range, to_unit_range

__all__ = ["load_sample_triples", "seeding_case_id", "check_held_out", "PairedEvaluation"]


def seeding_case_id(seeded_from: str) -> str:
    """``"HN-CHUP-001:42"`` (case id : slice index, as ``PairedSampling`` records it) -> ``"HN-CHUP-001"``."""
    return str(seeded_from).rsplit(":", 1)[0]


def check_held_out(
    samples: Sequence[Mapping[str, Any]], real_data: Sequence[Mapping[str, Any]], config_key: str = "real_split"
) -> None:
    """Stop when a real slice to compare with comes from a case that seeded a sample (the split separation).

    Raises:
        ValueError: naming ``config_key`` and the case ids both sets share.
    """
    seeding = {seeding_case_id(s["seeded_from"]) for s in samples if s.get("seeded_from") is not None}
    shared = sorted(seeding & {str(item.get("case_id")) for item in real_data})
    if shared:
        raise ValueError(
            f"config key '{config_key}': the real slices to compare with come from case(s) {shared}, which also "
            "seeded samples (the samples' 'seeded_from'): a seeded sample must be compared with held-out cases only. "
            "Seed from the training split (inference 'seed_split: train') and compare with the test split."
        )


def _read_slice(path: str, key: str) -> torch.Tensor:
    try:
        data = np.asarray(nib.load(path).get_fdata(dtype=np.float32))
    except Exception as error:  # nibabel raises several types for damaged files
        raise ValueError(f"sample file '{path}' ({key}) could not be read as NIfTI: {error}") from error
    data = np.squeeze(data)
    if data.ndim != 2:
        raise ValueError(f"sample file '{path}' ({key}) must hold one 2D slice, got shape {data.shape}")
    return torch.from_numpy(np.ascontiguousarray(data))[None]


def _check_triple_entry(entry: Mapping[str, Any], where: str) -> None:
    if not isinstance(entry["image"], list) or len(entry["image"]) != 2:
        raise ValueError(f"{where}: expected 'image': [CT path, PET path] (as PairedSampling writes), found {entry}")


def load_sample_triples(sample_dir: str | Path, max_samples: int | None = None) -> list[dict[str, Any]]:
    """Read the triples listed in ``sample_dir/dataset.json`` (written by ``PairedSampling``) in output units.

    Returns:
        ``[{"case_id", "ct" (1, H, W) HU, "pet" (1, H, W) SUV, "mask" (1, H, W) {0, 1}, "seeded_from"?}]``.

    Raises:
        FileNotFoundError: ``sample_dir`` has no ``dataset.json``.
        ValueError: a malformed datalist; an entry's files are not readable single-slice NIfTI.
    """
    entries = read_sample_datalist(sample_dir, ("image", "label"), check_entry=_check_triple_entry)
    if max_samples:
        entries = entries[: int(max_samples)]
    triples = []
    for entry in entries:
        ct_path, pet_path = entry["image"]
        triple = {
            "case_id": entry.get("case_id"),
            "ct": _read_slice(ct_path, "ct"),
            "pet": _read_slice(pet_path, "pet"),
            "mask": _read_slice(entry["label"], "mask"),
        }
        if "seeded_from" in entry:
            triple["seeded_from"] = entry["seeded_from"]
        triples.append(triple)
    return triples


class PairedEvaluation(EvaluationWorkflow):
    """Compare a folder of paired samples with real slices and write ``report.json`` / ``report.md``.

    Args:
        sample_dir: an inference ``output_dir`` (with its ``dataset.json``).
        real_data: real items as the training data (dicts with ``ct``, ``pet``, ``mask`` (1, H, W) in [-1, 1] and
            ``case_id``/``slice_index``), e.g. the bundle's held-out ``PairedSliceDataset``.
        ct_window: HU window of the CT scaling. Default (-1000, 1000).
        pet_window: SUV window of the PET scaling. Default (0, 10).
        hot_spot_suv: PET hot-spot threshold (SUV). Default 4.0.
        body_hu: CT body threshold (HU). Default -500.
        distribution: the distribution metrics of the CT and PET sets against the real slices, or None.
        distribution_sets: the image sets the distribution metrics read: ``"ct"``, ``"pet"`` (one channel each) and
            ``"ct+pet"`` (the pair as two channels, e.g. for a feature network that takes CT and PET together, as
            the utility segmenter does: ``configs/fid_project.yaml``). Default ``("ct", "pet")``.
        output_dir, max_samples, title: as for :class:`common.workflows.base.EvaluationWorkflow`.

    Raises:
        ValueError: ``distribution_sets`` empty or naming another set.
    """

    SETS = ("ct", "pet", "ct+pet")

    def __init__(
        self,
        sample_dir: str,
        real_data: Sequence[Mapping[str, Any]],
        output_dir: str,
        ct_window: Sequence[float] = (-1000.0, 1000.0),
        pet_window: Sequence[float] = (0.0, 10.0),
        hot_spot_suv: float = 4.0,
        body_hu: float = -500.0,
        max_samples: int | None = None,
        title: str = "Paired samples against real slices",
        distribution: DistributionMetrics | None = None,
        distribution_sets: Sequence[str] = ("ct", "pet"),
    ) -> None:
        super().__init__(output_dir, title, max_samples)
        unknown = [name for name in distribution_sets if name not in self.SETS]
        if not distribution_sets or unknown:
            raise ValueError(
                f"config key 'distribution_sets': expected a non-empty list of {list(self.SETS)}, got "
                f"{list(distribution_sets)}"
            )
        self.distribution_sets = [str(name) for name in distribution_sets]
        self.sample_dir = sample_dir
        self.real_data = real_data
        self.windows = {"ct": tuple(ct_window), "pet": tuple(pet_window)}
        self.hot_spot_suv = float(hot_spot_suv)
        self.body_hu = float(body_hu)
        self.distribution = distribution

    def real_items(self, samples: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """One held-out real slice per sample, in order (cycling); never a case that seeded a sample."""
        if len(self.real_data) == 0:
            raise ValueError("config key 'real_data': no real slices to compare with (empty held-out split?)")
        check_held_out(samples, self.real_data)
        return [self.real_data[index % len(self.real_data)] for index in range(len(samples))]

    def evaluate(self) -> dict[str, Any]:
        samples = load_sample_triples(self.sample_dir, self.max_samples)
        if len(samples) < 2:
            raise ValueError(f"sample_dir '{self.sample_dir}': {len(samples)} sample(s), at least 2 are needed")
        reals = self.real_items(samples)
        fake = {m: torch.stack([s[m] for s in samples]).float() for m in ("ct", "pet", "mask")}
        real = {m: torch.stack([torch.as_tensor(r[m]).float() for r in reals]) for m in ("ct", "pet", "mask")}
        if fake["ct"].shape[1:] != real["ct"].shape[1:]:
            raise ValueError(
                f"samples in '{self.sample_dir}' have shape {tuple(fake['ct'].shape[1:])} but the real slices "
                f"{tuple(real['ct'].shape[1:])}: were spatial_size/pixdim changed since sampling?"
            )
        unit_fake = {
            "ct": to_unit_range(fake["ct"], self.windows["ct"]),
            "pet": to_unit_range(fake["pet"], self.windows["pet"]),
            "mask": fake["mask"] * 2.0 - 1.0,
        }
        results: dict[str, Any] = {m: evaluate_sets(real[m], unit_fake[m], spatial_dims=2) for m in unit_fake}
        results["pairing_samples"] = pairing_metrics(
            fake["ct"], fake["pet"], fake["mask"], self.hot_spot_suv, self.body_hu
        )
        results["pairing_real"] = pairing_metrics(
            from_unit_range(real["ct"], self.windows["ct"]),
            from_unit_range(real["pet"], self.windows["pet"]),
            (real["mask"] > 0).float(),
            self.hot_spot_suv,
            self.body_hu,
        )
        if self.distribution is not None:
            all_real = {m: torch.stack([torch.as_tensor(r[m]).float() for r in self.real_data]) for m in ("ct", "pet")}
            all_real["ct+pet"] = torch.cat([all_real["ct"], all_real["pet"]], dim=1)
            sets = {**unit_fake, "ct+pet": torch.cat([unit_fake["ct"], unit_fake["pet"]], dim=1)}
            results["distribution"] = {m: self.distribution(all_real[m], sets[m]) for m in self.distribution_sets}
        results["n_samples"] = len(samples)
        results["n_seeded"] = sum("seeded_from" in s for s in samples)
        results["hot_spot_suv"] = self.hot_spot_suv
        results["body_hu"] = self.body_hu
        results["sample_dir"] = str(self.sample_dir)
        return results

    def summary(self, results: Mapping[str, Any]) -> str:
        return f"evaluated {results['n_samples']} paired sample(s)"
