"""Build the networks and losses of a run from its config (shared by training, EA, fusion and evaluation)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch.nn as nn

from .config import Config
from .errors import ConfigError
from .models import specs
from .models.specs import generator_spec


def generator_kwargs(cfg: Config) -> dict[str, Any]:
    """Constructor arguments of the configured backbone (its spec's: the options and the scale)."""
    return generator_spec(cfg.model.arch).kwargs(cfg.model.options, cfg.data.scale)


def build_generator(cfg: Config) -> nn.Module:
    """The configured generator: NCHW RGB in [0,1] at LR size → NCHW RGB (≈[0,1], unclamped) at ×scale."""
    return generator_spec(cfg.model.arch).build(cfg.model.options, cfg.data.scale)


def build_discriminator(cfg: Config) -> nn.Module:
    """A VGG-style discriminator for HR patches of ``data.patch_size`` pixels; returns N×1 logits."""
    return specs.build_discriminator(cfg.discriminator.arch, num_feat=cfg.discriminator.num_feat,
                                     input_size=cfg.data.patch_size)


def build_perceptual(cfg: Config) -> nn.Module:
    """The perceptual loss of ``loss.perceptual`` (VGG19 when staged, else VGG16 — see easlurm.models.features)."""
    from .losses import PerceptualLoss

    p = cfg.loss.perceptual
    return PerceptualLoss(dict(p.layers), net=p.net, weights_path=p.weights_path)


class DataDirs(NamedTuple):
    """The shard folders of a run."""
    train: Path
    val: Path | None
    fitness: Path


def data_dirs(cfg: Config) -> DataDirs:
    """(train, val, fitness) shard folders; with ``data.demo`` the built-in demo shards under ``data.demo_dir``."""
    val: Path | None
    if cfg.data.demo and cfg.data.train is None:
        root = Path(cfg.data.demo_dir)
        train, val = root / "train", root / "val"
    else:
        if cfg.data.train is None:
            raise ConfigError("data.train: no training shards given (set data.train or data.demo: true)")
        train = Path(cfg.data.train)
        val = Path(cfg.data.val) if cfg.data.val else None
    fitness = Path(cfg.data.fitness) if cfg.data.fitness else train
    return DataDirs(train, val, fitness)
