"""Engines: the paired-diffusion trainer and evaluator, and batch preparation (offset noise, autoencoder batches)."""

from __future__ import annotations

from common.engines.paired import (
    PairedDiffusionEvaluator,
    PairedDiffusionTrainer,
    distributed_networks,
    paired_optimizers,
)
from common.engines.prepare_batch import (
    AutoencoderPrepareBatch,
    HybridLossPrepareBatch,
    WeightedTimestepPrepareBatch,
    min_snr_timestep_weights,
    offset_noise,
)

__all__ = [
    "AutoencoderPrepareBatch",
    "HybridLossPrepareBatch",
    "PairedDiffusionEvaluator",
    "PairedDiffusionTrainer",
    "WeightedTimestepPrepareBatch",
    "distributed_networks",
    "min_snr_timestep_weights",
    "offset_noise",
    "paired_optimizers",
]
