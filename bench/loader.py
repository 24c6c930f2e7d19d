"""Loader benchmark: training patches from HDF5 shards vs decoding PNG files, same crops, same workers.

Both sides draw exactly the same samples (``RandomPatchDataset.plan(index)``: entry, aligned crop, flips) through
the same ``infinite_loader`` with the same ``num_workers`` and batch size; the PNG side decodes the full HR and LR
PNG of the entry for every sample (what a folder-of-images loader does), the shard side reads only the crop.
The first batches of both are checked to be identical. Steady-state throughput is timed after the first batch
(which includes worker start-up).

    python bench/loader.py                 # sample photos (built into a temp folder), 2 workers, 1024 samples
    python bench/loader.py --quick         # smoke run
    python bench/loader.py --layouts       # also compare HDF5 chunk sizes / lzf, single process
    python bench/loader.py --shards DIR    # any shard folder instead of the sample photos
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from _common import (
    command_line, data_machine, demo_train_shards, drain_loader, load_average, publish, report_head,
)

from easlurm.data.dataset import RandomPatchDataset, ShardReader, augment, infinite_loader, to_tensor
from easlurm.data.images import read_rgb
from easlurm.data.shards import build_shards


class PngPatchDataset(RandomPatchDataset):
    """The same samples as :class:`RandomPatchDataset`, but each one decodes the entry's full HR and LR PNGs."""

    def __init__(self, png_dir: Path, shard_dir: Path, patch_size: int, scale: int, num_samples: int,
                 seed: int = 0) -> None:
        super().__init__(shard_dir, patch_size, scale, num_samples, seed=seed)
        self.png_dir = png_dir

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.plan(index)
        s, lp = self.scale, self.patch_size // self.scale
        lr_full = read_rgb(self.png_dir / "lr" / f"{p.entry_id}.png")
        hr_full = read_rgb(self.png_dir / "hr" / f"{p.entry_id}.png")
        lr = lr_full[p.ly:p.ly + lp, p.lx:p.lx + lp]
        hr = hr_full[p.ly * s:p.ly * s + self.patch_size, p.lx * s:p.lx * s + self.patch_size]
        return to_tensor(augment(lr, p)), to_tensor(augment(hr, p))


def export_pngs(shard_dir: Path, png_dir: Path) -> int:
    """Write every entry's HR and LR as PNG (Pillow's default compression); return the total bytes."""
    reader = ShardReader(shard_dir)
    total = 0
    for kind in ("hr", "lr"):
        (png_dir / kind).mkdir(parents=True, exist_ok=True)
        for eid in reader.ids:
            path = png_dir / kind / f"{eid}.png"
            Image.fromarray(reader.read_full(eid, kind)).save(path)
            total += path.stat().st_size
    reader.close()
    return total


def throughput(ds: RandomPatchDataset, samples: int, batch: int, workers: int) -> tuple[float, int, float]:
    """(steady-state samples/s, samples timed, seconds) over indices 0..samples-1; the first batch is not timed."""
    n, secs = drain_loader(infinite_loader(ds, batch, 0, workers, stop_index=samples))
    return n / secs, n, secs


def check_same(a: RandomPatchDataset, b: RandomPatchDataset, k: int) -> None:
    for i in range(k):
        (la, ha), (lb, hb) = a[i], b[i]
        if not (torch.equal(la, lb) and torch.equal(ha, hb)):
            raise SystemExit(f"sample {i}: shard and PNG datasets disagree — the comparison would be unfair")


def layouts(src_png: Path, work: Path, scale: int, patch: int, samples: int) -> list[dict[str, Any]]:
    rows = []
    for chunk, comp in ((32, None), (64, None), (128, None), (64, "lzf")):
        out = work / f"layout-{chunk}-{comp}"
        m = build_shards(src_png / "hr", out, scale, lr_dir=src_png / "lr", chunk=chunk, compression=comp)
        ds = RandomPatchDataset(out, patch, scale, samples)
        rate, n, secs = throughput(ds, samples, 16, 0)
        rows.append({"chunk": chunk, "compression": comp or "none", "bytes": m["counts"]["bytes"], "rate": rate})
        shutil.rmtree(out)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=Path, default=None, help="shard folder (default: sample photos, built now)")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=128, help="HR patch side in px")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--layouts", action="store_true", help="also compare chunk sizes / lzf (single process)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 96 samples")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = ap.parse_args(argv)
    samples = 96 if args.quick else args.samples
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="easlurm-loader-bench-") as tmp:
        work = Path(tmp)
        shard_dir = args.shards or demo_train_shards(work / "samples", args.scale)
        png_dir = work / "png"
        png_bytes = export_pngs(shard_dir, png_dir)
        shard_ds = RandomPatchDataset(shard_dir, args.patch, args.scale, samples)
        png_ds = PngPatchDataset(png_dir, shard_dir, args.patch, args.scale, samples)
        check_same(shard_ds, png_ds, 8)
        shard_bytes = sum(p.stat().st_size for p in sorted(Path(shard_dir).glob("shard-*.h5")))

        png_rate, png_n, png_s = throughput(png_ds, samples, args.batch_size, args.workers)
        shard_rate, shard_n, shard_s = throughput(shard_ds, samples, args.batch_size, args.workers)
        layout_rows = layouts(png_dir, work, args.scale, args.patch, samples) if args.layouts else []

    ratio = shard_rate / png_rate
    lines = [
        *report_head("## Loader: HDF5 shards vs PNG folder", command_line("loader.py", argv), data_machine()),
        f"- load average before / after (other processes share the cores): {load_before} / {load_average()}",
        f"- data: {len(shard_ds.ids)} images ({args.shards or 'built-in sample photos, train split'}),"
        f" shards {shard_bytes / 1e6:.1f} MB, PNGs {png_bytes / 1e6:.1f} MB;"
        f" {args.patch}px HR / {args.patch // args.scale}px LR patches, batch {args.batch_size},"
        f" num_workers {args.workers}, same {samples} sample indices on both sides (first batch untimed)",
        "",
        "| loader | samples timed | seconds | samples/s |",
        "|---|---:|---:|---:|",
        f"| PNG folder (full decode per sample) | {png_n} | {png_s:.2f} | {png_rate:.1f} |",
        f"| HDF5 shards (crop read) | {shard_n} | {shard_s:.2f} | {shard_rate:.1f} |",
        "",
        f"**shards / PNG = {ratio:.1f}x**",
    ]
    if layout_rows:
        lines += ["", "Shard layouts (num_workers 0, same samples):", "",
                  "| HR chunk | compression | shard MB | samples/s |", "|---:|---|---:|---:|"]
        lines += [f"| {r['chunk']} | {r['compression']} | {r['bytes'] / 1e6:.1f} | {r['rate']:.1f} |"
                  for r in layout_rows]
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
