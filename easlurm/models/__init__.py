"""SR backbones (MSRResNet, RRDBNet), the VGG-style discriminator, perceptual feature nets and weight loading.

All image tensors are NCHW RGB float, nominally in [0, 1]; parameter names follow BasicSR so its checkpoints load.
"""
from __future__ import annotations

from .checkpoint_io import load_generator_weights
from .discriminator import VGGStyleDiscriminator
from .features import VGGFeatureExtractor, resolve_vgg
from .registry import build_discriminator, build_generator
from .rrdb import RRDBNet
from .srresnet import MSRResNet

__all__ = [
    "MSRResNet",
    "RRDBNet",
    "VGGStyleDiscriminator",
    "VGGFeatureExtractor",
    "resolve_vgg",
    "build_generator",
    "build_discriminator",
    "load_generator_weights",
]
