"""HDF5 shards of (HR, LR) image pairs: build once from image folders, read crops cheaply for training.

Layout of a shard folder::

    out_dir/shard-00000.h5   datasets hr/<id> and lr/<id>: uint8 HWC RGB, chunked, uncompressed by default
    out_dir/shard-00001.h5   ...
    out_dir/manifest.json    {"format": 1, "scale", "entries", "shards", "counts", "build"}

``entries`` (sorted by id) hold ``id, shard, hr_shape [H, W, 3], lr_shape [H/s, W/s, 3], source, source_sha256,
crop [y, x]`` (HR pixel offset of the entry in the mod-cropped source image) and, for LR read from a folder,
``lr_source, lr_source_sha256``. ``shards`` hold ``name, count, sha256``. Entries go into shards in the order
they are built (sources sorted by stem, then their sub-images row-major), ``shard_size`` per shard.

HR images are mod-cropped (bottom/right) to a multiple of ``scale``; LR is :func:`bicubic_downscale` of the whole
mod-cropped HR image (sub-images crop HR and LR at aligned positions), or read from ``lr_dir`` and paired by stem.

Building is atomic: everything is written into a hidden temp folder next to ``out_dir`` and moved into place at
the end. A failed build leaves ``out_dir`` as it was (absent, or the previous complete build). One process should
build a given ``out_dir`` at a time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import CheckpointError, DataError
from ..progress import progress
from ..store import atomic_write_json, fsync_dir, read_checked, sha256_file, umask_mode
from .bicubic import bicubic_downscale
from .images import check_max_pixels, list_images, read_rgb, shown
from .shard_files import DEFAULT_CHUNK, MAX_CHUNK, check_shard, chunk_side

__all__ = ["FORMAT", "MANIFEST_NAME", "DEFAULT_CHUNK", "build_shards", "load_manifest", "verify_shards",
           "manifest_digest", "check_manifest"]

FORMAT = 1
MANIFEST_NAME = "manifest.json"
_SHARD_RE = re.compile(r"^shard-\d{5}\.h5$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _crop_starts(length: int, size: int, step: int) -> list[int]:
    # Regular grid, plus one crop flush with the far border when the grid leaves pixels uncovered.
    starts = list(range(0, length - size + 1, step))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise DataError(f"{name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def _pair_lr(hr_files: list[Path], lr_dir: Path, scale: int) -> dict[str, Path]:
    """Map HR stem -> LR file. LR names may be the HR stem or ``<stem>x<scale>`` (the DIV2K convention)."""
    lr_files = list_images(lr_dir)
    by_stem: dict[str, Path] = {}
    for f in lr_files:
        if f.stem in by_stem:
            raise DataError(f"{shown(f)}: two LR files share the stem {f.stem!r} (other: {shown(by_stem[f.stem])})")
        by_stem[f.stem] = f
    pairs: dict[str, Path] = {}
    used: set[str] = set()
    for hr in hr_files:
        names = [n for n in (hr.stem, f"{hr.stem}x{scale}") if n in by_stem]
        if not names:
            raise DataError(f"{shown(hr)}: no LR partner in {shown(lr_dir)} (looked for {hr.stem!r} or "
                            f"{hr.stem + f'x{scale}'!r})")
        if len(names) > 1:
            raise DataError(f"{shown(hr)}: ambiguous LR partner in {shown(lr_dir)}: "
                            f"{shown(by_stem[names[0]].name)} and {shown(by_stem[names[1]].name)}")
        pairs[hr.stem] = by_stem[names[0]]
        used.add(names[0])
    unpaired = sorted(set(by_stem) - used)
    if unpaired:
        raise DataError(f"{shown(by_stem[unpaired[0]])}: LR image has no HR partner in the HR folder "
                        f"({len(unpaired)} unpaired LR file(s))")
    return pairs


class _ShardWriter:
    """Writes entries into consecutive shard files of at most ``shard_size`` entries each."""

    def __init__(self, folder: Path, shard_size: int, chunk: int, scale: int, compression: str | None) -> None:
        self.folder = folder
        self.shard_size = shard_size
        self.chunk = chunk
        self.scale = scale
        self.compression = compression
        self.names: list[str] = []
        self.counts: list[int] = []
        self._file: h5py.File | None = None

    def _open_next(self) -> None:
        self.close()
        name = f"shard-{len(self.names):05d}.h5"
        self._file = h5py.File(self.folder / name, "w", track_order=False)
        self._file.attrs["format"] = FORMAT
        self._file.attrs["scale"] = self.scale
        self.names.append(name)
        self.counts.append(0)

    def _write(self, key: str, arr: np.ndarray, side: int) -> None:
        assert self._file is not None
        chunks = (min(side, arr.shape[0]), min(side, arr.shape[1]), arr.shape[2])
        self._file.create_dataset(key, data=arr, chunks=chunks, compression=self.compression, track_times=False)

    def add(self, entry_id: str, hr: np.ndarray, lr: np.ndarray) -> str:
        if self._file is None or self.counts[-1] >= self.shard_size:
            self._open_next()
        self._write(f"hr/{entry_id}", hr, self.chunk)
        # Same chunk grid in LR pixels as in HR, so an aligned crop touches the same number of chunks in both.
        self._write(f"lr/{entry_id}", lr, max(1, self.chunk // self.scale))
        self.counts[-1] += 1
        return self.names[-1]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _check_out_dir(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{shown(out)}: output path exists and is not a folder")
    content = sorted(out.iterdir())
    if content and not (out / MANIFEST_NAME).is_file():
        raise DataError(f"{shown(out)}: output folder is not empty and holds no {MANIFEST_NAME}; refusing to "
                        "replace it")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the finished folder ``tmp`` (renames only; the old build is kept until the swap)."""
    if out.exists() and sorted(out.iterdir()):
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)  # rename(2) replaces a missing or empty folder
    fsync_dir(out.parent)


def build_shards(hr_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], scale: int,
                 lr_dir: str | os.PathLike[str] | None = None, shard_size: int = 64,
                 sub_image: int | None = None, sub_step: int | None = None, min_size: int = 0,
                 *, chunk: int = DEFAULT_CHUNK, compression: str | None = None,
                 show_progress: bool = True, max_pixels: int | None = None) -> dict[str, Any]:
    """Build a shard folder from the images in ``hr_dir`` (and their LR partners in ``lr_dir``); return the manifest.

    ``scale``: integer SR factor. ``shard_size``: entries per shard file. ``sub_image``/``sub_step``: cut every HR
    image into overlapping ``sub_image``-px crops every ``sub_step`` px (default step = ``sub_image``; both must
    be multiples of ``scale``; the last row/column of crops is flush with the border); entry ids become
    ``<stem>_s001``, ``<stem>_s002`` … row-major. ``min_size``: an HR image whose smaller side is below it is an
    error. ``chunk``: HDF5 chunk side in HR px, at most 256 (LR uses ``chunk // scale``); ``compression``: None,
    ``"lzf"`` or ``"gzip"``. ``max_pixels``: the largest image (HR or LR) read, in pixels (default: Pillow's limit,
    :data:`easlurm.data.images.DEFAULT_MAX_PIXELS`); a larger one is refused before it is decoded.
    ``show_progress``: report images done, rate and ETA on stderr (:mod:`easlurm.progress`: a bar on a terminal,
    else at most one line per 10 % and 30 s).

    Raises :class:`DataError` naming the culprit file for unreadable images, missing/ambiguous/mis-sized LR
    partners, duplicate ids, images below ``min_size`` or ``sub_image`` or above ``max_pixels``; nothing new is
    left in ``out_dir`` then. A file name that is not valid UTF-8 is kept in ids, the manifest and messages with
    its odd bytes written as ``\\xNN`` (:func:`easlurm.data.images.shown`).
    """
    s = _check_positive_int("scale", scale)
    shard_size = _check_positive_int("shard_size", shard_size)
    min_size = _check_positive_int("min_size", min_size, minimum=0)
    chunk = _check_positive_int("chunk", chunk)
    if chunk > MAX_CHUNK:
        raise DataError(f"chunk must be at most {MAX_CHUNK} px (got {chunk}); shard readers refuse larger chunks")
    max_pixels = check_max_pixels(max_pixels)
    if compression not in (None, "lzf", "gzip"):
        raise DataError(f"compression must be None, 'lzf' or 'gzip' (got {compression!r})")
    if sub_image is None:
        if sub_step is not None:
            raise DataError("sub_step given without sub_image")
    else:
        sub_image = _check_positive_int("sub_image", sub_image)
        sub_step = sub_image if sub_step is None else _check_positive_int("sub_step", sub_step)
        if sub_image % s or sub_step % s:
            raise DataError(f"sub_image ({sub_image}) and sub_step ({sub_step}) must be multiples of scale {s} "
                            "so that LR crops stay aligned")

    hr_files = list_images(hr_dir)
    stems: dict[str, Path] = {}
    for f in hr_files:
        if f.stem in stems:
            raise DataError(f"{shown(f)}: two HR files share the stem {f.stem!r} (other: {shown(stems[f.stem])})")
        stems[f.stem] = f
    lr_pairs = _pair_lr(hr_files, Path(lr_dir), s) if lr_dir is not None else None

    out = Path(out_dir).absolute()
    _check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        os.chmod(tmp, umask_mode(0o777))
        manifest = _build_into(tmp, sorted(stems.items()), lr_pairs, s, shard_size, sub_image, sub_step,
                               min_size, chunk, compression, f"shards {shown(out.name)}" if show_progress else None,
                               max_pixels)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _build_into(tmp: Path, sources: list[tuple[str, Path]], lr_pairs: dict[str, Path] | None, s: int,
                shard_size: int, sub_image: int | None, sub_step: int | None, min_size: int, chunk: int,
                compression: str | None, progress_desc: str | None, max_pixels: int) -> dict[str, Any]:
    writer = _ShardWriter(tmp, shard_size, chunk, s, compression)
    entries: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    hr_pixels = 0
    try:
        for stem, hr_path in progress(sources, desc=progress_desc or "", unit="images",
                                      enabled=progress_desc is not None):
            hr = read_rgb(hr_path, max_pixels)
            h0, w0 = hr.shape[:2]
            if min(h0, w0) < min_size:
                raise DataError(f"{shown(hr_path)}: image is {w0}x{h0} px, smaller than min_size {min_size}")
            h, w = h0 - h0 % s, w0 - w0 % s
            if h == 0 or w == 0:
                raise DataError(f"{shown(hr_path)}: image is {w0}x{h0} px, smaller than scale {s}")
            hr = np.ascontiguousarray(hr[:h, :w])
            base: dict[str, Any] = {"source": shown(hr_path.name), "source_sha256": sha256_file(hr_path)}
            if lr_pairs is None:
                lr = bicubic_downscale(hr, s)
            else:
                lr_path = lr_pairs[stem]
                lr = read_rgb(lr_path, max_pixels)
                if lr.shape[:2] != (h // s, w // s):
                    raise DataError(f"{shown(lr_path)}: LR size {lr.shape[1]}x{lr.shape[0]} does not match HR "
                                    f"{shown(hr_path.name)} ({w}x{h} after mod-crop) / scale {s} = {w // s}x{h // s}")
                base.update(lr_source=shown(lr_path.name), lr_source_sha256=sha256_file(lr_path))
            eid = shown(stem)  # unchanged for UTF-8 names; HDF5 names and the manifest must be valid UTF-8
            if sub_image is None:
                crops = [(eid, 0, 0, h, w)]
            else:
                assert sub_step is not None
                if min(h, w) < sub_image:
                    raise DataError(f"{shown(hr_path)}: image is {w}x{h} px (after mod-crop), smaller than "
                                    f"sub_image {sub_image}")
                ys, xs = _crop_starts(h, sub_image, sub_step), _crop_starts(w, sub_image, sub_step)
                width = max(3, len(str(len(ys) * len(xs))))
                crops = [(f"{eid}_s{k + 1:0{width}d}", y, x, sub_image, sub_image)
                         for k, (y, x) in enumerate((y, x) for y in ys for x in xs)]
            for entry_id, y, x, ch, cw in crops:
                if entry_id in seen:
                    raise DataError(f"{shown(hr_path)}: entry id {entry_id!r} collides with one from "
                                    f"{shown(seen[entry_id])}")
                seen[entry_id] = hr_path
                hr_crop = np.ascontiguousarray(hr[y:y + ch, x:x + cw])
                lr_crop = np.ascontiguousarray(lr[y // s:(y + ch) // s, x // s:(x + cw) // s])
                shard = writer.add(entry_id, hr_crop, lr_crop)
                hr_pixels += ch * cw
                entries.append({"id": entry_id, "shard": shard, "hr_shape": list(hr_crop.shape),
                                "lr_shape": list(lr_crop.shape), "crop": [y, x], **base})
    finally:
        writer.close()
    shards = []
    total_bytes = 0
    for name, count in progress(list(zip(writer.names, writer.counts, strict=True)),
                                desc=f"{progress_desc} sha256" if progress_desc else "", unit="shards",
                                enabled=progress_desc is not None):
        path = tmp / name
        _fsync_file(path)
        total_bytes += path.stat().st_size
        shards.append({"name": name, "count": count, "sha256": sha256_file(path)})
    entries.sort(key=lambda e: e["id"])
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "scale": s,
        "entries": entries,
        "shards": shards,
        "counts": {"images": len(sources), "entries": len(entries), "shards": len(shards),
                   "bytes": total_bytes, "hr_pixels": hr_pixels},
        "build": {"lr": "bicubic" if lr_pairs is None else "folder", "sub_image": sub_image,
                  "sub_step": sub_step, "min_size": min_size, "shard_size": shard_size, "chunk": chunk,
                  "compression": compression},
    }
    atomic_write_json(tmp / MANIFEST_NAME, manifest)
    os.chmod(tmp / MANIFEST_NAME, umask_mode(0o666))
    return manifest


def _is_shape(v: object, channels: int = 3) -> bool:
    return (isinstance(v, list) and len(v) == 3 and all(isinstance(n, int) and not isinstance(n, bool) for n in v)
            and v[0] > 0 and v[1] > 0 and v[2] == channels)


#: A manifest lists one line per entry: a few MiB for a million images. Anything larger is not one of ours.
MAX_MANIFEST_BYTES = 256 << 20


def _manifest_bytes(path: Path) -> bytes:
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{path}: shard manifest not found (build shards with `python -m easlurm.data build`)")
    try:
        # A regular file only (opened non-blocking: a FIFO cannot stall the reader), of a sane size.
        return read_checked(path, limit=MAX_MANIFEST_BYTES, what="shard manifest")
    except CheckpointError as exc:
        raise DataError(str(exc)) from exc


def manifest_digest(shard_dir: str | os.PathLike[str]) -> str:
    """The hex sha256 of ``shard_dir/manifest.json``'s bytes (which list every shard file's sha256): what a launch
    records so that its stages can tell that the shard folder is still the one it checked. Torch-free."""
    return hashlib.sha256(_manifest_bytes(Path(shard_dir) / MANIFEST_NAME)).hexdigest()


def _check_digest(path: Path, data: bytes, expected: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise DataError(f"{path}: shard manifest changed since it was recorded (sha256 {digest[:12]}…, expected "
                        f"{str(expected)[:12]}…): the shard folder {path.parent} was rebuilt or replaced")


def check_manifest(shard_dir: str | os.PathLike[str], expected_sha256: str) -> None:
    """Raise :class:`DataError` naming the folder when ``shard_dir/manifest.json`` is missing or its sha256 is not
    ``expected_sha256`` (see :func:`manifest_digest`). Torch-free."""
    path = Path(shard_dir) / MANIFEST_NAME
    _check_digest(path, _manifest_bytes(path), expected_sha256)


def load_manifest(shard_dir: str | os.PathLike[str], sha256: str | None = None) -> dict[str, Any]:
    """Read and validate ``shard_dir/manifest.json``; raise :class:`DataError` naming the file when it is
    missing, not JSON, or inconsistent (fields, sorted unique ids, shapes vs scale, shard counts, shard files,
    ``build.chunk``). With ``sha256``, the bytes read must have that digest (:func:`check_manifest`)."""
    d = Path(shard_dir)
    path = d / MANIFEST_NAME
    data = _manifest_bytes(path)
    if sha256 is not None:
        _check_digest(path, data, sha256)
    try:
        m = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: corrupt shard manifest ({exc})") from exc

    def bad(msg: str) -> DataError:
        return DataError(f"{path}: invalid shard manifest: {msg}")

    if not isinstance(m, dict):
        raise bad("top level is not an object")
    for key in ("format", "scale", "entries", "shards", "counts"):
        if key not in m:
            raise bad(f"missing key {key!r}")
    if m["format"] != FORMAT:
        raise bad(f"format {m['format']!r} is not supported (expected {FORMAT})")
    scale = m["scale"]
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise bad(f"scale {scale!r} is not an integer >= 1")
    if not isinstance(m["shards"], list) or not isinstance(m["entries"], list) or not isinstance(m["counts"], dict):
        raise bad("entries/shards must be lists and counts an object")
    shard_counts: dict[str, int] = {}
    for i, sh in enumerate(m["shards"]):
        if not isinstance(sh, dict) or not {"name", "count", "sha256"} <= set(sh):
            raise bad(f"shards[{i}] lacks name/count/sha256")
        name = sh["name"]
        if not isinstance(name, str) or not _SHARD_RE.match(name) or name in shard_counts:
            raise bad(f"shards[{i}].name {name!r} is not a unique shard-NNNNN.h5 name")
        if not isinstance(sh["sha256"], str) or not _SHA_RE.match(sh["sha256"]):
            raise bad(f"shards[{i}].sha256 is not a hex sha256")
        if not isinstance(sh["count"], int) or sh["count"] < 0:
            raise bad(f"shards[{i}].count {sh['count']!r} is not a count")
        shard_counts[name] = 0
        if not (d / name).is_file():
            raise DataError(f"{d / name}: shard file listed in {path} is missing")
    prev: str | None = None
    for i, e in enumerate(m["entries"]):
        if not isinstance(e, dict):
            raise bad(f"entries[{i}] is not an object")
        for key in ("id", "shard", "hr_shape", "lr_shape", "source", "source_sha256"):
            if key not in e:
                raise bad(f"entries[{i}] lacks {key!r}")
        eid = e["id"]
        if not isinstance(eid, str) or not eid or "/" in eid:
            raise bad(f"entries[{i}].id {eid!r} is not a valid id")
        if prev is not None and eid <= prev:
            raise bad(f"entry ids are not sorted and unique at {eid!r}")
        prev = eid
        if e["shard"] not in shard_counts:
            raise bad(f"entry {eid!r} names unknown shard {e['shard']!r}")
        shard_counts[e["shard"]] += 1
        hr, lr = e["hr_shape"], e["lr_shape"]
        if not (_is_shape(hr) and _is_shape(lr) and hr[0] == lr[0] * scale and hr[1] == lr[1] * scale):
            raise bad(f"entry {eid!r} has hr_shape {hr} / lr_shape {lr} inconsistent with scale {scale}")
    for sh in m["shards"]:
        if shard_counts[sh["name"]] != sh["count"]:
            raise bad(f"shard {sh['name']} lists count {sh['count']} but {shard_counts[sh['name']]} entries use it")
    if not m["entries"]:
        raise bad("no entries")
    chunk_side(m, path)
    return m


def verify_shards(shard_dir: str | os.PathLike[str], sha256: str | None = None) -> dict[str, Any]:
    """Validate the manifest, check every shard file's sha256 and that its datasets are plain data; return the
    manifest. ``sha256``: the digest the manifest's bytes must have (:func:`manifest_digest`).

    Raises :class:`DataError` naming the first shard whose checksum does not match (corrupt or replaced), or the
    shard and dataset that holds anything ``build`` never writes (:func:`easlurm.data.shard_files.check_shard`).
    """
    m = load_manifest(shard_dir, sha256=sha256)
    side = chunk_side(m, Path(shard_dir) / MANIFEST_NAME)
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for e in m["entries"]:
        by_shard.setdefault(e["shard"], []).append(e)
    for sh in m["shards"]:
        path = Path(shard_dir) / sh["name"]
        if sha256_file(path) != sh["sha256"]:
            raise DataError(f"{path}: sha256 mismatch with {Path(shard_dir) / MANIFEST_NAME} "
                            "(file is corrupt or was replaced; rebuild the shards)")
        try:
            f = h5py.File(path, "r", locking=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot open shard ({exc})") from exc
        with f:
            check_shard(f, path, by_shard.get(sh["name"], []), side, m["scale"])
    return m
