"""One shard file as data: only the kind of datasets ``easlurm.data build`` writes, read with bounded memory.

A shard is read by every training, fitness and evaluation process, but whoever can write the shard folder chooses
its bytes (the manifest's sha256 proves nothing: the same person writes it). HDF5 can do far more than hold
pixels, so :func:`check_shard` refuses, with one :class:`~easlurm.errors.DataError` naming the file and the
dataset, anything :mod:`easlurm.data.shards` never writes (security audit N4):

* a link to ``hr``/``lr`` or to a dataset that is soft or external (HDF5 would open another path or file);
* a dataset that is not chunked — in particular one with *external raw storage* (its pixels are the bytes of
  another file) or a *virtual* dataset (mapped from other datasets or files); a resizable dataset;
* a chunk side larger than :data:`CHUNK_SLACK` × what the build wrote (the manifest's ``build.chunk``, at most
  :data:`MAX_CHUNK`; LR: ``chunk // scale``) — one huge gzip chunk cost +105 MiB and 0.8 s per 32×32 read;
* a filter other than gzip (deflate) or lzf, alone (shuffle, fletcher32, n-bit, plugins … are refused before HDF5
  would load a plugin), or an lzf chunk-size hint beyond the chunk.

Compressed chunks are bounded too, per read: a chunk whose stored size exceeds its raw size (plus the few bytes
deflate may add) is refused before it is read, and gzip chunks are inflated here by :mod:`zlib` with the output
capped at the chunk's raw size (HDF5's own deflate filter grows its buffer without limit: a 64×64×3 chunk of
393 KB inflated to 382 MiB). lzf output is bounded by its format (at most ~88× the stored bytes).
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DataError

__all__ = ["DEFAULT_CHUNK", "MAX_CHUNK", "CHUNK_SLACK", "ShardLayout", "chunk_side", "check_shard", "read_region"]

DEFAULT_CHUNK = 64  # HR chunk side in px; see bench/results/loader.md for the measurement behind it
#: The largest HR chunk side ``build_shards`` accepts (and a manifest may record).
MAX_CHUNK = 256
#: How much larger than the recorded chunk side a shard's chunks may be.
CHUNK_SLACK = 2
_DEFLATE, _LZF = 1, 32000  # HDF5 filter ids
_CODECS = {_DEFLATE: "gzip", _LZF: "lzf"}


@dataclass(frozen=True)
class ShardLayout:
    """How one checked dataset is stored: its chunk shape, codec (None, ``"gzip"``, ``"lzf"``) and raw chunk bytes."""

    chunks: tuple[int, int, int]
    codec: str | None
    chunk_bytes: int

    @property
    def max_stored(self) -> int:
        """The most bytes a stored chunk may take (deflate may add ~0.1 % + a header to incompressible data)."""
        return self.chunk_bytes + self.chunk_bytes // 256 + 64


def chunk_side(manifest: Mapping[str, Any], where: str | Path) -> int:
    """The HR chunk side the manifest's build recorded (:data:`DEFAULT_CHUNK` when it records none)."""
    build = manifest.get("build")
    side = build.get("chunk", DEFAULT_CHUNK) if isinstance(build, dict) else DEFAULT_CHUNK
    if side is None:
        return DEFAULT_CHUNK
    if isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= MAX_CHUNK:
        raise DataError(f"{where}: build.chunk {side!r} is not an integer from 1 to {MAX_CHUNK}")
    return side


def _bad(path: Path, key: str, why: str) -> DataError:
    return DataError(f"{path}: dataset {key!r} {why}; a shard holds only what `python -m easlurm.data build` "
                     "writes (rebuild the shards)")


def _hard_link(group: h5py.Group, name: str, path: Path, key: str) -> None:
    link = group.get(name, getlink=True)
    if link is None:
        raise DataError(f"{path}: dataset {key!r} missing (corrupt shard?)")
    if not isinstance(link, h5py.HardLink):
        what = {h5py.SoftLink: "a soft link", h5py.ExternalLink: "an external link"}.get(type(link), "a link")
        raise _bad(path, key, f"is reached through {what} ({name!r} in {group.name!r})")


def _group(f: h5py.File, path: Path, kind: str, key: str) -> h5py.Group:
    _hard_link(f, kind, path, key)
    group = f[kind]
    if not isinstance(group, h5py.Group):
        raise _bad(path, key, f"lies under {kind!r}, which is not a group")
    return group


def check_dataset(group: h5py.Group, path: Path, key: str, shape: Sequence[int], max_side: int) -> ShardLayout:
    """Check dataset ``key`` (``"hr/<id>"`` or ``"lr/<id>"``) in ``group`` (its ``hr``/``lr`` group, checked by
    :func:`check_shard`) of the shard at ``path``; return its layout."""
    entry_id = key.partition("/")[2]
    _hard_link(group, entry_id, path, key)
    ds = group[entry_id]
    if not isinstance(ds, h5py.Dataset):
        raise _bad(path, key, "is not a dataset")
    if ds.shape != tuple(shape) or ds.dtype != np.uint8:
        raise DataError(f"{path}: dataset {key!r} is {ds.dtype} {ds.shape}, manifest says uint8 {tuple(shape)}")
    if ds.is_virtual:
        raise _bad(path, key, "is a virtual dataset (mapped from other datasets or files)")
    if ds.external:
        raise _bad(path, key, f"uses external raw storage ({', '.join(str(e[0]) for e in ds.external)})")
    if ds.chunks is None:
        raise _bad(path, key, "is not chunked")
    if ds.maxshape != ds.shape:
        raise _bad(path, key, f"is resizable (maxshape {ds.maxshape})")
    chunks = tuple(int(c) for c in ds.chunks)
    if len(chunks) != 3 or chunks[0] > max_side or chunks[1] > max_side or chunks[2] != ds.shape[2]:
        raise _bad(path, key, f"has chunks {chunks}, larger than {max_side} px a side ({CHUNK_SLACK}× the "
                              "recorded build.chunk)")
    plist = ds.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    codec: str | None = None
    if filters:
        code, _flags, values, name = filters[0]
        if len(filters) > 1 or code not in _CODECS:
            names = ", ".join(f"{fl[3].decode(errors='replace') or '?'} ({fl[0]})" for fl in filters)
            raise _bad(path, key, f"uses the filter(s) {names}; only gzip or lzf alone are allowed")
        codec = _CODECS[code]
        if codec == "lzf" and len(values) >= 3 and values[2] > math.prod(chunks):
            raise _bad(path, key, f"has an lzf buffer hint of {values[2]} bytes for {math.prod(chunks)}-byte chunks")
    return ShardLayout((chunks[0], chunks[1], chunks[2]), codec, math.prod(chunks))


def check_shard(f: h5py.File, path: Path, entries: Sequence[Mapping[str, Any]], side: int,
                scale: int) -> dict[str, ShardLayout]:
    """Check every dataset the manifest ``entries`` of this shard name; ``{"hr/<id>": layout, …}``.

    ``side``: the recorded HR chunk side (:func:`chunk_side`); LR chunks are bounded by ``side // scale``.
    """
    out: dict[str, ShardLayout] = {}
    for kind, kind_side in (("hr", side), ("lr", max(1, side // scale))):
        group: h5py.Group | None = None
        for e in entries:
            key = f"{kind}/{e['id']}"
            group = group if group is not None else _group(f, path, kind, key)
            out[key] = check_dataset(group, path, key, e[f"{kind}_shape"], CHUNK_SLACK * kind_side)
    return out


def _chunk_starts(start: int, length: int, step: int) -> range:
    return range(start // step * step, start + length, step)


def read_region(ds: h5py.Dataset, layout: ShardLayout, path: Path, key: str, y: int, x: int, h: int,
                w: int) -> np.ndarray:
    """uint8 region ``[y:y+h, x:x+w, :]`` of a dataset checked by :func:`check_dataset`, in bounded memory."""
    out = np.empty((h, w, ds.shape[2]), dtype=np.uint8)
    if h == 0 or w == 0:
        return out
    ch, cw = layout.chunks[:2]
    if layout.codec is not None:
        for cy in _chunk_starts(y, h, ch):
            for cx in _chunk_starts(x, w, cw):
                info = ds.id.get_chunk_info_by_coord((cy, cx, 0))
                if info.size is not None and info.size > layout.max_stored:
                    raise _bad(path, key, f"has a {info.size}-byte stored chunk at ({cy}, {cx}) for "
                                          f"{layout.chunk_bytes} bytes of pixels (a decompression bomb?)")
    if layout.codec != "gzip":
        ds.read_direct(out, source_sel=np.s_[y:y + h, x:x + w, :])
        return out
    # gzip: inflate each chunk here with the output capped at the chunk's raw size.
    for cy in _chunk_starts(y, h, ch):
        for cx in _chunk_starts(x, w, cw):
            block = _inflate_chunk(ds, layout, path, key, cy, cx)
            y0, y1 = max(y, cy), min(y + h, cy + ch)
            x0, x1 = max(x, cx), min(x + w, cx + cw)
            out[y0 - y:y1 - y, x0 - x:x1 - x] = block[y0 - cy:y1 - cy, x0 - cx:x1 - cx]
    return out


def _inflate_chunk(ds: h5py.Dataset, layout: ShardLayout, path: Path, key: str, cy: int, cx: int) -> np.ndarray:
    info = ds.id.get_chunk_info_by_coord((cy, cx, 0))
    if info.byte_offset is None:  # never written: HDF5 would return the fill value
        return np.full(layout.chunks, ds.fillvalue, dtype=np.uint8)
    mask, raw = ds.id.read_direct_chunk((cy, cx, 0))
    if mask & 1:  # the deflate filter was skipped for this chunk: stored raw
        data = bytes(raw)
    else:
        d = zlib.decompressobj()
        try:
            data = d.decompress(raw, layout.chunk_bytes)
        except zlib.error as exc:
            raise DataError(f"{path}: dataset {key!r}: corrupt gzip chunk at ({cy}, {cx}) ({exc})") from exc
        if d.unconsumed_tail or not d.eof:
            raise _bad(path, key, f"has a gzip chunk at ({cy}, {cx}) that inflates beyond its "
                                  f"{layout.chunk_bytes} bytes of pixels (a decompression bomb?)")
    if len(data) != layout.chunk_bytes:
        raise DataError(f"{path}: dataset {key!r}: chunk at ({cy}, {cx}) holds {len(data)} bytes, expected "
                        f"{layout.chunk_bytes} (corrupt shard?)")
    return np.frombuffer(data, dtype=np.uint8).reshape(layout.chunks)
