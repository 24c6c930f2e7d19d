"""A built-in demo dataset of real photos that ship inside installed wheels (DESIGN.md §5), as shard folders.

* ``val`` (3): scikit-image ``astronaut`` and ``coffee``, scikit-learn ``china``.
* ``train`` (9): scikit-image ``chelsea``, ``rocket``, ``motorcycle_left`` / ``motorcycle_right`` (the two views
  of ``stereo_motorcycle``), ``hubble_deep_field``, ``immunohistochemistry``, ``retina``; scikit-learn
  ``flower``; matplotlib ``grace_hopper``.

All twelve load offline: scikit-image ≥ 0.21 ships these files inside its wheel (``skimage/data``), so ``pooch``
(which scikit-image uses for its larger, downloaded images) is neither needed nor used. The scikit-learn images are
read straight from ``sklearn/datasets/images`` (scikit-learn must be installed, but is not imported).
The images are written as PNG to a temp folder and turned into shards by :func:`build_shards`, with bicubic LR
at the requested scale; ids are the names above.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .images import read_rgb
from .shards import build_shards, verify_shards

__all__ = ["VAL_IDS", "TRAIN_IDS", "build_samples", "sample_image"]


def _skimage(name: str, pick: int | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[pick] if pick is not None else img
    return load


def _package_file(package: str, *parts: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise DataError(f"sample image {parts[-1]}: package {package!r} is not installed "
                            f"(pip install {'scikit-learn' if package == 'sklearn' else package})")
        return read_rgb(Path(spec.origin).parent.joinpath(*parts))
    return load


_SOURCES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "china": _package_file("sklearn", "datasets", "images", "china.jpg"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _skimage("stereo_motorcycle", 0),
    "motorcycle_right": _skimage("stereo_motorcycle", 1),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "flower": _package_file("sklearn", "datasets", "images", "flower.jpg"),
    "grace_hopper": _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
}

VAL_IDS: tuple[str, ...] = ("astronaut", "china", "coffee")
TRAIN_IDS: tuple[str, ...] = ("chelsea", "flower", "grace_hopper", "hubble_deep_field", "immunohistochemistry",
                              "motorcycle_left", "motorcycle_right", "retina", "rocket")


def sample_image(name: str) -> np.ndarray:
    """One sample photo as uint8 HWC RGB (0–255); ``name`` is one of :data:`VAL_IDS` / :data:`TRAIN_IDS`."""
    if name not in _SOURCES:
        raise DataError(f"unknown sample image {name!r} (known: {', '.join(sorted(_SOURCES))})")
    img = np.asarray(_SOURCES[name]())
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"sample image {name!r} loaded as {img.dtype} {img.shape}, expected uint8 HWC RGB")
    return np.ascontiguousarray(img)


def _is_current(folder: Path, scale: int, ids: tuple[str, ...]) -> bool:
    try:
        m = verify_shards(folder)
    except DataError:
        return False
    return m["scale"] == scale and [e["id"] for e in m["entries"]] == sorted(ids)


def build_samples(out_dir: str | os.PathLike[str], scale: int = 4, max_pixels: int | None = None) -> dict[str, Path]:
    """Build ``out_dir/train`` and ``out_dir/val`` shard folders (HR + bicubic ×``scale`` LR); return their paths.
    ``max_pixels``: as for :func:`~easlurm.data.shards.build_shards` (the sample photos are all below 1 MP).

    Idempotent: a split whose manifest verifies (checksums, scale, ids) is left untouched, so a second call only
    hashes the existing shards (~100 MB/s). Each split is built atomically by :func:`build_shards`.
    """
    out = Path(out_dir)
    splits = {"train": TRAIN_IDS, "val": VAL_IDS}
    result = {name: out / name for name in splits}
    for name, ids in splits.items():
        dest = result[name]
        if _is_current(dest, scale, ids):
            continue
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".samples-{name}-", dir=out) as tmp:
            for sid in ids:
                # Fast PNG compression: the files live only until build_shards has read them.
                Image.fromarray(sample_image(sid)).save(Path(tmp) / f"{sid}.png", compress_level=1)
            build_shards(tmp, dest, scale, max_pixels=max_pixels)
    return result
