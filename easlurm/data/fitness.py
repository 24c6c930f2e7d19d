"""The EA's fitness set: fixed aligned HR/LR tiles from N distinct source images of a shard folder.

Selection is a pure function of the shard manifest and the arguments (no randomness, no file-system order):

1. **Sources.** Entries are grouped by their ``source`` file name (a sub-image shard folder holds many overlapping
   crops of each photo; they count as one image), the sources sorted by name and the first ``images`` kept. A
   folder with fewer distinct sources is refused. The reference (EA-Adam ``datas/dataset.py``) takes the first 16
   files of ``os.listdir`` of the HR folder — file-system order; easlurm sorts by name so the set is reproducible.
2. **Tile grid.** Each source image (mod-cropped HR, in its own pixel coordinates) is cut into non-overlapping
   ``tile_size`` squares at multiples of ``tile_size``; tile ``k`` is at row ``k // cols``, column ``k % cols``
   (row-major). Pixels right of / below the last whole tile are unused. This is the grid and the order of the
   reference's ``crop_EA_patch`` (``hr.unfold(1, t, t).unfold(2, t, t)`` reshaped to rows × cols).
3. **Tile choice** (``choice``, with ``max_tiles`` = K):

   * ``"reference"``: an image with more than 2K tiles keeps the K tiles ``K // 2 … K // 2 + K - 1``; an image
     with at most 2K tiles keeps all of them. With the reference's K = 50 this is ``crop_EA_patch`` exactly:
     ``patches[25:75]`` (0-based tiles 25–74) when an image has more than 100 tiles, else all.
   * ``"first"``: the first K tiles in row-major order (the image's top rows).
4. **Reading.** A tile is read from the first shard entry, in sorted id order, that contains it (whole-image
   shards: the entry itself). When no single entry contains it (sub-images that overlap by less than a tile,
   e.g. ``--sub-step`` equal to ``--sub-image``), it is assembled from the overlapping entries in sorted id
   order: every crop of a source holds the same pixels of the same HR image and of its whole-image LR (see
   :mod:`easlurm.data.shards`), so the result is identical to tiling the whole image. Pixels no entry covers
   (``--sub-step`` larger than ``--sub-image``) are an error.

**Averaging.** The reference evaluates the fitness set one image per batch (``batch_size_EA: 1``): each
objective is the mean over that image's tiles, and the population's objective is the sum over images divided by
the number of images — the **mean of per-image means** (``mean="image"``). ``mean="tile"`` weights every tile
equally (the same when every image has the same number of tiles). :meth:`FitnessTiles.tile_weights` gives the
per-tile weights and :meth:`FitnessTiles.batches` a batching that reproduces either mean from batch means.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .dataset import ShardReader, to_tensor

__all__ = ["TileChoice", "FitnessMean", "FitnessSource", "FitnessTile", "FitnessTiles", "choose_tiles",
           "IMAGES_FIELD"]

TileChoice = Literal["reference", "first"]
FitnessMean = Literal["image", "tile"]
TILE_CHOICES: tuple[str, ...] = ("reference", "first")
MEANS: tuple[str, ...] = ("image", "tile")
#: The config field that sets ``images``; named in the error when the shards hold too few sources.
IMAGES_FIELD = "data.fitness_images"


class _DataSettings(Protocol):
    """The fields of :class:`easlurm.config.DataConfig` that define the fitness set."""

    scale: int
    fitness_images: int
    fitness_tile: int
    @property
    def fitness_tile_choice(self) -> str: ...
    fitness_max_tiles: int


def choose_tiles(count: int, choice: str, max_tiles: int) -> range:
    """Row-major indices kept from an image with ``count`` tiles under rule ``choice`` with K = ``max_tiles``."""
    if choice == "first":
        return range(min(count, max_tiles))
    if choice == "reference":
        if count > 2 * max_tiles:
            start = max_tiles // 2
            return range(start, start + max_tiles)
        return range(count)
    raise DataError(f"tile choice must be one of {', '.join(TILE_CHOICES)} (got {choice!r})")


@dataclass(frozen=True)
class FitnessSource:
    """One source image: file name, sha256, HR size in px (mod-cropped), tile grid, and its shard entries."""

    name: str
    sha256: str
    height: int
    width: int
    rows: int
    cols: int
    entries: tuple[str, ...]


@dataclass(frozen=True)
class FitnessTile:
    """One tile: its source image (index into :attr:`FitnessTiles.sources`), its row-major index in that image's
    grid, its top-left corner in source HR px, and the pieces it is read from: ``(entry_id, y, x, h, w)`` in
    source HR px (one piece, the whole tile, unless it had to be assembled from several sub-images)."""

    image: int
    index: int
    y: int
    x: int
    pieces: tuple[tuple[str, int, int, int, int], ...]

    @property
    def entries(self) -> list[str]:
        return [p[0] for p in self.pieces]


def _entry_rect(shard_dir: Path, e: dict[str, Any], scale: int, alone: bool) -> tuple[int, int, int, int]:
    """(y, x, h, w) of entry ``e`` in its source's HR px."""
    crop = e.get("crop")
    if crop is None:
        if not alone:
            raise DataError(f"{shard_dir}: entry {e['id']!r} has no crop offset but shares source {e['source']!r} "
                            "with other entries (manifest from an old build? rebuild the shards)")
        crop = [0, 0]
    if (not isinstance(crop, list) or len(crop) != 2 or
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 and v % scale == 0 for v in crop)):
        raise DataError(f"{shard_dir}: entry {e['id']!r} has crop {crop!r}, not two multiples of scale {scale}")
    h, w = e["hr_shape"][:2]
    return crop[0], crop[1], h, w


def _pieces(tile: tuple[int, int, int], rects: list[tuple[str, tuple[int, int, int, int]]]
            ) -> tuple[tuple[str, int, int, int, int], ...] | None:
    """The entries a tile (y, x, size) is read from, or None when some pixel is in no entry."""
    y, x, t = tile
    for eid, (ey, ex, eh, ew) in rects:  # one entry holding the whole tile: the common case, one read
        if ey <= y and ex <= x and y + t <= ey + eh and x + t <= ex + ew:
            return ((eid, y, x, t, t),)
    covered = np.zeros((t, t), dtype=bool)
    pieces = []
    for eid, (ey, ex, eh, ew) in rects:
        y0, x0 = max(y, ey), max(x, ex)
        y1, x1 = min(y + t, ey + eh), min(x + t, ex + ew)
        if y0 >= y1 or x0 >= x1 or covered[y0 - y:y1 - y, x0 - x:x1 - x].all():
            continue
        covered[y0 - y:y1 - y, x0 - x:x1 - x] = True
        pieces.append((eid, y0, x0, y1 - y0, x1 - x0))
        if covered.all():
            return tuple(pieces)
    return None


class FitnessTiles(Dataset):
    """The fitness set of a shard folder (see the module docstring); items are ``(lr, hr)`` float32 CHW RGB in
    [0, 1], ``hr`` ``tile_size`` px square, ``lr`` ``tile_size // scale``.

    ``images``: N distinct source images; ``choice``/``max_tiles``: the tile rule and its K. Tiles are ordered by
    source image, then row-major index. :attr:`image_index` (LongTensor, one per tile) says which of the N images
    each tile comes from. Raises :class:`DataError` naming the shard folder for too few sources, a source smaller
    than one tile, inconsistent entries of one source, or a tile that no entry covers. ``manifest_sha256``: the
    sha256 the shard manifest must have (:class:`~easlurm.data.dataset.ShardReader`).
    """

    def __init__(self, shard_dir: str | os.PathLike[str], tile_size: int, scale: int, images: int,
                 choice: str = "reference", max_tiles: int = 50, *, manifest_sha256: str | None = None) -> None:
        for name, value in (("tile_size", tile_size), ("scale", scale), ("images", images),
                            ("max_tiles", max_tiles)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"{name} must be an integer >= 1 (got {value!r})")
        if tile_size % scale:
            raise DataError(f"tile_size {tile_size} is not a multiple of scale {scale}")
        if choice not in TILE_CHOICES:
            raise DataError(f"tile choice must be one of {', '.join(TILE_CHOICES)} (got {choice!r})")
        self.tile_size, self.scale, self.choice, self.max_tiles = tile_size, scale, choice, max_tiles
        self.reader = ShardReader(shard_dir, scale=scale, manifest_sha256=manifest_sha256)
        d = self.reader.shard_dir
        groups: dict[str, list[dict[str, Any]]] = {}
        for eid in self.reader.ids:  # sorted ids, so each group is in sorted id order
            e = self.reader.entries[eid]
            groups.setdefault(e["source"], []).append(e)
        if len(groups) < images:
            raise DataError(
                f"{d}: the fitness set needs {images} distinct source images ({IMAGES_FIELD}) but these shards "
                f"hold {len(groups)} ({len(self.reader.ids)} entries); build them from more images, point "
                f"data.fitness at a larger shard folder, or lower {IMAGES_FIELD}")
        self.sources: list[FitnessSource] = []
        self.tiles: list[FitnessTile] = []
        self._origin: dict[str, tuple[int, int]] = {}  # entry id -> its top-left in source HR px
        t = tile_size
        for i, name in enumerate(sorted(groups)[:images]):
            group = groups[name]
            hashes = sorted({e["source_sha256"] for e in group})
            if len(hashes) != 1:
                raise DataError(f"{d}: entries of source {name!r} disagree on its sha256 ({', '.join(hashes)})")
            rects = [(e["id"], _entry_rect(d, e, scale, len(group) == 1)) for e in group]
            self._origin.update((eid, (r[0], r[1])) for eid, r in rects)
            height = max(r[0] + r[2] for _, r in rects)
            width = max(r[1] + r[3] for _, r in rects)
            rows, cols = height // t, width // t
            if rows * cols == 0:
                raise DataError(f"{d}: source image {name!r} is {width}x{height} px, smaller than one "
                                f"{t}x{t} fitness tile")
            self.sources.append(FitnessSource(name, hashes[0], height, width, rows, cols,
                                              tuple(e["id"] for e in group)))
            for k in choose_tiles(rows * cols, choice, max_tiles):
                y, x = (k // cols) * t, (k % cols) * t
                pieces = _pieces((y, x, t), rects)
                if pieces is None:
                    raise DataError(f"{d}: fitness tile {k} of {name!r} (y={y}, x={x}, {t} px) is not covered by "
                                    "its sub-images (built with --sub-step larger than --sub-image?)")
                self.tiles.append(FitnessTile(i, k, y, x, pieces))
        self.image_index: torch.Tensor = torch.tensor([tl.image for tl in self.tiles], dtype=torch.long)

    @classmethod
    def from_config(cls, data: _DataSettings, shard_dir: str | os.PathLike[str]) -> FitnessTiles:
        """The fitness set that ``data`` (a :class:`easlurm.config.DataConfig`) describes, from ``shard_dir``."""
        return cls(shard_dir, data.fitness_tile, data.scale, data.fitness_images, choice=data.fitness_tile_choice,
                   max_tiles=data.fitness_max_tiles)

    def __len__(self) -> int:
        return len(self.tiles)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ``index`` as uint8 HWC RGB arrays ``(lr, hr)``."""
        tile = self.tiles[index]
        s, t = self.scale, self.tile_size
        hr = np.empty((t, t, 3), dtype=np.uint8)
        lr = np.empty((t // s, t // s, 3), dtype=np.uint8)
        for eid, y, x, h, w in tile.pieces:
            ey, ex = self._origin[eid]
            hr[y - tile.y:y - tile.y + h, x - tile.x:x - tile.x + w] = self.reader.read(eid, "hr", y - ey, x - ex,
                                                                                        h, w)
            ly, lx = (y - tile.y) // s, (x - tile.x) // s
            lr[ly:ly + h // s, lx:lx + w // s] = self.reader.read(eid, "lr", (y - ey) // s, (x - ex) // s,
                                                                  h // s, w // s)
        return lr, hr

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self.read(index)
        return to_tensor(lr), to_tensor(hr)

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All tiles in memory: ``lr`` T×3×(t/s)×(t/s), ``hr`` T×3×t×t (float32 RGB [0, 1]) and ``image_index``
        (T, int64)."""
        pairs = [self[k] for k in range(len(self))]
        lr = torch.stack([p[0] for p in pairs])
        hr = torch.stack([p[1] for p in pairs])
        return lr, hr, self.image_index.clone()

    def tiles_per_image(self) -> list[int]:
        """How many tiles each of the N images contributes."""
        return [int(c) for c in torch.bincount(self.image_index, minlength=len(self.sources)).tolist()]

    def tile_weights(self, mean: str = "image") -> torch.Tensor:
        """Per-tile weights (float64, sum 1): objective = Σ weight_t · loss_t for per-tile losses ``loss_t``.

        ``"image"``: 1 / (N · tiles of the tile's image) — the mean of per-image means (reference);
        ``"tile"``: 1 / T — the mean over all tiles.
        """
        if mean == "tile":
            return torch.full((len(self),), 1.0 / len(self), dtype=torch.float64)
        if mean == "image":
            counts = torch.tensor(self.tiles_per_image(), dtype=torch.float64)
            return 1.0 / (len(self.sources) * counts[self.image_index])
        raise DataError(f"fitness mean must be one of {', '.join(MEANS)} (got {mean!r})")

    def batches(self, size: int, mean: str = "image") -> list[tuple[int, int, float]]:
        """``[(start, stop, weight)]``: tile batches of at most ``size`` such that objective = Σ weight ·
        (mean loss over tiles ``start:stop``), for a loss that is a mean over equally sized tiles (L1, the
        perceptual loss). With ``"image"`` no batch spans two images; with ``"tile"`` batches are consecutive
        chunks of ``size``. Weights sum to 1."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise DataError(f"batch size must be an integer >= 1 (got {size!r})")
        w = self.tile_weights(mean)
        if mean == "tile":
            bounds = [(s, min(s + size, len(self))) for s in range(0, len(self), size)]
        else:
            bounds = []
            start = 0
            for n in self.tiles_per_image():
                bounds += [(s, min(s + size, start + n)) for s in range(start, start + n, size)]
                start += n
        return [(a, b, float(w[a:b].sum())) for a, b in bounds]

    def manifest_rows(self) -> list[dict[str, Any]]:
        """Per tile: ``source`` (file name), ``image`` (0..N-1), ``tile`` (row-major index), ``y``, ``x``,
        ``size`` (source HR px) and ``entries`` (shard entry ids it is read from)."""
        return [{"source": self.sources[tl.image].name, "image": tl.image, "tile": tl.index, "y": tl.y, "x": tl.x,
                 "size": self.tile_size, "entries": tl.entries} for tl in self.tiles]

    def source_hashes(self) -> dict[str, str]:
        """``{source file name: sha256}`` of the N images."""
        return {src.name: src.sha256 for src in self.sources}

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the selection: rule, sources (name, sha256, size, grid, tiles) and every tile."""
        counts = self.tiles_per_image()
        return {"tile_size": self.tile_size, "scale": self.scale, "choice": self.choice,
                "max_tiles": self.max_tiles, "count": len(self),
                "sources": [{"name": s.name, "sha256": s.sha256, "height": s.height, "width": s.width,
                             "grid": [s.rows, s.cols], "tiles": counts[i]} for i, s in enumerate(self.sources)],
                "tiles": self.manifest_rows()}
