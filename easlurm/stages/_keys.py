"""Pieces of the stage kinds' rate keys: the config values a stage's speed depends on, beyond the hardware."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config


def network(cfg: Config) -> dict[str, Any]:
    """The generator (backbone and its options) and the scale."""
    m = cfg.model
    return {"model": [m.arch, dataclasses.asdict(m.options)], "scale": cfg.data.scale}


def perceptual(cfg: Config) -> dict[str, Any]:
    p = cfg.loss.perceptual
    return {"perceptual": [p.net, sorted(p.layers)]}


def hardware(cfg: Config, kind: str) -> dict[str, Any]:
    """Where the stage's jobs run: partition, the stage's extra sbatch flags and its GPUs."""
    res = cfg.executor.slurm.resources(kind)
    return {"partition": cfg.executor.slurm.partition, "extra": dict(sorted(res.extra.items())), "gpus": res.gpus}


__all__ = ["network", "perceptual", "hardware"]
