"""Evaluation of the guidance bundle's samples (paper 003): agreement with the references, lesion, seam.

For every sample an inference run wrote (its ``dataset.json`` and ``provenance/*.json``):

- low-pass PSNR of the sample against its anatomy reference at the anatomy factor N (in [-1, 1]);
- for a sample with a lesion: the seam ratio on the patch box border, and, unless the lesion is a calcification
  cluster, Dice of the lesion read back inside the patch box (:func:`common.metrics.guidance.read_back_lesion`)
  against the placed mask;

reported as mean and 95 % confidence interval, overall and per lesion kind (the ``lesion`` of each provenance record:
"mass", "calcification", ...), with the count of positives (the ``cancer`` flag), in ``report.json`` /
``report.md``. Optionally (``distribution``) the distribution metrics of the samples against the real anatomy
references they were guided by: FID / IS, FDS and DS (:class:`common.metrics.distribution.DistributionMetrics`).

The read-back rule reads one bright blob; a calcification cluster is several specks a pixel or two wide, which that
rule cannot read back (it would keep the brightest speck), so calcification samples get no lesion Dice
(``READ_BACK_SKIPPED``): the lesion Dice is that of masses (and of other blob-like kinds, e.g. the lung overlay's
tumours, or patches of unspecified kind), and the report says so (``lesion_dice_rule``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io import read_nifti
from common.metrics.distribution import DistributionMetrics
from common.metrics.guidance import low_pass_psnr, read_back_lesion, seam_ratio
from common.metrics.segmentation import mask_dice
from common.metrics.statistics import mean_ci
from common.workflows.base import EvaluationWorkflow, read_sample_datalist
from common.workflows.guided_sampling import UNSPECIFIED_LESION

__all__ = ["GuidanceEvaluation", "READ_BACK_SKIPPED", "sample_lesion_kind", "score_guided_sample"]

READ_BACK_SKIPPED = ("calcification",)
"""Lesion kinds the one-blob read-back rule does not score (no lesion Dice; the seam ratio still counts)."""


def sample_lesion_kind(record: Mapping[str, Any]) -> str:
    """A sample's lesion kind from its provenance record: "none" without a pathology condition, else the record's
    ``lesion`` (or its pathology condition's), :data:`UNSPECIFIED_LESION` for a record written before kinds were
    recorded."""
    pathology = record.get("conditions", {}).get("pathology")
    if pathology is None:
        return "none"
    return str(record.get("lesion") or pathology.get("lesion") or UNSPECIFIED_LESION)


def score_guided_sample(
    sample: np.ndarray,
    reference: np.ndarray,
    breast: np.ndarray,
    record: dict[str, Any],
    lesion_mask: np.ndarray,
    anatomy_factor: int,
    lesion_relative_threshold: float,
    read_sigma: float,
) -> dict[str, float]:
    """Figures of one sample: ``low_pass_psnr`` (both in [-1, 1]) and, with a lesion, ``seam_ratio`` and (unless
    its kind is in :data:`READ_BACK_SKIPPED`) ``lesion_dice`` (``sample`` and ``reference`` in [-1, 1])."""
    factor = int(record.get("conditions", {}).get("anatomy", {}).get("factor", anatomy_factor))
    scores = {
        "low_pass_psnr": float(
            low_pass_psnr(torch.as_tensor(sample)[None, None], torch.as_tensor(reference)[None, None], factor)[0]
        )
    }
    pathology = record.get("conditions", {}).get("pathology")
    if pathology is not None:
        corner, shape = pathology["corner"], pathology["patch_size"]
        if sample_lesion_kind(record) not in READ_BACK_SKIPPED:
            found = read_back_lesion(sample, corner, shape, lesion_relative_threshold, read_sigma)
            scores["lesion_dice"] = mask_dice(torch.as_tensor(found), torch.as_tensor(lesion_mask > 0))
        scores["seam_ratio"] = seam_ratio(sample, corner, shape, breast)
    return scores


class GuidanceEvaluation(EvaluationWorkflow):
    """Score a folder of guided samples and write ``report.json`` / ``report.md`` (module docstring).

    Args:
        sample_dir: an inference ``output_dir``.
        output_dir: where the report goes.
        reference_preprocessing: an anatomy reference entry ``{"image", "label"?}`` -> ``{"image": (1, H, W) in
            [-1, 1], "label"?}`` (the inference config's).
        output_range: the range the samples were written in (mapped back to [-1, 1]).
        anatomy_factor: N of the low-pass PSNR when a provenance record has none (an unguided run).
        lesion_relative_threshold: read-back threshold as a share of the box's largest residual.
        read_sigma: smoothing (pixels) of the read-back's background.
        breast_labels: label values of the breast in a reference label map (the seam ratio's "elsewhere").
        breast_threshold: breast = reference above it when the reference has no label map.
        max_samples, title: as for :class:`common.workflows.base.EvaluationWorkflow`.
        distribution: the distribution metrics of the samples (in [-1, 1]) against the distinct anatomy references
            they were guided by (the real images, through ``reference_preprocessing``), or None.
    """

    def __init__(
        self,
        sample_dir: str,
        output_dir: str,
        reference_preprocessing: Callable[[dict], dict],
        output_range: Sequence[float] = (0.0, 1.0),
        anatomy_factor: int = 8,
        lesion_relative_threshold: float = 0.5,
        read_sigma: float = 6.0,
        breast_labels: Sequence[int] = (1,),
        breast_threshold: float = -0.9,
        max_samples: int | None = None,
        title: str = "mammo_guidance: guided samples",
        distribution: DistributionMetrics | None = None,
    ) -> None:
        super().__init__(output_dir, title, max_samples)
        self.sample_dir = Path(sample_dir)
        self.reference_preprocessing = reference_preprocessing
        self.output_range = (float(output_range[0]), float(output_range[1]))
        self.anatomy_factor = int(anatomy_factor)
        self.lesion_relative_threshold = float(lesion_relative_threshold)
        self.read_sigma = float(read_sigma)
        self.breast_labels = [int(v) for v in breast_labels]
        self.breast_threshold = float(breast_threshold)
        self.distribution = distribution

    def to_model_range(self, image: torch.Tensor) -> np.ndarray:
        low, high = self.output_range
        return ((image.numpy().astype(np.float64) - low) / (high - low)) * 2.0 - 1.0

    def reference(self, record: dict[str, Any], cache: dict) -> tuple[np.ndarray, np.ndarray]:
        key = record["anatomy_reference"]
        if key not in cache:
            entry = {"image": key} | (
                {"label": record["anatomy_reference_label"]} if record.get("anatomy_reference_label") else {}
            )
            data = self.reference_preprocessing(entry)
            image = np.asarray(data["image"], dtype=np.float64)[0]
            if data.get("label") is not None:
                breast = np.isin(np.round(np.asarray(data["label"])[0]), self.breast_labels)
            else:
                breast = image > self.breast_threshold
            cache[key] = (image, breast)
        return cache[key]

    def evaluate(self) -> dict[str, Any]:
        entries = self.limit(read_sample_datalist(self.sample_dir, ["image", "label"], check_files=True))
        if not entries:
            raise ValueError(f"config key 'sample_dir': '{self.sample_dir}' lists no sample")
        cache: dict = {}
        per_sample, figures = {}, {"low_pass_psnr": [], "lesion_dice": [], "seam_ratio": []}
        counts: dict[str, int] = {}
        by_kind: dict[str, dict[str, list[float]]] = {}
        positives = 0
        samples = []
        for entry in entries:
            if not entry.get("provenance"):
                raise ValueError(f"config key 'sample_dir': sample '{entry['image']}' has no provenance record")
            record = json.loads(Path(self.sample_dir / entry["provenance"]).read_text())
            reference, breast = self.reference(record, cache)
            sample = self.to_model_range(read_nifti(entry["image"]))
            samples.append(torch.as_tensor(sample, dtype=torch.float32).reshape(1, *reference.shape))
            mask = read_nifti(entry["label"]).numpy()
            scores = score_guided_sample(
                sample,
                reference,
                breast,
                record,
                mask,
                self.anatomy_factor,
                self.lesion_relative_threshold,
                self.read_sigma,
            )
            positives += int(record.get("cancer", 0))
            kind = sample_lesion_kind(record)
            per_sample[entry.get("case_id", entry["image"])] = {**scores, "lesion": kind}
            for name, value in scores.items():
                figures[name].append(value)
            if kind != "none":
                counts[kind] = counts.get(kind, 0) + 1
                kind_figures = by_kind.setdefault(kind, {"lesion_dice": [], "seam_ratio": []})
                for name, values in kind_figures.items():
                    values.extend([scores[name]] if name in scores else [])
        distribution = {}
        if self.distribution is not None:
            references = torch.stack([torch.as_tensor(image, dtype=torch.float32)[None] for image, _ in cache.values()])
            distribution = {"distribution": self.distribution(references, torch.stack(samples))}
            distribution["distribution_sets"] = f"{len(samples)} samples vs their {len(references)} anatomy references"
        return {
            "samples": len(entries),
            "positives (cancer flag)": positives,
            "summary": {name: mean_ci(values) for name, values in figures.items()},
            "by_lesion_kind": {
                kind: {
                    "samples": counts[kind],
                    "lesion_dice": "not read back" if kind in READ_BACK_SKIPPED else mean_ci(values["lesion_dice"]),
                    "seam_ratio": mean_ci(values["seam_ratio"]),
                }
                for kind, values in sorted(by_kind.items())
            },
            "lesion_dice_rule": "summary.lesion_dice: the one-bright-blob read-back on every lesion kind but "
            f"{', '.join(READ_BACK_SKIPPED)} (a cluster of specks that rule cannot read back: no Dice); the figures "
            "per kind under by_lesion_kind",
            "per_sample": per_sample,
            **distribution,
        }

    def summary(self, results: dict[str, Any]) -> str:
        psnr = results["summary"]["low_pass_psnr"]["mean"]
        return f"{self.title}: {results['samples']} samples, low-pass PSNR {psnr:.2f} dB"
