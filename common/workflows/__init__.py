"""Sampling and evaluation workflows the bundle configs run (``run()`` writes a dataset or a report).

``utility`` trains a segmenter on real and synthetic data (the downstream-utility experiment).
``base`` holds the two base classes, :class:`SamplingWorkflow` and :class:`EvaluationWorkflow`, with the shared loop,
output checks, seeding, datalist and report writing; each bundle's workflow specialises one of them by its steps.
"""

from __future__ import annotations

from common.workflows.base import (
    EvaluationWorkflow,
    SamplingItem,
    SamplingWorkflow,
    UnconditionalSampling,
    check_sampler_steps,
    read_sample_datalist,
    select_sampler,
)
from common.workflows.evaluation import SampleEvaluation, mask_id_of_sample
from common.workflows.guidance_evaluation import GuidanceEvaluation, score_guided_sample
from common.workflows.guided_sampling import ConditionSettings, GuidedSampling
from common.workflows.image_sampling import ImageEvaluation, ImageSampling, slice_affine_2d
from common.workflows.latent_evaluation import LatentEvaluation, list_samples
from common.workflows.latent_sampling import LatentSampling, intensity_to_hu
from common.workflows.paired_evaluation import PairedEvaluation, load_sample_triples
from common.workflows.paired_sampling import PairedSampling, from_unit_range, slice_affine, to_unit_range
from common.workflows.sampling import MaskConditionedSampling, list_masks
from common.workflows.sharding import bundle_run_fields, rank_and_world_size
from common.workflows.utility import (
    ClassificationUtility,
    UtilityArm,
    UtilityExperiment,
    case_label,
    check_held_out,
    classification_items,
    paired_sample_items,
    paired_slice_items,
    require_test_dir,
    round_robin,
    segmentation_items,
    stratified_draw,
    utility_arms,
    utility_test_cases,
    validation_split,
)

__all__ = [
    "ConditionSettings",
    "GuidanceEvaluation",
    "GuidedSampling",
    "score_guided_sample",
    "EvaluationWorkflow",
    "ImageEvaluation",
    "ImageSampling",
    "LatentEvaluation",
    "LatentSampling",
    "MaskConditionedSampling",
    "PairedEvaluation",
    "PairedSampling",
    "SampleEvaluation",
    "SamplingItem",
    "SamplingWorkflow",
    "UnconditionalSampling",
    "bundle_run_fields",
    "check_sampler_steps",
    "from_unit_range",
    "intensity_to_hu",
    "list_masks",
    "list_samples",
    "load_sample_triples",
    "mask_id_of_sample",
    "rank_and_world_size",
    "read_sample_datalist",
    "select_sampler",
    "slice_affine",
    "slice_affine_2d",
    "to_unit_range",
    "ClassificationUtility",
    "UtilityArm",
    "UtilityExperiment",
    "case_label",
    "classification_items",
    "check_held_out",
    "paired_sample_items",
    "paired_slice_items",
    "require_test_dir",
    "round_robin",
    "segmentation_items",
    "stratified_draw",
    "utility_arms",
    "utility_test_cases",
    "validation_split",
]
