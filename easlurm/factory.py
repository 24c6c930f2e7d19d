"""Build the networks and losses of a run from its config (shared by training, EA, fusion and evaluation)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch.nn as nn

from .config import Config
from .errors import ConfigError


def generator_kwargs(cfg: Config) -> dict:
    """Constructor arguments of the configured backbone (BasicSR names)."""
    m = cfg.model
    if m.arch == "msrresnet":
        return {"num_feat": m.num_feat, "num_block": m.num_block, "upscale": cfg.data.scale}
    if m.arch == "rrdbnet":
        return {"num_feat": m.num_feat, "num_block": m.num_block, "num_grow_ch": m.num_grow_ch,
                "scale": cfg.data.scale}
    raise ConfigError(f"model.arch: unknown backbone {m.arch!r}")


def build_generator(cfg: Config) -> nn.Module:
    """The configured generator: NCHW RGB in [0,1] at LR size → NCHW RGB (≈[0,1], unclamped) at ×scale."""
    from .models.registry import build_generator as build

    return build(cfg.model.arch, **generator_kwargs(cfg))


def build_discriminator(cfg: Config) -> nn.Module:
    """A VGG-style discriminator for HR patches of ``data.patch_size`` pixels; returns N×1 logits."""
    from .models.registry import build_discriminator as build

    return build(cfg.discriminator.arch, num_feat=cfg.discriminator.num_feat, input_size=cfg.data.patch_size)


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
