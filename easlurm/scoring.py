"""Score super-resolution models on test sets: the public scoring API behind ``easlurm.evaluate`` and the benchmarks.

A **test set** (:class:`EvalSet`, opened with :func:`open_test_set`) is either a shard folder (holds
``manifest.json``; every entry's HR image) or a folder of HR images (``read_rgb`` policy, sorted file names). Each
HR image is mod-cropped (bottom/right) to a multiple of ``scale``; the LR input is made from it with the project's
MATLAB-style bicubic (:func:`easlurm.data.bicubic.bicubic_downscale`), so every set is degraded the same way.

:func:`score_model` scores one model on one set, :func:`score_models` several models on one set while reading and
degrading every image once. A model is an ``nn.Module`` run through :func:`easlurm.inference.super_resolve`
(whole image, or tiles of ``tile`` LR px with ``overlap`` px of context; uint8 output with BasicSR rounding), or
``None`` for the **bicubic** baseline (:func:`easlurm.data.bicubic.bicubic_upscale` of the same LR). Metrics are
:func:`easlurm.metrics.build_metrics` objects; each scores the uint8 SR image against the uint8 HR image.

While it works, a progress bar per set (images done, rate, ETA) goes to stderr when stderr is a terminal; batch
jobs' logs stay quiet.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from .errors import DataError, EaslurmError
from .metrics.registry import ImageMetric
from .runtime import pick_device

__all__ = ["EvalError", "EvalSet", "ImageScore", "ModelScore", "open_test_set", "open_test_sets", "score_model",
           "score_models"]

_T = TypeVar("_T")


class EvalError(EaslurmError):
    """A test set, model or evaluation setting is unusable; the message names the set, path or model."""


@dataclass(frozen=True)
class EvalSet:
    """One test set: ``kind`` is ``"shards"`` (``ids`` = entry ids) or ``"folder"`` (``ids`` = file names)."""

    name: str
    path: Path
    kind: str
    ids: tuple[str, ...]
    max_pixels: int | None = None  # images larger than this are refused before decoding (None: Pillow's limit)

    def images(self, scale: int) -> Iterator[tuple[str, np.ndarray]]:
        """``(id, HR)`` pairs in order; HR is uint8 HWC RGB, mod-cropped to a multiple of ``scale``."""
        if self.kind == "shards":
            from .data.dataset import ShardReader

            reader = ShardReader(self.path)
            try:
                for eid in self.ids:
                    yield eid, _mod_crop(reader.read_full(eid, "hr"), scale, f"{self.path} entry {eid}")
            finally:
                reader.close()
        else:
            from .data.images import read_rgb

            for fname in self.ids:
                yield fname, _mod_crop(read_rgb(self.path / fname, self.max_pixels), scale, str(self.path / fname))


def _mod_crop(img: np.ndarray, scale: int, where: str) -> np.ndarray:
    h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
    if h == 0 or w == 0:
        raise EvalError(f"{where}: image is {img.shape[1]}x{img.shape[0]} px, smaller than scale {scale}")
    return np.ascontiguousarray(img[:h, :w])


def open_test_set(name: str, path: str | Path, max_pixels: int | None = None) -> EvalSet:
    """Check a test-set folder and list its images; raise :class:`EvalError` naming the set and the path (and, for
    a missing folder, what to put there)."""
    p = Path(path)
    if not p.exists():
        raise EvalError(f"test set {name!r}: {p.absolute()} does not exist — put the set's HR images there (a folder "
                        f"of PNG/JPEG/BMP/TIFF/WebP files, or a shard folder from `python -m easlurm.data build`), "
                        f"or point eval.sets.{name} (or --sets {name}=PATH) at where they are")
    if not p.is_dir():
        raise EvalError(f"test set {name!r}: {p} is not a folder (expected a shard folder or a folder of images)")
    try:
        if (p / "manifest.json").is_file():
            from .data.shards import load_manifest

            manifest = load_manifest(p)
            ids = tuple(e["id"] for e in manifest["entries"])
            if not ids:
                raise EvalError(f"test set {name!r}: shard folder {p} has no entries")
            return EvalSet(name, p, "shards", ids)
        from .data.images import list_images

        return EvalSet(name, p, "folder", tuple(f.name for f in list_images(p)), max_pixels)
    except DataError as exc:
        raise EvalError(f"test set {name!r}: {exc}") from exc


def open_test_sets(sets: Mapping[str, str | Path], max_pixels: int | None = None) -> list[EvalSet]:
    """Open every set of ``{name: path}`` (in order); all problems go into ONE :class:`EvalError` naming each set."""
    opened, problems = [], []
    for name, path in sets.items():
        try:
            opened.append(open_test_set(name, path, max_pixels))
        except EvalError as exc:
            problems.append(str(exc))
    if problems:
        raise EvalError("bad test set" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems))
    return opened


@dataclass(frozen=True)
class ImageScore:
    """The metrics of one model on one image (``image``: shard entry id or file name)."""

    image: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class ModelScore:
    """One model on one set: per-image metrics in set order, and their means."""

    label: str
    set: str
    images: tuple[ImageScore, ...]

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def means(self) -> dict[str, float]:
        """Each metric's mean over the images (``inf`` PSNR of a perfect image makes the mean ``inf``)."""
        names = list(dict.fromkeys(k for s in self.images for k in s.metrics))
        return {k: float(np.mean([s.metrics.get(k, math.nan) for s in self.images])) for k in names}


def _progress(items: Iterable[_T], total: int, desc: str) -> Iterator[_T]:
    """``items`` with a progress bar (count, rate, ETA) on stderr when it is a terminal; plain otherwise."""
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, unit="img", disable=not sys.stderr.isatty(), dynamic_ncols=True)


def score_models(models: Sequence[tuple[str, nn.Module | None]], eval_set: EvalSet | str | Path, scale: int,
                 metrics: Sequence[ImageMetric], *, device: str | torch.device | None = None,
                 tile: int | None = None, overlap: int = 16) -> dict[str, ModelScore]:
    """Score several models on one test set, reading and degrading each image once (module docstring).

    Args:
        models: ``(label, model)`` pairs, labels unique; a model maps NCHW RGB in [0, 1] to ×``scale``, ``None``
            means bicubic upscaling. Models are moved to ``device`` in place and left there.
        eval_set: an opened :class:`EvalSet`, or a folder path (opened as a set named after the folder).
        scale: the SR factor (HR sides are mod-cropped to multiples of it).
        metrics: from :func:`easlurm.metrics.build_metrics`.
        device: where the models run (default: CUDA when available, else CPU).
        tile, overlap: tiled inference in LR px (None: whole image).

    Returns:
        ``{label: ModelScore}`` in the order of ``models``. Raises :class:`EvalError` naming the set and image when
        a metric or the tile settings reject an image.
    """
    from .data.bicubic import bicubic_downscale, bicubic_upscale
    from .inference import InferenceError, super_resolve
    from .metrics.psnr_ssim import MetricError

    ts = eval_set if isinstance(eval_set, EvalSet) else open_test_set(Path(eval_set).name, eval_set)
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise EvalError(f"score_models: model labels must be unique, got {labels}")
    dev = pick_device(device)
    per: dict[str, list[ImageScore]] = {label: [] for label in labels}
    with torch.no_grad():
        for image_id, hr in _progress(ts.images(scale), len(ts.ids), f"{ts.name} ({len(models)} models)"):
            lr = bicubic_downscale(hr, scale)
            for label, model in models:
                try:
                    sr = bicubic_upscale(lr, scale) if model is None else super_resolve(model, lr, scale, tile,
                                                                                       overlap, dev)
                except InferenceError as exc:
                    raise EvalError(f"test set {ts.name!r}, image {image_id}, model {label}: {exc}") from exc
                try:
                    values = {m.spec.name: m(sr, hr) for m in metrics}
                except MetricError as exc:
                    raise EvalError(f"test set {ts.name!r}, image {image_id}: {exc}") from exc
                per[label].append(ImageScore(image_id, values))
    return {label: ModelScore(label, ts.name, tuple(per[label])) for label in labels}


def score_model(model: nn.Module | None, eval_set: EvalSet | str | Path, scale: int,
                metrics: Sequence[ImageMetric], *, device: str | torch.device | None = None,
                tile: int | None = None, overlap: int = 16, label: str = "model") -> ModelScore:
    """Score one model (``None``: bicubic) on one test set: per-image metrics and their means (see
    :func:`score_models` for the arguments)."""
    return score_models([(label, model)], eval_set, scale, metrics, device=device, tile=tile,
                        overlap=overlap)[label]
