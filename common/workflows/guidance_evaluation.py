"""Evaluation of the guidance bundle's samples (paper 003): agreement with the references, lesion, seam.

For every sample an inference run wrote (its ``dataset.json`` and ``provenance/*.json``):

- low-pass PSNR of the sample against its anatomy reference at the anatomy factor N (in [-1, 1]);
- for a sample with a lesion: Dice of the lesion read back inside the patch box
  (:func:`common.metrics.guidance.read_back_lesion`) against the placed mask, and the seam ratio on the box border;

reported as mean and 95 % confidence interval, with the count of positives (the ``cancer`` flag), in
``report.json`` / ``report.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io import read_nifti
from common.metrics.guidance import low_pass_psnr, read_back_lesion, seam_ratio
from common.metrics.segmentation import mask_dice
from common.metrics.statistics import mean_ci
from common.workflows.base import EvaluationWorkflow, read_sample_datalist

__all__ = ["GuidanceEvaluation", "score_guided_sample"]


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
    """Figures of one sample: ``low_pass_psnr`` (both in [-1, 1]) and, with a lesion, ``lesion_dice`` and
    ``seam_ratio`` (``sample`` and ``reference`` in [-1, 1])."""
    factor = int(record.get("conditions", {}).get("anatomy", {}).get("factor", anatomy_factor))
    scores = {
        "low_pass_psnr": float(
            low_pass_psnr(torch.as_tensor(sample)[None, None], torch.as_tensor(reference)[None, None], factor)[0]
        )
    }
    pathology = record.get("conditions", {}).get("pathology")
    if pathology is not None:
        corner, shape = pathology["corner"], pathology["patch_size"]
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
        positives = 0
        for entry in entries:
            if not entry.get("provenance"):
                raise ValueError(f"config key 'sample_dir': sample '{entry['image']}' has no provenance record")
            record = json.loads(Path(self.sample_dir / entry["provenance"]).read_text())
            reference, breast = self.reference(record, cache)
            sample = self.to_model_range(read_nifti(entry["image"]))
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
            per_sample[entry.get("case_id", entry["image"])] = scores
            for name, value in scores.items():
                figures[name].append(value)
        return {
            "samples": len(entries),
            "positives (cancer flag)": positives,
            "summary": {name: mean_ci(values) for name, values in figures.items()},
            "per_sample": per_sample,
        }

    def summary(self, results: dict[str, Any]) -> str:
        psnr = results["summary"]["low_pass_psnr"]["mean"]
        return f"{self.title}: {results['samples']} samples, low-pass PSNR {psnr:.2f} dB"
