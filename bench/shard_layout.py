"""Shard layout: whole-image shards vs ``--sub-image 480 --sub-step 240`` shards of the same 2K images.

The same HR images are built both ways (bicubic ×4 LR) and compared on build time, disk bytes and random-patch
throughput through the real training path (``RandomPatchDataset`` + ``infinite_loader``: 128 px HR patches,
batch 16) with 0 and 2 workers; optionally the HDF5 chunk side of the whole-image layout. Throughput runs are
interleaved (whole, sub, whole, sub, …) and the median of the repetitions is reported, so both layouts see the
same machine load; the ratios are computed within this one run.

Images: DIV2K/Flickr2K cannot be downloaded here, so each benchmark image is a 2040×1356 px (Flickr2K's common
size) mosaic of 4×4 cells of 510×339 px, each cell a crop of one of the photos shipped in the installed wheels
(easlurm.data.samples; random photo, position and flips from a fixed seed) at their native resolution. Shards are
uncompressed by default, so their bytes and the bytes a patch read touches depend only on the pixel count, not on
the content; the content only matters for the ``lzf`` row of ``--chunks``.

    python bench/shard_layout.py --out bench/results/shard_layout.md          # 16 images, 4096 samples, 3 reps
    python bench/shard_layout.py --quick                                       # smoke run
    python bench/shard_layout.py --chunks 32,64,128,256 --out ...              # also HDF5 chunk sides (whole)
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from _common import command_line, data_machine, drain_loader, load_average, publish, report_head

from easlurm.data.dataset import RandomPatchDataset, infinite_loader
from easlurm.data.samples import sample_image
from easlurm.data.shards import build_shards

# Photos at least one cell large (chelsea, 451x300, is smaller).
PHOTOS = ("astronaut", "china", "coffee", "flower", "grace_hopper", "hubble_deep_field", "immunohistochemistry",
          "motorcycle_left", "motorcycle_right", "retina", "rocket")
H, W, ROWS, COLS = 1356, 2040, 4, 4


def mosaics(folder: Path, count: int, seed: int = 0) -> int:
    """Write ``count`` 2040×1356 PNG mosaics of the sample photos into ``folder``; return the PNG bytes."""
    photos = {name: sample_image(name) for name in PHOTOS}
    rng = np.random.default_rng(seed)
    ch, cw = H // ROWS, W // COLS
    folder.mkdir(parents=True)
    total = 0
    for k in range(count):
        canvas = np.empty((H, W, 3), np.uint8)
        for r in range(ROWS):
            for c in range(COLS):
                img = photos[PHOTOS[int(rng.integers(len(PHOTOS)))]]
                y = int(rng.integers(img.shape[0] - ch + 1))
                x = int(rng.integers(img.shape[1] - cw + 1))
                cell = img[y:y + ch, x:x + cw]
                if rng.random() < 0.5:
                    cell = cell[:, ::-1]
                canvas[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = cell
        path = folder / f"{k + 1:06d}.png"
        Image.fromarray(canvas).save(path, compress_level=1)
        total += path.stat().st_size
    return total


def crop_starts(manifest: dict[str, Any]) -> tuple[list[int], list[int]]:
    """The sub-image grid build_shards cut: the distinct row and column starts (HR px) of one source image's
    entries (every image of the benchmark has the same size, so the same grid)."""
    first = manifest["entries"][0]["source"]
    crops = [e["crop"] for e in manifest["entries"] if e["source"] == first]
    return sorted({y for y, _ in crops}), sorted({x for _, x in crops})


def coverage(starts: tuple[list[int], list[int]], sub: int) -> tuple[int, int, float]:
    """(min, max, mean) number of sub-images that hold a pixel of one 2040×1356 image."""
    counts = np.zeros((H, W), np.int16)
    for y in starts[0]:
        for x in starts[1]:
            counts[y:y + sub, x:x + sub] += 1
    return int(counts.min()), int(counts.max()), float(counts.mean())


def patch_weights(starts: tuple[list[int], list[int]], sub: int, patch: int, scale: int = 4
                  ) -> tuple[int, int, float]:
    """(min, max, mean) number of sub-images from which each patch position of one image can be drawn.

    RandomPatchDataset draws an entry uniformly, then a position in it; with whole-image entries every position
    of an image has weight 1 (as in the reference's loader), with sub-images a position's weight is the number
    of sub-images that contain the whole patch."""
    def per_axis(length: int, axis_starts: list[int]) -> np.ndarray:
        pos = np.arange(0, length - patch + 1, scale)
        return sum(((c <= pos) & (pos <= c + sub - patch)).astype(np.int64) for c in axis_starts)

    m = np.outer(per_axis(H, starts[0]), per_axis(W, starts[1]))
    return int(m.min()), int(m.max()), float(m.mean())


def build(src: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    m = build_shards(src, out, 4, show_progress=False, **kwargs)
    return {"secs": time.perf_counter() - t0, "bytes": m["counts"]["bytes"], "entries": m["counts"]["entries"],
            "shards": m["counts"]["shards"], "manifest": m}


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its finished, reaped children (loader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(ds: RandomPatchDataset, samples: int, batch: int, workers: int) -> tuple[float, float]:
    """(steady-state samples/s, CPU µs per sample). The CPU time covers the whole run, worker start-up included
    (the same for both layouts); unlike wall time it hardly changes when other jobs share the cores."""
    cpu0 = _cpu_s()
    # Exhausting the loader joins its workers, so their CPU time is in RUSAGE_CHILDREN.
    n, secs = drain_loader(infinite_loader(ds, batch, 0, workers, stop_index=samples))
    return n / secs, (_cpu_s() - cpu0) / samples * 1e6


def rates(dirs: dict[str, Path], workers: int, samples: int, reps: int, patch: int, batch: int
          ) -> dict[str, list[tuple[float, float]]]:
    """Interleaved repetitions of (samples/s, CPU µs/sample) of each layout (same sample indices everywhere)."""
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in dirs}
    for _ in range(reps):
        for name, d in dirs.items():
            ds = RandomPatchDataset(d, patch, 4, samples, seed=0)
            out[name].append(measure(ds, samples, batch, workers))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16, help="2040x1356 mosaics to build (default 16)")
    ap.add_argument("--samples", type=int, default=4096, help="patches per throughput run")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per layout and worker count")
    ap.add_argument("--patch", type=int, default=128, help="HR patch side in px")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sub-image", type=int, default=480)
    ap.add_argument("--sub-step", type=int, default=240)
    ap.add_argument("--chunks", type=str, default="", help="comma-separated HR chunk sides to compare (whole)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 images, 256 samples, 1 rep")
    ap.add_argument("--seed", type=int, default=0, help="mosaic layout seed")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.samples, args.reps = 3, 256, 1
    chunk_sides = [int(c) for c in args.chunks.split(",") if c.strip()]
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="easlurm-shard-layout-") as tmp:
        work = Path(tmp)
        png_bytes = mosaics(work / "hr", args.images, args.seed)
        layouts = {"whole": build(work / "hr", work / "whole"),
                   "sub": build(work / "hr", work / "sub", sub_image=args.sub_image, sub_step=args.sub_step)}
        dirs = {"whole": work / "whole", "sub": work / "sub"}
        variants: dict[str, dict[str, Any]] = {}
        for side in chunk_sides:
            for comp in ((None, "lzf") if side == 64 else (None,)):
                key = f"chunk {side} {comp or 'none'}"
                variants[key] = {"chunk": side, "compression": comp or "none",
                                 **build(work / "hr", work / key.replace(" ", "-"), chunk=side, compression=comp)}
        # The chunk variants join the 0-worker interleaving, so every row of both tables shares the machine load.
        measured = {0: rates({**dirs, **{k: work / k.replace(" ", "-") for k in variants}}, 0, args.samples,
                             args.reps, args.patch, args.batch_size),
                    2: rates(dirs, 2, args.samples, args.reps, args.patch, args.batch_size)}
    # Medians over the repetitions: rate[workers][layout] in samples/s, cpu[...] in CPU µs per sample.
    rate = {k: {n: statistics.median(v[0] for v in runs) for n, runs in rs.items()} for k, rs in measured.items()}
    cpu = {k: {n: statistics.median(v[1] for v in runs) for n, runs in rs.items()} for k, rs in measured.items()}
    starts = crop_starts(layouts["sub"]["manifest"])
    cov = coverage(starts, args.sub_image)
    pw = patch_weights(starts, args.sub_image, args.patch)
    w, s = layouts["whole"], layouts["sub"]
    lines = [
        *report_head("## Shard layout: whole images vs sub-images", command_line("shard_layout.py", argv),
                     data_machine()),
        f"- load average before / after (other processes share the cores): {load_before} / {load_average()}",
        f"- data: {args.images} HR images of {W}x{H} px (mosaics of the shipped sample photos at native "
        f"resolution, {png_bytes / 1e6:.0f} MB as PNG), bicubic x4 LR, uncompressed 64 px chunks unless stated;"
        f" {args.patch} px HR patches through RandomPatchDataset + infinite_loader, batch {args.batch_size}, the"
        f" same {args.samples} sample indices per run, median of {args.reps} interleaved runs; files in the page"
        " cache (built just before)",
        "- samples/s: wall clock, first batch untimed; CPU µs/sample: user + system time of the loader process and"
        " its workers over the whole run (worker start-up included), which other jobs on the cores barely move",
        f"- sub-images: `--sub-image {args.sub_image} --sub-step {args.sub_step}`: each pixel is in "
        f"{cov[0]}–{cov[1]} sub-images (mean {cov[2]:.2f}); a {args.patch} px patch position is drawn with weight"
        f" {pw[0]}–{pw[1]} (mean {pw[2]:.2f}) relative to the whole-image layout, where every position of an image"
        " weighs the same (as in the reference's loader)",
        "",
        "| layout | entries | shard files | disk MB | build s | samples/s (CPU µs/sample), 0 workers |"
        " samples/s (CPU µs/sample), 2 workers |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label, info in (("whole", "whole images", w),
                              ("sub", f"sub-images {args.sub_image}/{args.sub_step}", s)):
        lines.append(f"| {label} | {info['entries']} | {info['shards']} | {info['bytes'] / 1e6:.1f} |"
                     f" {info['secs']:.1f} | {rate[0][name]:.0f} ({cpu[0][name]:.0f}) |"
                     f" {rate[2][name]:.0f} ({cpu[2][name]:.0f}) |")
    lines += [
        f"| **sub / whole** | | | **{s['bytes'] / w['bytes']:.2f}x** | **{s['secs'] / w['secs']:.2f}x** |"
        f" **{rate[0]['sub'] / rate[0]['whole']:.2f}x ({cpu[0]['sub'] / cpu[0]['whole']:.2f}x)** |"
        f" **{rate[2]['sub'] / rate[2]['whole']:.2f}x ({cpu[2]['sub'] / cpu[2]['whole']:.2f}x)** |",
        "",
        "All runs (samples/s / CPU µs per sample): " + "; ".join(
            f"{n}, {k} workers: {', '.join(f'{v[0]:.0f}/{v[1]:.0f}' for v in measured[k][n])}" for k in (0, 2)
            for n in measured[k]),
    ]
    if variants:
        lines += ["", f"Whole-image layout, HDF5 chunk side (num_workers 0, median of {args.reps}, interleaved with"
                  " the runs above):", "",
                  "| HR chunk px | compression | disk MB | build s | samples/s | CPU µs/sample | CPU vs 64 px |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        base = cpu[0].get("chunk 64 none", cpu[0]["whole"])
        lines += [f"| {v['chunk']} | {v['compression']} | {v['bytes'] / 1e6:.1f} | {v['secs']:.1f} |"
                  f" {rate[0][k]:.0f} | {cpu[0][k]:.0f} | {cpu[0][k] / base:.2f}x |" for k, v in variants.items()]
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
