"""Metrics: image quality, distribution metrics (FID, 3D-FID, IS, FDS, DS), segmentation overlap, read-back rules,
reports."""

from __future__ import annotations

from common.metrics.distribution import (
    DistributionMetrics,
    FeatureNetwork,
    diversity_score,
    feature_distribution_similarity,
    gaussian_kl_divergence,
    inception_score,
    nearest_similarities,
)
from common.metrics.fid import (
    FrechetDistanceMetric,
    feature_fid,
    fid_2d_slices,
    fid_3d,
    frechet_distance,
    histogram_equalise,
    image_features,
)
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
    "DistributionMetrics",
    "FeatureNetwork",
    "FrechetDistanceMetric",
    "MAX_KERNEL_SIZE",
    "MIN_KERNEL_SIZE",
    "MS_SSIM_WEIGHTS",
    "SCATTER_COLOURS",
    "WHOLE_HEAD_TUMOUR_THRESHOLD",
    "dice",
    "diversity_score",
    "feature_distribution_similarity",
    "feature_fid",
    "fid_3d",
    "gaussian_kl_divergence",
    "histogram_equalise",
    "image_features",
    "inception_score",
    "nearest_similarities",
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
