"""Shards as data (security audit N4): a shard file holds only what `easlurm.data build` writes, or it is refused.

Each case builds real shards, doctors one dataset with h5py the way someone who can write the shard folder could
(rewriting the manifest's sha256 too: whoever builds the shards writes it), and checks that ShardReader and
verify_shards refuse it with one DataError naming the shard file and the dataset — before any pixel is read.
"""
from __future__ import annotations

import hashlib
import json
import resource
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from easlurm.data.dataset import ShardReader
from easlurm.data.shards import (
    build_shards, check_manifest, load_manifest, manifest_digest, verify_shards,
)
from easlurm.errors import DataError

SECRET = b"ssh-ed25519 AAAA-PRIVATE-KEY-MATERIAL "


def _build(tmp: Path, sizes: dict[str, tuple[int, int]], **kwargs: object) -> Path:
    rng = np.random.default_rng(0)
    (tmp / "hr").mkdir(parents=True, exist_ok=True)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp / "hr" / f"{name}.png")
    out = tmp / "shards"
    build_shards(tmp / "hr", out, 4, show_progress=False, **kwargs)  # type: ignore[arg-type]
    return out


def _doctor(out: Path, change: Callable[[h5py.File], None], entry: str = "e1",
            shapes: tuple[list[int], list[int]] | None = None) -> Path:
    """Apply ``change`` to the shard holding ``entry``; rewrite the manifest to match, as its builder could."""
    m = json.loads((out / "manifest.json").read_text())
    (e,) = [e for e in m["entries"] if e["id"] == entry]
    shard = out / e["shard"]
    with h5py.File(shard, "r+") as f:
        change(f)
    if shapes is not None:
        e["hr_shape"], e["lr_shape"] = shapes
    for sh in m["shards"]:
        if sh["name"] == e["shard"]:
            sh["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m))
    return shard


def _refused(out: Path, shard: Path, key: str, why: str) -> None:
    """The reader and the verification both refuse ``key`` of ``shard``, naming both; no pixel is returned."""
    pattern = rf"^{shard}: dataset '{key}' .*{why}"
    with pytest.raises(DataError, match=pattern):
        ShardReader(out).read("e1", "hr", 0, 0, 4, 4)
    with pytest.raises(DataError, match=pattern):
        verify_shards(out)


def _replace(f: h5py.File, key: str, make: Callable[[], None]) -> None:
    del f[key]
    make()


def _external_e1(out: Path, secret: Path) -> Path:
    """Entry e1's HR dataset of the shard under ``out`` redefined with external raw storage in ``secret`` (a file
    of SECRET bytes, as a private key would be); returns the doctored shard."""
    secret.write_bytes(SECRET * 40)

    def external(f: h5py.File) -> None:
        _replace(f, "hr/e1", lambda: f.create_dataset("hr/e1", shape=(16, 16, 3), dtype="u1",
                                                      external=[(str(secret), 0, 16 * 16 * 3)]))
    return _doctor(out, external)


def test_external_raw_storage_is_refused_and_its_file_never_read(tmp_path: Path) -> None:
    out = _build(tmp_path, {"e1": (16, 16)})
    shard = _external_e1(out, tmp_path / "id_ed25519")
    with h5py.File(shard, "r") as f:  # the audit's PoC: HDF5 itself returns the other file's bytes as pixels
        assert f["hr/e1"][...].tobytes().startswith(SECRET)
    _refused(out, shard, "hr/e1", r"uses external raw storage \(.*id_ed25519")


def test_virtual_datasets_and_soft_or_external_links_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["x"] = np.frombuffer(SECRET * 40, dtype=np.uint8)[:16 * 16 * 3].reshape(16, 16, 3)

    def virtual(f: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(16, 16, 3), dtype="u1")
        layout[:] = h5py.VirtualSource(str(other), "x", shape=(16, 16, 3))
        _replace(f, "hr/e1", lambda: f.create_virtual_dataset("hr/e1", layout))

    def soft(f: h5py.File) -> None:
        f.move("hr/e1", "hidden")
        f["hr/e1"] = h5py.SoftLink("/hidden")

    def external_link(f: h5py.File) -> None:
        _replace(f, "hr/e1", lambda: f.__setitem__("hr/e1", h5py.ExternalLink(str(other), "x")))

    def soft_group(f: h5py.File) -> None:
        f.move("hr", "pixels")
        f["hr"] = h5py.SoftLink("/pixels")

    cases = [(virtual, "is a virtual dataset"), (soft, r"is reached through a soft link \('e1' in '/hr'\)"),
             (external_link, r"is reached through an external link \('e1' in '/hr'\)"),
             (soft_group, r"is reached through a soft link \('hr' in '/'\)")]
    for i, (change, why) in enumerate(cases):
        out = _build(tmp_path / f"c{i}", {"e1": (16, 16)})
        _refused(out, _doctor(out, change), "hr/e1", why)


def _measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(peak RSS growth in MiB, seconds) of ``fn()`` (``ru_maxrss`` only grows: a lower bound on its memory)."""
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        fn()
    except DataError:
        pass
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) / 1024, time.perf_counter() - t0


def test_one_huge_gzip_chunk_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    # The audit's PoC: a ~109 KiB shard whose 6000x6000x3 HR image is one gzip chunk (+105 MiB per 32x32 read).
    out = _build(tmp_path, {"e1": (16, 16)})
    side = 6000
    comp = zlib.compressobj(9)
    zeros = bytes(side * 3 * 100)
    blob = b"".join(comp.compress(zeros) for _ in range(side // 100)) + comp.flush()

    def bomb(f: h5py.File) -> None:
        del f["hr/e1"], f["lr/e1"]
        ds = f.create_dataset("hr/e1", shape=(side, side, 3), dtype="u1", chunks=(side, side, 3),
                              compression="gzip")
        ds.id.write_direct_chunk((0, 0, 0), blob)
        f.create_dataset("lr/e1", shape=(side // 4, side // 4, 3), dtype="u1", chunks=(16, 16, 3))
    shard = _doctor(out, bomb, shapes=([side, side, 3], [side // 4, side // 4, 3]))
    assert shard.stat().st_size < 200_000
    grew, secs = _measure(lambda: ShardReader(out).read("e1", "hr", 0, 0, 32, 32))
    _refused(out, shard, "hr/e1", r"has chunks \(6000, 6000, 3\), larger than 128 px a side")
    assert grew < 20 and secs < 0.5, (grew, secs)


def test_a_gzip_chunk_of_the_right_shape_cannot_inflate_beyond_it(tmp_path: Path) -> None:
    # HDF5's deflate filter grows its buffer without limit: a 64x64x3 chunk of 393 KB inflated to 382 MiB.
    out = _build(tmp_path / "big", {"e1": (64, 64)}, compression="gzip")
    blob = zlib.compress(bytes(400_000_000), 9)
    shard = _doctor(out, lambda f: f["hr/e1"].id.write_direct_chunk((0, 0, 0), blob))
    grew, _ = _measure(lambda: ShardReader(out).read("e1", "hr", 0, 0, 32, 32))
    with pytest.raises(DataError, match=rf"^{shard}: dataset 'hr/e1' has a \d+-byte stored chunk at \(0, 0\) for "
                                        r"12288 bytes of pixels"):
        ShardReader(out).read("e1", "hr", 0, 0, 32, 32)
    assert grew < 20, grew
    # A bomb small enough to pass the stored-size bound is still cut off at the chunk's 12288 bytes.
    out = _build(tmp_path / "small", {"e1": (64, 64)}, compression="gzip")
    blob = zlib.compress(bytes(10_000_000), 9)
    assert len(blob) < 12288
    shard = _doctor(out, lambda f: f["hr/e1"].id.write_direct_chunk((0, 0, 0), blob))
    with pytest.raises(DataError, match=rf"^{shard}: dataset 'hr/e1' has a gzip chunk at \(0, 0\) that inflates "
                                        r"beyond its 12288 bytes"):
        ShardReader(out).read("e1", "hr", 40, 40, 8, 8)
    # lzf: a stored chunk larger than the pixels it holds is refused before HDF5 reads it.
    out = _build(tmp_path / "lzf", {"e1": (64, 64)}, compression="lzf")
    shard = _doctor(out, lambda f: f["hr/e1"].id.write_direct_chunk((0, 0, 0), bytes(100_000)))
    with pytest.raises(DataError, match=rf"^{shard}: dataset 'hr/e1' has a 100000-byte stored chunk"):
        ShardReader(out).read("e1", "hr", 0, 0, 4, 4)


def test_chunks_and_filters_beyond_what_build_writes_are_refused(tmp_path: Path) -> None:
    def rewrite(**kwargs: object) -> Callable[[h5py.File], None]:
        def change(f: h5py.File) -> None:
            data = f["hr/e1"][...]
            _replace(f, "hr/e1", lambda: f.create_dataset("hr/e1", data=data, **kwargs))  # type: ignore[arg-type]
        return change

    cases = [
        (dict(chunks=(129, 8, 3)), r"has chunks \(129, 8, 3\), larger than 128 px a side"),
        (dict(chunks=(8, 8, 1)), r"has chunks \(8, 8, 1\)"),
        (dict(chunks=(8, 8, 3), compression="gzip", shuffle=True), r"uses the filter\(s\) shuffle \(2\), deflate"),
        (dict(chunks=(8, 8, 3), fletcher32=True), r"uses the filter\(s\) fletcher32 \(3\)"),
        (dict(chunks=None), r"is not chunked"),
        (dict(chunks=(8, 8, 3), maxshape=(None, 200, 3)), r"is resizable"),
    ]
    for i, (kwargs, why) in enumerate(cases):
        out = _build(tmp_path / f"c{i}", {"e1": (200, 200)})
        _refused(out, _doctor(out, rewrite(**kwargs)), "hr/e1", why)
    # Twice the recorded chunk side is still accepted (slack for a shard built by an older or tuned build).
    out = _build(tmp_path / "ok", {"e1": (200, 200)})
    _doctor(out, rewrite(chunks=(128, 128, 3), compression="lzf"))
    assert ShardReader(out).read("e1", "hr", 120, 120, 16, 16).shape == (16, 16, 3)
    verify_shards(out)
    m = json.loads((out / "manifest.json").read_text())
    m["build"]["chunk"] = 10**6
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"manifest\.json: build\.chunk 1000000 is not an integer from 1 to 256"):
        load_manifest(out)


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_shards_read_exactly_like_uncompressed_ones(tmp_path: Path, compression: str) -> None:
    sizes = {"a": (200, 136), "b": (68, 260)}  # edge chunks that the image only partly fills
    plain = ShardReader(_build(tmp_path / "plain", sizes, chunk=32))
    packed = ShardReader(_build(tmp_path / "packed", sizes, chunk=32, compression=compression))
    rng = np.random.default_rng(1)
    for eid, (h, w) in sizes.items():
        for kind, s in (("hr", 1), ("lr", 4)):
            np.testing.assert_array_equal(packed.read_full(eid, kind), plain.read_full(eid, kind))
            for _ in range(20):
                rh, rw = int(rng.integers(0, h // s + 1)), int(rng.integers(0, w // s + 1))
                y, x = int(rng.integers(0, h // s - rh + 1)), int(rng.integers(0, w // s - rw + 1))
                np.testing.assert_array_equal(packed.read(eid, kind, y, x, rh, rw), plain.read(eid, kind, y, x, rh, rw))
    verify_shards(tmp_path / "packed" / "shards")


def test_manifest_digest_pins_the_shard_folder(tmp_path: Path) -> None:
    out = _build(tmp_path, {"e1": (16, 16), "e2": (16, 20)})
    digest = manifest_digest(out)
    assert digest == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    check_manifest(out, digest)
    assert ShardReader(out, manifest_sha256=digest).ids == ["e1", "e2"]
    assert verify_shards(out, sha256=digest)["counts"]["entries"] == 2
    m = json.loads((out / "manifest.json").read_text())
    m["entries"] = m["entries"][:1]
    m["shards"][0]["count"] = 1
    (out / "manifest.json").write_text(json.dumps(m))  # still a valid manifest: only the digest tells
    load_manifest(out)
    message = rf"^{out / 'manifest.json'}: shard manifest changed since it was recorded .* the shard folder {out} "
    for check in (lambda: check_manifest(out, digest), lambda: ShardReader(out, manifest_sha256=digest),
                  lambda: verify_shards(out, sha256=digest), lambda: load_manifest(out, sha256=digest)):
        with pytest.raises(DataError, match=message):
            check()
    with pytest.raises(DataError, match=rf"^{tmp_path / 'nope' / 'manifest.json'}: shard manifest not found"):
        manifest_digest(tmp_path / "nope")


def test_a_shard_changed_after_its_check_is_checked_again_when_reopened(tmp_path: Path) -> None:
    out = _build(tmp_path, {"e1": (16, 16), "e2": (16, 16)}, shard_size=1)
    reader = ShardReader(out)
    reader.max_open = 1
    first = reader.read("e1", "hr", 0, 0, 4, 4)
    reader.read("e2", "hr", 0, 0, 4, 4)  # closes e1's shard (least recently used)
    np.testing.assert_array_equal(reader.read("e1", "hr", 0, 0, 4, 4), first)  # reopened unchanged: same layouts
    reader.read("e2", "hr", 0, 0, 4, 4)
    shard = _external_e1(out, tmp_path / "secret")
    with pytest.raises(DataError, match=rf"^{shard}: dataset 'hr/e1' uses external raw storage"):
        reader.read("e1", "hr", 0, 0, 4, 4)
