"""Networks: the paired denoiser with its timestep-aware blocks and condition encoders, feature extractors (perceptual
loss; FID / IS feature networks loaded from local files)."""

from __future__ import annotations

from common.networks.feature_extractors import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG16_BLOCKS,
    VGG16_LARGE_FILES_ENTRY,
    VGG16_PERCEPTUAL_LAYERS,
    VGG16_RELU_INDICES,
    VGG16_WEIGHTS_URL,
    PerceptualNetwork,
    SmallConvFeatures,
    VGG16Features,
    build_perceptual_network,
    load_vgg16_features,
)
from common.networks.fid_networks import (
    INCEPTION_LARGE_FILES_ENTRY,
    INCEPTION_TORCHSCRIPT_URL,
    MEDICALNET_LARGE_FILES_ENTRY,
    MEDICALNET_RESNET50_URL,
    EncoderFeatures,
    TorchScriptClassifier,
    build_fid_network,
    medicalnet_resnet50,
    require_weight_file,
    torchscript_inception,
)
from common.networks.paired_denoiser import (
    ConditionEncoder,
    CrossEncoderAttention,
    PairedDenoiser,
    check_paired_networks,
    paired_networks,
    stack_conditions,
)
from common.networks.timestep_blocks import TimestepCBAM, TimestepLowPass, low_pass_gain, normalised_radial_frequency

__all__ = [
    "ConditionEncoder",
    "EncoderFeatures",
    "INCEPTION_LARGE_FILES_ENTRY",
    "INCEPTION_TORCHSCRIPT_URL",
    "MEDICALNET_LARGE_FILES_ENTRY",
    "MEDICALNET_RESNET50_URL",
    "TorchScriptClassifier",
    "build_fid_network",
    "medicalnet_resnet50",
    "require_weight_file",
    "torchscript_inception",
    "CrossEncoderAttention",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PairedDenoiser",
    "PerceptualNetwork",
    "SmallConvFeatures",
    "TimestepCBAM",
    "TimestepLowPass",
    "check_paired_networks",
    "VGG16Features",
    "VGG16_BLOCKS",
    "VGG16_LARGE_FILES_ENTRY",
    "VGG16_PERCEPTUAL_LAYERS",
    "VGG16_RELU_INDICES",
    "VGG16_WEIGHTS_URL",
    "build_perceptual_network",
    "load_vgg16_features",
    "low_pass_gain",
    "normalised_radial_frequency",
    "paired_networks",
    "stack_conditions",
]
