"""SR backbones (MSRResNet, RRDBNet), the VGG-style discriminator, perceptual feature nets and weight loading.

All image tensors are NCHW RGB float, nominally in [0, 1]; parameter names follow BasicSR so its checkpoints load.
:mod:`easlurm.models.specs` is the torch-free registry of backbones (what config validation, the factory, inference
and ``upscale`` know of each); the networks are in their own modules. This package file imports nothing, so the
registry can be read on a machine without torch.
"""
from __future__ import annotations
