"""Evaluation workflow: generated samples against the real cases whose masks produced them.

Reads the samples an inference run wrote (its ``dataset.json``), pairs each sample ``<mask id>_sampleNNN`` with
the real case ``<mask id>``, brings both to the model grid and intensity scale, and writes a JSON + markdown report
with the metrics of :func:`common.metrics.report.evaluate_sets` (Med-DDPM reports MSE, MMD and MS-SSIM; diversity is the
mean pairwise MS-SSIM within the samples, next to the same figure for the real cases). Optionally a fixed intensity
rule reads a lesion back from each sample and scores it against the sample's own mask (mask adherence, meaningful on
phantoms whose contrasts the rule was made for).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from common.data.layouts import find_cases
from common.io import save_preview_png
from common.metrics.image import diversity_ms_ssim
from common.metrics.read_back import segment_enhancing_lesion
from common.metrics.report import evaluate_sets
from common.metrics.segmentation import mask_dice
from common.workflows.base import EvaluationWorkflow

__all__ = ["mask_id_of_sample", "SampleEvaluation"]

logger = logging.getLogger(__name__)


_SAMPLE_SUFFIX = re.compile(r"_sample\d+$")


def mask_id_of_sample(case_id: str) -> str:
    """``head_003_sample001`` -> ``head_003`` (samples are named after the mask they were generated from)."""
    return _SAMPLE_SUFFIX.sub("", case_id)


class SampleEvaluation(EvaluationWorkflow):
    """Compare a folder of samples with the real dataset and write ``report.json`` / ``report.md``.

    Args:
        sample_dir: an inference ``output_dir`` (with its ``dataset.json``).
        real_dir: the real dataset folder (any layout :func:`common.data.layouts.find_cases` reads).
        modalities: image modality names.
        real_preprocessing: transform of a real case dict to ``{"image": (C, *spatial)}`` on the model grid, scaled
            to [-1, 1] like the training data.
        sample_preprocessing: transform of a sample case dict to ``{"image": ..., "label": ...}`` (samples are already
            on the model grid and scale).
        lesion_rule: optional ``{"threshold": float, "labels": [int, ...], "channel": int, "largest": bool}``: the
            lesion read back from the sample by :func:`common.metrics.read_back.segment_enhancing_lesion` (with
            ``largest``, only the largest connected bright region) is scored (Dice) against the sample's mask voxels
            with those labels.
        preview: write ``real_vs_sample.png`` in ``output_dir``: per pair, the real case's row then the sample's
            (first modality, central slices, the mask voxels with the lesion labels outlined when a rule is given).
        output_dir, max_samples, title: as for :class:`common.workflows.base.EvaluationWorkflow`.
    """

    def __init__(
        self,
        sample_dir: str,
        real_dir: str,
        output_dir: str,
        modalities: Sequence[str],
        real_preprocessing: Callable[[dict], dict],
        sample_preprocessing: Callable[[dict], dict],
        lesion_rule: Mapping[str, Any] | None = None,
        max_samples: int | None = None,
        title: str = "Samples against real cases",
        preview: bool = True,
    ) -> None:
        super().__init__(output_dir, title, max_samples)
        self.sample_dir = sample_dir
        self.real_dir = real_dir
        self.modalities = list(modalities)
        self.real_preprocessing = real_preprocessing
        self.sample_preprocessing = sample_preprocessing
        self.lesion_rule = dict(lesion_rule) if lesion_rule else None
        self.preview = bool(preview)

    def pairs(self) -> list[tuple[dict, dict]]:
        """(sample case, real case) pairs; samples whose mask is not a real case are left out (logged)."""
        samples = find_cases(self.sample_dir, self.modalities, layout="datalist", config_key="sample_dir")
        reals = {c["case_id"]: c for c in find_cases(self.real_dir, self.modalities, config_key="dataset_dir")}
        paired = [
            (s, reals[mask_id_of_sample(s["case_id"])]) for s in samples if mask_id_of_sample(s["case_id"]) in reals
        ]
        unpaired = len(samples) - len(paired)
        paired = self.limit(paired)
        if unpaired:
            logger.warning(
                f"{unpaired} sample(s) in '{self.sample_dir}' come from masks that are not cases of '{self.real_dir}'"
            )
        if len(paired) < 2:
            raise ValueError(
                f"sample_dir '{self.sample_dir}': {len(paired)} sample(s) pair with a real case of '{self.real_dir}' "
                "(sample '<id>_sampleNNN' pairs with real case '<id>'); at least 2 are needed"
            )
        return paired

    def lesion_dice(self, image: torch.Tensor, label: torch.Tensor) -> float:
        rule = self.lesion_rule or {}
        lesion = segment_enhancing_lesion(
            image[rule.get("channel", 0)],
            rule["threshold"],
            spatial_dims=image.ndim - 1,
            largest=bool(rule.get("largest", False)),
        )
        return mask_dice(lesion, self.lesion_target(label))

    def lesion_target(self, label: torch.Tensor) -> torch.Tensor:
        """The mask voxels of the lesion rule's labels, (spatial) boolean."""
        return torch.isin(label[0], torch.tensor(self.lesion_rule["labels"]))

    def write_preview(self, rows: list[tuple[str, torch.Tensor, torch.Tensor | None]]) -> None:
        """``real_vs_sample.png``: the rows (title, image (C, *spatial), outline or None), first modality, [-1, 1]."""
        save_preview_png(
            self.output_dir / "real_vs_sample.png",
            [(title, image[0]) for title, image, _ in rows],
            masks=[outline for _, _, outline in rows],
            spatial_dims=rows[0][1].ndim - 1,
            value_range=(-1.0, 1.0),
            overwrite=True,
        )

    def evaluate(self) -> dict[str, Any]:
        pairs = self.pairs()
        fakes, reals, lesion_scores, real_ids, preview_rows = [], [], [], [], []
        for sample, real in pairs:
            s = self.sample_preprocessing(dict(sample))
            r = self.real_preprocessing(dict(real))
            if tuple(s["image"].shape) != tuple(r["image"].shape):
                raise ValueError(
                    f"sample '{sample['image'][0]}' has shape {tuple(s['image'].shape)} but real case "
                    f"'{real['case_id']}' preprocesses to {tuple(r['image'].shape)}: were spatial_size/pixdim changed?"
                )
            fakes.append(torch.as_tensor(s["image"]).float())
            reals.append(torch.as_tensor(r["image"]).float())
            real_ids.append(real["case_id"])
            outline, score = None, ""
            if self.lesion_rule:
                label = torch.as_tensor(s["label"])
                lesion_scores.append(self.lesion_dice(torch.as_tensor(s["image"]), label))
                outline, score = self.lesion_target(label), f", lesion Dice {lesion_scores[-1]:.2f}"
            if self.preview:
                preview_rows += [
                    (f"real {real['case_id']}", reals[-1], outline),
                    (f"{sample['case_id']}{score}", fakes[-1], outline),
                ]
        real_set, fake_set = torch.stack(reals), torch.stack(fakes)
        results = evaluate_sets(real_set, fake_set)
        unique = sorted(set(real_ids), key=real_ids.index)
        if len(unique) >= 2:
            unique_reals = torch.stack([reals[real_ids.index(i)] for i in unique])
            results["ms_ssim_diversity_real"] = diversity_ms_ssim(unique_reals, data_range=2.0)
        results["n_real_cases"] = len(unique)
        if lesion_scores:
            scores = torch.tensor(lesion_scores, dtype=torch.float64)
            results["lesion_dice_mean"] = float(scores.mean())
            results["lesion_dice_std"] = float(scores.std()) if len(scores) > 1 else 0.0
        if preview_rows:
            self.write_preview(preview_rows)
        results["sample_dir"] = str(self.sample_dir)
        results["real_dir"] = str(self.real_dir)
        return results

    def summary(self, results: Mapping[str, Any]) -> str:
        line = f"evaluated {results['n_pairs']} sample(s) against {results['n_real_cases']} real case(s)"
        if "lesion_dice_mean" in results:
            line += (
                f"; lesion read back (lesion_rule) vs the masks: Dice {results['lesion_dice_mean']:.3f}"
                f" (std {results['lesion_dice_std']:.3f})"
            )
        if self.preview:
            line += f"; real beside sample: '{self.output_dir / 'real_vs_sample.png'}'"
        return line
