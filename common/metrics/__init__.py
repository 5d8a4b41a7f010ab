"""Metrics: image quality, distribution distances (FID), segmentation overlap, read-back rules, reports."""

from __future__ import annotations

from common.metrics.fid import FrechetDistanceMetric, fid_2d_slices, frechet_distance
from common.metrics.image import (
    MAX_KERNEL_SIZE,
    MIN_KERNEL_SIZE,
    MS_SSIM_WEIGHTS,
    diversity_ms_ssim,
    mean_pairwise,
    mmd,
    ms_ssim,
    ms_ssim_settings,
    mse,
    psnr,
    ssim,
)
from common.metrics.pairing import pairing_metrics
from common.metrics.read_back import WHOLE_HEAD_TUMOUR_THRESHOLD, segment_enhancing_lesion
from common.metrics.report import evaluate_sets, write_report
from common.metrics.segmentation import dice, mask_dice
from common.metrics.tsne import SCATTER_COLOURS, scatter_png, tsne

__all__ = [
    "FrechetDistanceMetric",
    "MAX_KERNEL_SIZE",
    "MIN_KERNEL_SIZE",
    "MS_SSIM_WEIGHTS",
    "SCATTER_COLOURS",
    "WHOLE_HEAD_TUMOUR_THRESHOLD",
    "dice",
    "diversity_ms_ssim",
    "evaluate_sets",
    "fid_2d_slices",
    "frechet_distance",
    "mask_dice",
    "mean_pairwise",
    "mmd",
    "ms_ssim",
    "ms_ssim_settings",
    "mse",
    "pairing_metrics",
    "psnr",
    "scatter_png",
    "segment_enhancing_lesion",
    "ssim",
    "tsne",
    "write_report",
]
