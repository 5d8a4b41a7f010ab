"""Sampling and evaluation workflows the bundle configs run (``run()`` writes a dataset or a report)."""

from __future__ import annotations

from common.workflows.evaluation import SampleEvaluation, mask_id_of_sample
from common.workflows.latent_evaluation import LatentEvaluation, list_samples
from common.workflows.latent_sampling import LatentSampling, from_unit_range_hu
from common.workflows.paired_evaluation import PairedEvaluation, load_sample_triples
from common.workflows.paired_sampling import PairedSampling, from_unit_range, slice_affine, to_unit_range
from common.workflows.sampling import MaskConditionedSampling, check_sampler_steps, list_masks, select_sampler

__all__ = [
    "LatentEvaluation",
    "LatentSampling",
    "MaskConditionedSampling",
    "PairedEvaluation",
    "PairedSampling",
    "SampleEvaluation",
    "check_sampler_steps",
    "from_unit_range",
    "from_unit_range_hu",
    "list_masks",
    "list_samples",
    "load_sample_triples",
    "mask_id_of_sample",
    "select_sampler",
    "slice_affine",
    "to_unit_range",
]
