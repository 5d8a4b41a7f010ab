"""Inferers: conditional, paired and multi-condition guided (ILVR) diffusion sampling, whole-chain (serving)
synthesis, the KL-autoencoder inferer, tiled latent decoding."""

from __future__ import annotations

from common.inferers.autoencoder import KLAutoencoderInferer
from common.inferers.conditional import CONDITIONING_MODES, ConditionalDiffusionInferer
from common.inferers.guidance import (
    GuidanceCombine,
    GuidanceCondition,
    GuidedDiffusionInferer,
    LowPassFilter,
    LowPassMode,
    MultiConditionGuidance,
    gaussian_patch_weight,
)
from common.inferers.paired import PairedDiffusionInferer
from common.inferers.synthesis import MaskConditionedSynthesisInferer, WholeChainInferer
from common.inferers.tiled_decoding import (
    BLEND_MODES,
    GROUP_NORM_MODES,
    TiledDecoder,
    decode,
    decode_tiled_tail,
    decoder_receptive_radius,
    seamless_overlap,
    split_decoder,
    tail_receptive_radius,
    tiled_decode,
)

__all__ = [
    "GuidanceCombine",
    "GuidanceCondition",
    "GuidedDiffusionInferer",
    "LowPassFilter",
    "LowPassMode",
    "MultiConditionGuidance",
    "gaussian_patch_weight",
    "BLEND_MODES",
    "CONDITIONING_MODES",
    "ConditionalDiffusionInferer",
    "GROUP_NORM_MODES",
    "KLAutoencoderInferer",
    "MaskConditionedSynthesisInferer",
    "PairedDiffusionInferer",
    "TiledDecoder",
    "WholeChainInferer",
    "decode",
    "decode_tiled_tail",
    "decoder_receptive_radius",
    "seamless_overlap",
    "split_decoder",
    "tail_receptive_radius",
    "tiled_decode",
]
