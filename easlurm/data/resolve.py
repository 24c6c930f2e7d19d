"""The inputs a run reads, as absolute paths (its jobs run elsewhere), checked before anything is submitted."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..inputs import check_inputs

if TYPE_CHECKING:
    from ..config import Config


def resolve_data(cfg: Config, echo: Callable[[str], None] = print) -> Config:
    """Make ``cfg``'s input paths absolute (data, pretrained start, weights, averaging and evaluation sets, image)
    and check them all, raising one :class:`ConfigError` that lists every missing one
    (:func:`easlurm.inputs.check_inputs`); in place, returns ``cfg``. With ``data.demo`` and no ``data.train``, the
    built-in demo shards are built under ``data.demo_dir`` first when they are not there yet (numpy and h5py only,
    no torch)."""
    d = cfg.data
    if d.demo and d.train is None:
        from .samples import build_samples

        root = Path(d.demo_dir).resolve()
        if not (root / "train" / "manifest.json").is_file() or not (root / "val" / "manifest.json").is_file():
            echo(f"building the demo shards in {root} …")
        build_samples(root, scale=d.scale, max_pixels=d.max_pixels)
        d.demo_dir = str(root)
        d.train, d.val = str(root / "train"), str(root / "val")
    for name in ("train", "val", "fitness"):
        if getattr(d, name):
            setattr(d, name, _absolute(getattr(d, name)))
    f = cfg.fusion
    f.average_set = _absolute(f.average_set) if f.average_set else f.average_set
    m = cfg.model
    m.pretrained = _absolute(m.pretrained) if m.pretrained else m.pretrained
    p = cfg.loss.perceptual
    p.weights_path = _absolute(p.weights_path) if p.weights_path else p.weights_path
    cfg.eval.sets = {name: _absolute(path) for name, path in cfg.eval.sets.items()}
    if cfg.container.image and "://" not in cfg.container.image:
        cfg.container.image = _absolute(cfg.container.image)
    check_inputs(cfg)
    return cfg


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


__all__ = ["resolve_data"]
