"""Command line for building shard folders.

    python -m easlurm.data build --hr DIR [--lr DIR] --scale 4 --out DIR [--shard-size N]
                                 [--sub-image N --sub-step N] [--min-size N] [--max-pixels N]
    python -m easlurm.data samples --out DIR [--scale 4] [--max-pixels N]
    python -m easlurm.data verify DIR

Bad input (an unreadable image, a size mismatch, ...) prints one line naming the file on stderr and exits 2.
``build`` reports progress (images done, rate, ETA) on stderr: a bar on a terminal; in a log file or pipe at most one
line per 10 % of the images and 30 s (:mod:`easlurm.progress`).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import EaslurmError
from .images import shown


def _summary(out: Path, m: dict[str, Any]) -> str:
    c = m["counts"]
    return (f"{shown(out)}: {c['entries']} entries from {c['images']} images in {c['shards']} shard(s), "
            f"{c['bytes'] / 1e6:.1f} MB, scale x{m['scale']}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m easlurm.data", description="Build and check HDF5 image shards.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build shards from an HR folder (LR: bicubic, or --lr folder)")
    b.add_argument("--hr", required=True, type=Path, help="folder of HR images")
    b.add_argument("--lr", type=Path, default=None, help="folder of LR images paired by file stem (default: bicubic)")
    b.add_argument("--scale", required=True, type=int, help="integer SR factor, e.g. 4")
    b.add_argument("--out", required=True, type=Path, help="output shard folder (replaced atomically)")
    b.add_argument("--shard-size", type=int, default=64, help="entries per shard file (default 64)")
    b.add_argument("--sub-image", type=int, default=None,
                   help="cut HR images into crops of this many px (not recommended: 3.6x the disk for no faster "
                   "reads, see bench/results/shard_layout.md)")
    b.add_argument("--sub-step", type=int, default=None, help="step between crops in px (default: --sub-image)")
    b.add_argument("--min-size", type=int, default=0, help="refuse HR images whose smaller side is below this")
    b.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images of more pixels than this, before decoding them (default: Pillow's limit, "
                   "about 89.5 million)")
    s = sub.add_parser("samples", help="build train/val shards from the photos shipped in installed wheels")
    s.add_argument("--out", required=True, type=Path, help="folder that receives train/ and val/")
    s.add_argument("--scale", type=int, default=4, help="integer SR factor (default 4)")
    s.add_argument("--max-pixels", type=int, default=None, help="as for build")
    v = sub.add_parser("verify", help="check a shard folder's manifest and checksums")
    v.add_argument("dir", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            from .shards import build_shards

            m = build_shards(args.hr, args.out, args.scale, lr_dir=args.lr, shard_size=args.shard_size,
                             sub_image=args.sub_image, sub_step=args.sub_step, min_size=args.min_size,
                             max_pixels=args.max_pixels)
            print(_summary(args.out, m))
        elif args.command == "samples":
            from .samples import build_samples
            from .shards import load_manifest

            for path in build_samples(args.out, scale=args.scale, max_pixels=args.max_pixels).values():
                print(_summary(path, load_manifest(path)))
        else:
            from .shards import verify_shards

            print(_summary(args.dir, verify_shards(args.dir)) + ", checksums ok")
    except EaslurmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. no permission on --out: still one line, naming the path
        print(f"error: {shown(str(exc.filename or ''))}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
