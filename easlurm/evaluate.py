"""Evaluate a run's final members and its fused model on test sets (DESIGN.md §2 "Evaluation", §4).

``python -m easlurm.evaluate --run RUN [--sets NAME=PATH ...] [--device DEV]``

Test sets: ``eval.sets`` of the run's config (``name: path``), or — when that is empty — the val shards as ``val``;
each ``--sets NAME=PATH`` adds a set or replaces the one of the same name (relative paths are relative to the
current directory). A set is either

- a **shard folder** (holds ``manifest.json``): every entry's HR image, or
- a **folder of HR images** (``read_rgb`` policy, sorted file names);

either way the HR image is mod-cropped (bottom/right) to a multiple of ``data.scale`` and the LR input is made with
the project's MATLAB-style bicubic (:func:`easlurm.data.bicubic.bicubic_downscale`), so every set is degraded the
same way. Every set is checked before any model runs; bad ones raise one :class:`EvalError` naming them all.

Models: every final member (``RUN/cycles/<run.cycles>/members/I/G.pt``, label ``member_I``, with its preference)
and, when the fusion stage finished, the fused model (``RUN/fusion/fused.pt``, label ``fused``). Inference is whole
image, or tiled with ``eval.tile`` LR pixels (16 px overlap) when set; outputs are rounded to uint8 as BasicSR does
(:func:`easlurm.upscale.super_resolve`, which also mirror-pads LR sides for RRDBNet ×2/×1 and crops the output).

Metrics per image, averaged per set: PSNR-Y and SSIM-Y (:mod:`easlurm.metrics.psnr_ssim`, ``crop_border = scale``),
LPIPS-alex v0.1 on the whole uint8-rounded RGB output (when ``eval.lpips``). Outputs (atomic writes; a rerun with the
same inputs rewrites identical bytes):

- ``RUN/eval/results.csv`` — set, model, preference (``w_dist:w_perc``), psnr, ssim, lpips, n_images;
- ``RUN/eval/per_image.csv`` — the same per image (``image`` column instead of ``n_images``);
- ``RUN/eval/results.md`` — one Markdown table per set;
- ``RUN/eval/pareto.png`` — PSNR vs LPIPS per set, members' Pareto front highlighted, fused model as a star;
- ``RUN/tb/eval`` — the numbers as scalars (``SET/METRIC/MODEL``, step 0), the plot as an image, the table as text.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import factory
from .config import Config, load_run_config
from .errors import ConfigError, DataError, EaslurmError
from .report import ResultRow, format_preference, pareto_png, results_csv, results_markdown
from .store import RunDir, atomic_write_bytes, atomic_write_text, load_verified, read_checkpoint_meta

__all__ = ["EvalError", "EvalSet", "ModelEntry", "parse_set_arg", "resolve_sets", "open_test_set", "final_models",
           "evaluate_run", "main"]

log = logging.getLogger("easlurm.evaluate")

_OVERLAP = 16  # LR px of context around each tile (see easlurm.infer)


class EvalError(EaslurmError):
    """A test set, model or evaluation setting is unusable; the message names the set, path or model."""


@dataclass(frozen=True)
class EvalSet:
    """One test set: ``kind`` is ``"shards"`` (``ids`` = entry ids) or ``"folder"`` (``ids`` = file names)."""

    name: str
    path: Path
    kind: str
    ids: tuple[str, ...]

    def images(self, scale: int) -> Iterator[tuple[str, np.ndarray]]:
        """``(id, HR)`` pairs in order; HR is uint8 HWC RGB, mod-cropped to a multiple of ``scale``."""
        if self.kind == "shards":
            from .data.dataset import ShardReader

            reader = ShardReader(self.path)
            try:
                for eid in self.ids:
                    yield eid, _mod_crop(reader.read_full(eid, "hr"), scale, f"{self.path} entry {eid}")
            finally:
                reader.close()
        else:
            from .data.images import read_rgb

            for fname in self.ids:
                yield fname, _mod_crop(read_rgb(self.path / fname), scale, str(self.path / fname))


def _mod_crop(img: np.ndarray, scale: int, where: str) -> np.ndarray:
    h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
    if h == 0 or w == 0:
        raise EvalError(f"{where}: image is {img.shape[1]}x{img.shape[0]} px, smaller than scale {scale}")
    return np.ascontiguousarray(img[:h, :w])


@dataclass
class ModelEntry:
    """A model to evaluate: its label, member preference (None for the fused model) and backbone (on CPU)."""

    label: str
    preference: tuple[float, float] | None
    model: nn.Module


def parse_set_arg(text: str) -> tuple[str, str]:
    """Split ``NAME=PATH``; raise :class:`EvalError` naming the argument when either side is empty."""
    name, sep, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise EvalError(f"--sets {text!r}: expected NAME=PATH, e.g. --sets Set5=/data/Set5/HR")
    if "/" in name or any(c.isspace() for c in name):
        raise EvalError(f"--sets {text!r}: the set name {name!r} must not contain '/' or spaces")
    return name, path


def resolve_sets(cfg: Config, extra: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Name → path of every test set: ``eval.sets`` (or the val shards as ``val``), then ``extra`` on top."""
    sets: dict[str, Path] = {k: Path(v) for k, v in cfg.eval.sets.items()}
    if not sets:
        val = factory.data_dirs(cfg)[1]
        if val is not None:
            sets["val"] = val
    for name, path in (extra or {}).items():
        sets[name] = Path(path)
    if not sets:
        raise EvalError("no test sets: set eval.sets or data.val in the config, or pass --sets NAME=PATH")
    return sets


def open_test_set(name: str, path: str | Path) -> EvalSet:
    """Check a test-set folder and list its images; raise :class:`EvalError` naming the set and the path."""
    p = Path(path)
    if not p.exists():
        raise EvalError(f"test set {name!r}: {p} does not exist")
    if not p.is_dir():
        raise EvalError(f"test set {name!r}: {p} is not a folder (expected a shard folder or a folder of images)")
    try:
        if (p / "manifest.json").is_file():
            from .data.shards import load_manifest

            manifest = load_manifest(p)
            ids = tuple(e["id"] for e in manifest["entries"])
            if not ids:
                raise EvalError(f"test set {name!r}: shard folder {p} has no entries")
            return EvalSet(name, p, "shards", ids)
        from .data.images import list_images

        return EvalSet(name, p, "folder", tuple(f.name for f in list_images(p)))
    except DataError as exc:
        raise EvalError(f"test set {name!r}: {exc}") from exc


def _open_all(sets: Mapping[str, Path]) -> list[EvalSet]:
    opened, problems = [], []
    for name, path in sets.items():
        try:
            opened.append(open_test_set(name, path))
        except EvalError as exc:
            problems.append(str(exc))
    if problems:
        raise EvalError("bad test set" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems))
    return opened


def final_models(cfg: Config, run: RunDir) -> list[ModelEntry]:
    """The final members (slot order) and, when the fusion stage is done, the fused model — all on CPU, eval mode."""
    from .population import final_members, load_member_file

    entries = []
    for i, (folder, meta) in enumerate(final_members(cfg, run)):
        g = factory.build_generator(cfg)
        g.load_state_dict(load_member_file(folder, meta, "G.pt"), strict=True)
        entries.append(ModelEntry(f"member_{i}", meta.preference, g.eval()))
    fmeta = read_checkpoint_meta(run.fusion)
    if fmeta is not None and fmeta.get("done") and "fused.pt" in fmeta.get("sha256", {}):
        g = factory.build_generator(cfg)
        g.load_state_dict(load_verified(run.fusion, "fused.pt", fmeta), strict=True)
        entries.append(ModelEntry("fused", None, g.eval()))
    elif (run.fusion / "fused.pt").exists():
        raise EvalError(f"{run.fusion / 'fused.pt'}: exists but the fusion stage is not marked done in "
                        f"{run.fusion / 'meta.json'}; rerun `python -m easlurm.fuse --run {run.root}`")
    return entries


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.tensor(img).permute(2, 0, 1).unsqueeze(0).float().div(255.0)  # copies: inputs may be read-only


def _score_set(ts: EvalSet, models: Sequence[ModelEntry], cfg: Config, device: torch.device,
               lpips_metric: Any) -> tuple[list[ResultRow], list[list[Any]]]:
    from .data.bicubic import bicubic_downscale
    from .metrics.psnr_ssim import MetricError, psnr_y, ssim_y
    from .upscale import super_resolve

    scale = cfg.data.scale
    per: dict[str, list[tuple[float, float, float | None]]] = {m.label: [] for m in models}
    image_rows: list[list[Any]] = []
    for image_id, hr in ts.images(scale):
        lr = bicubic_downscale(hr, scale)
        hr_t = _to_tensor(hr) if lpips_metric is not None else None
        for m in models:
            try:
                sr = super_resolve(m.model, lr, scale, cfg.eval.tile, _OVERLAP, str(device))
            except ConfigError as exc:
                raise EvalError(f"eval.tile: {exc}") from exc
            try:
                psnr, ssim = psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)
            except MetricError as exc:
                raise EvalError(f"test set {ts.name!r}, image {image_id}: {exc}") from exc
            lp = float(lpips_metric(_to_tensor(sr), hr_t)[0]) if lpips_metric is not None else None
            per[m.label].append((psnr, ssim, lp))
            image_rows.append([ts.name, m.label, image_id, psnr, ssim, lp])
        log.info("%s/%s: %s", ts.name, image_id, ", ".join(f"{lab} {v[-1][0]:.2f} dB" for lab, v in per.items()))
    rows = []
    for m in models:
        vals = per[m.label]
        n = len(vals)
        lp_mean = float(np.mean([v[2] for v in vals])) if lpips_metric is not None else None
        rows.append(ResultRow(ts.name, m.label, m.preference, float(np.mean([v[0] for v in vals])),
                              float(np.mean([v[1] for v in vals])), lp_mean, n))
    return rows, image_rows


def _per_image_csv(image_rows: Sequence[Sequence[Any]], models: Sequence[ModelEntry]) -> str:
    prefs = {m.label: format_preference(m.preference) for m in models}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["set", "model", "preference", "image", "psnr", "ssim", "lpips"])
    for set_name, label, image_id, psnr, ssim, lp in image_rows:
        w.writerow([set_name, label, prefs[label], image_id, f"{psnr:.4f}", f"{ssim:.6f}",
                    "" if lp is None else f"{lp:.6f}"])
    return buf.getvalue()


def _tensorboard(run: RunDir, rows: Sequence[ResultRow], png: bytes, markdown: str) -> None:
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    # purge_step=0: TensorBoard drops the events of earlier evaluations of this run, so it shows the latest only.
    tb = SummaryWriter(log_dir=str(run.tb / "eval"), purge_step=0)
    try:
        for r in rows:
            for metric, value in (("psnr", r.psnr), ("ssim", r.ssim), ("lpips", r.lpips)):
                if value is not None and math.isfinite(value):
                    tb.add_scalar(f"{r.set}/{metric}/{r.model}", value, 0)
        img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        tb.add_image("pareto", img, 0, dataformats="HWC")
        tb.add_text("results", markdown, 0)
    finally:
        tb.close()


def evaluate_run(run_dir: str | Path, sets: Mapping[str, str] | None = None,
                 device: str | None = None) -> dict[str, Any]:
    """Evaluate every final member and the fused model on the test sets; write the reports (module docstring).

    Args:
        run_dir: the run directory.
        sets: extra test sets ``{name: path}`` (add to / replace the config's).
        device: torch device (default: CUDA when available, else CPU).

    Returns:
        ``{"rows": [ResultRow, ...], "markdown": str, "csv": Path, "markdown_path": Path, "pareto": Path}``.
    """
    from .runtime import pick_device

    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    test_sets = _open_all(resolve_sets(cfg, sets))
    models = final_models(cfg, run)
    dev = pick_device(device)
    lpips_metric = None
    if cfg.eval.lpips:
        from .metrics.lpips import LPIPSMetric

        lpips_metric = LPIPSMetric(net="alex", version="0.1", device=dev)
    rows: list[ResultRow] = []
    image_rows: list[list[Any]] = []
    with torch.no_grad():
        for ts in test_sets:
            set_rows, set_images = _score_set(ts, models, cfg, dev, lpips_metric)
            rows.extend(set_rows)
            image_rows.extend(set_images)
    for m in models:
        m.model.to("cpu")

    markdown = results_markdown(rows, title=f"Evaluation of {cfg.run.name} ({run.root.name})", scale=cfg.data.scale)
    png = pareto_png(rows)
    out = run.eval
    atomic_write_text(out / "results.csv", results_csv(rows))
    atomic_write_text(out / "per_image.csv", _per_image_csv(image_rows, models))
    atomic_write_text(out / "results.md", markdown)
    atomic_write_bytes(out / "pareto.png", png)
    _tensorboard(run, rows, png, markdown)
    return {"rows": rows, "markdown": markdown, "csv": out / "results.csv", "markdown_path": out / "results.md",
            "pareto": out / "pareto.png"}


def is_done(run_dir: str | Path) -> bool:
    """Whether the evaluation stage has written its results (``results.csv`` and ``results.md``)."""
    out = RunDir(run_dir).eval
    return (out / "results.csv").is_file() and (out / "results.md").is_file()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints the Markdown tables and the path of pareto.png. Exit 2 on a bad input."""
    ap = argparse.ArgumentParser(prog="python -m easlurm.evaluate",
                                 description="Evaluate a run's final members and fused model on test sets.")
    ap.add_argument("--run", required=True, help="run directory (holds config.yaml)")
    ap.add_argument("--sets", nargs="+", default=[], metavar="NAME=PATH",
                    help="test sets to add (or replace by name): a shard folder or a folder of HR images")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        extra = dict(parse_set_arg(s) for s in args.sets)
        result = evaluate_run(args.run, extra, device=args.device)
    except EaslurmError as exc:
        print("easlurm.evaluate: error: " + str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    print(result["markdown"], end="")
    print(f"\npareto plot: {result['pareto']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
