"""The data a run reads, as absolute paths (its jobs run elsewhere), checked before anything is submitted."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config


def resolve_data(cfg: Config, echo: Callable[[str], None] = print) -> Config:
    """Make ``cfg``'s data, pretrained and image paths absolute and check that they exist (in place; returns
    ``cfg``). With ``data.demo`` and no ``data.train``, the built-in demo shards are built under
    ``data.demo_dir`` first when they are not there yet (numpy and h5py only, no torch)."""
    d = cfg.data
    if d.demo and d.train is None:
        from .samples import build_samples

        root = Path(d.demo_dir).resolve()
        if not (root / "train" / "manifest.json").is_file() or not (root / "val" / "manifest.json").is_file():
            echo(f"building the demo shards in {root} …")
        build_samples(root, scale=d.scale)
        d.demo_dir = str(root)
        d.train, d.val = str(root / "train"), str(root / "val")
    for name in ("train", "val", "fitness"):
        value = getattr(d, name)
        if value:
            p = Path(value).resolve()
            if not (p / "manifest.json").is_file():
                raise ConfigError(f"data.{name}: {p} is not a shard folder (no manifest.json; build it with "
                                  f"`python -m easlurm.data build`)")
            setattr(d, name, str(p))
    if cfg.fusion.average_set:
        cfg.fusion.average_set = str(Path(cfg.fusion.average_set).resolve())
    if cfg.model.pretrained:
        p = Path(cfg.model.pretrained).resolve()
        if not p.is_file():
            raise ConfigError(f"model.pretrained: {p} not found")
        cfg.model.pretrained = str(p)
    if cfg.container.image and "://" not in cfg.container.image:
        cfg.container.image = str(Path(cfg.container.image).resolve())
    return cfg


__all__ = ["resolve_data"]
