"""The one seam between easlurm and Apptainer: how a command line is wrapped to run inside the image.

``container.image`` set → every job runs ``apptainer exec [--nv] --bind <run dir> --bind <data dirs> … IMAGE cmd``.
No Apptainer runtime is needed to build these command lines, so they are tested directly; the image itself is built
from ``containers/easlurm.def``.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Sequence

from ..config import Config
from ..errors import ConfigError


def bind_paths(cfg: Config, run_root: Path) -> list[str]:
    """Folders a job must see inside the container: the run dir, the data and weight folders, extra binds."""
    paths: list[str] = [str(run_root)]
    for p in (cfg.data.train, cfg.data.val, cfg.data.fitness, cfg.model.pretrained,
              cfg.loss.perceptual.weights_path):
        if p:
            folder = Path(p).resolve()
            paths.append(str(folder if folder.is_dir() or not folder.suffix else folder.parent))
    if cfg.data.demo:
        paths.append(str(Path(cfg.data.demo_dir).resolve()))
    paths += [str(Path(p).resolve()) if ":" not in p else p for p in cfg.container.binds]
    out: list[str] = []
    for p in paths:  # de-duplicate, keep order, drop folders already under a bound one
        if p not in out and not any(p.startswith(q.rstrip("/") + "/") for q in out if ":" not in q):
            out.append(p)
    return out


def container_prefix(cfg: Config, run_root: Path) -> list[str]:
    """``[]`` without an image, else the ``apptainer exec`` words that precede the command."""
    image = cfg.container.image
    if not image:
        return []
    if not image.endswith(".sif") and "://" not in image:
        raise ConfigError(f"container.image: expected a .sif file (or a URI), got {image!r}")
    words = [cfg.container.binary, "exec"]
    if cfg.container.nv:
        words.append("--nv")
    for p in bind_paths(cfg, run_root):
        words += ["--bind", p]
    words.append(image)
    return words


def wrap(cfg: Config, run_root: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` as it runs for this config: inside the container when one is configured."""
    return [*container_prefix(cfg, run_root), *argv]


def python_command(cfg: Config, run_root: Path, python: str = "python") -> str:
    """The interpreter string for submitit's ``python=`` parameter (a shell-quoted command line)."""
    return " ".join(shlex.quote(w) for w in wrap(cfg, run_root, [python]))
