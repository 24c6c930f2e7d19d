"""Torch datasets over HDF5 shards (see :mod:`easlurm.data.shards`): random training patches and their loader.

Every item is ``(lr, hr)`` float32 CHW RGB tensors in [0, 1]; ``hr`` is ``scale`` times the size of ``lr`` and
pixel-aligned with it (LR crop = HR crop / scale exactly). Fitness tiles and whole images are read through
:class:`ShardReader` (:mod:`easlurm.data.fitness`, fusion's averaging, :mod:`easlurm.scoring`).

Shards are opened read-only, lazily, once per process: the handle table remembers the pid that opened it and is
dropped after a fork, and is never pickled (so DataLoader workers with fork, spawn or forkserver each open their
own). HDF5 file locking is switched off because shards are read-only and usually live on NFS/Lustre, where
HDF5's locks fail or hang.
"""
from __future__ import annotations

import os

# Must be in the environment before HDF5 opens a file; read-only shards on NFS/Lustre need no locks.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import itertools  # noqa: E402
from collections import OrderedDict  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Sampler  # noqa: E402

from ..errors import DataError  # noqa: E402
from .shard_files import ShardLayout, check_shard, chunk_side, read_region  # noqa: E402
from .shards import MANIFEST_NAME, load_manifest  # noqa: E402

__all__ = ["ShardReader", "PatchPlan", "RandomPatchDataset", "IndexRangeSampler", "infinite_loader", "to_tensor",
           "augment"]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HWC RGB array -> float32 CHW tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise DataError(f"{name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


class ShardReader:
    """Reads HR/LR regions of shard entries; one lazily opened read-only h5py handle per shard and process.

    At most ``max_open`` shard files stay open per process (least recently used are closed), so a dataset of
    thousands of shards does not exhaust file descriptors in every DataLoader worker.

    Each shard file is checked when it is opened (:func:`easlurm.data.shard_files.check_shard`): every dataset its
    manifest entries name must be a plain chunked uint8 dataset of the recorded shape, chunk size and codec, or a
    :class:`DataError` names the file and the dataset; reads inflate compressed chunks with bounded output.
    ``manifest_sha256``: the sha256 the manifest's bytes must have (recorded at launch), checked on the bytes read.
    """

    max_open = 64

    def __init__(self, shard_dir: str | os.PathLike[str], scale: int | None = None, *,
                 manifest_sha256: str | None = None) -> None:
        self.shard_dir = Path(shard_dir)
        self.manifest = load_manifest(self.shard_dir, sha256=manifest_sha256)
        self.scale: int = self.manifest["scale"]
        if scale is not None and _check_int("scale", scale, 1) != self.scale:
            raise DataError(f"{self.shard_dir / MANIFEST_NAME}: shards were built for scale {self.scale}, "
                            f"not {scale}")
        self.chunk_side = chunk_side(self.manifest, self.shard_dir / MANIFEST_NAME)
        self.entries: dict[str, dict[str, Any]] = {e["id"]: e for e in self.manifest["entries"]}
        self.ids: list[str] = [e["id"] for e in self.manifest["entries"]]  # sorted (validated by load_manifest)
        self._by_shard: dict[str, list[dict[str, Any]]] = {}
        for e in self.manifest["entries"]:
            self._by_shard.setdefault(e["shard"], []).append(e)
        self._files: OrderedDict[str, tuple[h5py.File, dict[str, ShardLayout]]] = OrderedDict()
        # Layouts of shards checked before, with the identity of the file checked: a shard closed by the LRU and
        # reopened is checked again only when it is another file or was changed (ctime cannot be set back).
        self._checked: dict[str, tuple[tuple[int, ...], dict[str, ShardLayout]]] = {}
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = OrderedDict()  # an open HDF5 handle must never cross a process boundary
        state["_pid"] = None
        return state

    def _file(self, name: str) -> tuple[h5py.File, dict[str, ShardLayout]]:
        pid = os.getpid()
        if self._pid != pid:
            # Inherited through fork: these handles belong to the parent's HDF5 state; open our own.
            self._files = OrderedDict()
            self._pid = pid
        opened = self._files.get(name)
        if opened is not None:
            self._files.move_to_end(name)
            return opened
        if len(self._files) >= self.max_open:
            self._files.popitem(last=False)[1][0].close()
        path = self.shard_dir / name
        try:
            f = h5py.File(path, "r", locking=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot open shard ({exc})") from exc
        try:
            st = os.fstat(f.id.get_vfd_handle())
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns, st.st_mtime_ns)
            checked = self._checked.get(name)
            if checked is not None and checked[0] == identity:
                layouts = checked[1]
            else:
                layouts = check_shard(f, path, self._by_shard.get(name, []), self.chunk_side, self.scale)
                self._checked[name] = (identity, layouts)
        except BaseException:
            f.close()
            raise
        self._files[name] = (f, layouts)
        return f, layouts

    def read(self, entry_id: str, kind: str, y: int, x: int, h: int, w: int) -> np.ndarray:
        """uint8 HWC RGB region ``[y:y+h, x:x+w]`` of entry ``entry_id``'s ``kind`` (``"hr"`` or ``"lr"``) image,
        in that image's own pixel coordinates."""
        entry = self.entries.get(entry_id)
        if entry is None:
            raise DataError(f"{self.shard_dir}: no entry {entry_id!r} in the manifest")
        if kind not in ("hr", "lr"):
            raise DataError(f"{self.shard_dir}: image kind must be 'hr' or 'lr' (got {kind!r})")
        f, layouts = self._file(entry["shard"])
        key = f"{kind}/{entry_id}"
        expected = tuple(entry[f"{kind}_shape"])
        if y < 0 or x < 0 or h < 0 or w < 0 or y + h > expected[0] or x + w > expected[1]:
            raise DataError(f"{entry_id}: region y={y} x={x} {h}x{w} outside {kind} image {expected[:2]}")
        return read_region(f[key], layouts[key], self.shard_dir / entry["shard"], key, y, x, h, w)

    def read_full(self, entry_id: str, kind: str) -> np.ndarray:
        """The whole uint8 HWC RGB ``kind`` image of ``entry_id``."""
        entry = self.entries.get(entry_id)
        if entry is None:
            raise DataError(f"{self.shard_dir}: no entry {entry_id!r} in the manifest")
        h, w = entry[f"{kind}_shape"][:2]
        return self.read(entry_id, kind, 0, 0, h, w)

    def close(self) -> None:
        """Close this process's handles (reopened lazily on the next read)."""
        if self._pid == os.getpid():
            for f, _ in self._files.values():
                f.close()
        self._files = OrderedDict()


@dataclass(frozen=True)
class PatchPlan:
    """Where sample ``index`` comes from: entry, LR-pixel top-left corner, and the augmentation flags."""

    entry_id: str
    ly: int
    lx: int
    hflip: bool
    vflip: bool
    rot90: bool


def augment(img: np.ndarray, plan: PatchPlan) -> np.ndarray:
    """Apply ``plan``'s flips (horizontal, then vertical) and 90° rotation (H/W transpose) to an HWC image."""
    if plan.hflip:
        img = img[:, ::-1]
    if plan.vflip:
        img = img[::-1]
    if plan.rot90:
        img = img.transpose(1, 0, 2)
    return img


class RandomPatchDataset(Dataset):
    """Random aligned training patches; item ``index`` is a pure function of ``(seed, index)``.

    ``patch_size``: HR patch side in px (multiple of ``scale``; LR patch is ``patch_size // scale``). Each item
    draws, from a generator seeded by ``(seed, index)``: an entry (uniform over entries), an LR-grid top-left
    corner, and (when ``augment``) hflip/vflip/rot90 each with probability 1/2, applied identically to LR and HR.
    So a training position is just the global sample index and resuming is exact for any worker count.
    ``len()`` is ``num_samples``; any index >= 0 is valid. Returns ``(lr, hr)`` float32 CHW RGB in [0, 1].
    ``manifest_sha256``: as for :class:`ShardReader`.
    """

    def __init__(self, shard_dir: str | os.PathLike[str], patch_size: int, scale: int, num_samples: int,
                 seed: int = 0, augment: bool = True, *, manifest_sha256: str | None = None) -> None:
        self.scale = _check_int("scale", scale, 1)
        self.patch_size = _check_int("patch_size", patch_size, 1)
        if self.patch_size % self.scale:
            raise DataError(f"patch_size {patch_size} is not a multiple of scale {scale}")
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.seed = _check_int("seed", seed, 0)
        self.augment = bool(augment)
        self.reader = ShardReader(shard_dir, scale=self.scale, manifest_sha256=manifest_sha256)
        self.ids = list(self.reader.ids)
        lr_shapes = []
        for eid in self.ids:
            hr_h, hr_w = self.reader.entries[eid]["hr_shape"][:2]
            if hr_h < self.patch_size or hr_w < self.patch_size:
                raise DataError(f"{self.reader.shard_dir}: entry {eid!r} is {hr_w}x{hr_h} px, smaller than "
                                f"patch_size {self.patch_size}")
            lr_shapes.append(self.reader.entries[eid]["lr_shape"][:2])
        self._lr_shapes = np.asarray(lr_shapes, dtype=np.int64)

    def __len__(self) -> int:
        return self.num_samples

    def plan(self, index: int) -> PatchPlan:
        """The crop and augmentation of sample ``index`` (deterministic in ``(seed, index)``)."""
        index = int(index)
        if index < 0:
            raise IndexError(f"sample index must be >= 0 (got {index})")
        rng = np.random.default_rng([self.seed, index])
        k = int(rng.integers(len(self.ids)))
        lp = self.patch_size // self.scale
        lh, lw = self._lr_shapes[k]
        ly = int(rng.integers(lh - lp + 1))
        lx = int(rng.integers(lw - lp + 1))
        flips = rng.random(3) < 0.5
        if not self.augment:
            flips[:] = False
        return PatchPlan(self.ids[k], ly, lx, bool(flips[0]), bool(flips[1]), bool(flips[2]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.plan(index)
        s, lp = self.scale, self.patch_size // self.scale
        lr = self.reader.read(p.entry_id, "lr", p.ly, p.lx, lp, lp)
        hr = self.reader.read(p.entry_id, "hr", p.ly * s, p.lx * s, self.patch_size, self.patch_size)
        return to_tensor(augment(lr, p)), to_tensor(augment(hr, p))


class IndexRangeSampler(Sampler[int]):
    """Yields ``start, start + 1, …`` up to ``stop`` (exclusive), or forever when ``stop`` is None."""

    def __init__(self, start: int = 0, stop: int | None = None) -> None:
        self.start = _check_int("start_index", start, 0)
        self.stop = None if stop is None else _check_int("stop_index", stop, self.start)

    def __iter__(self) -> Iterator[int]:
        return iter(itertools.count(self.start) if self.stop is None else range(self.start, self.stop))

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an endless IndexRangeSampler has no length")
        return self.stop - self.start


def infinite_loader(dataset: Dataset, batch_size: int, start_index: int = 0, num_workers: int = 0,
                    stop_index: int | None = None, pin_memory: bool = False) -> Iterator[Any]:
    """Batches of the samples with global indices ``start_index, start_index + 1, …`` in order.

    Batch ``b`` holds indices ``start_index + b·batch_size …`` (+ ``batch_size - 1``), so training that stopped
    after ``n`` samples resumes with ``start_index = n`` and sees exactly the batches it would have seen, for any
    ``num_workers`` (items must be pure functions of their index, as in :class:`RandomPatchDataset`). Endless
    unless ``stop_index`` is given (then the last batch may be short). The loader has its own torch generator, so
    creating it does not advance the global torch RNG.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    num_workers = _check_int("num_workers", num_workers, 0)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=IndexRangeSampler(start_index, stop_index),
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )
    return iter(loader)
