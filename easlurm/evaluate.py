"""Evaluate a run's final members and its fused model on test sets (DESIGN.md §2 "Evaluation", §4).

``easlurm evaluate RUN [--sets NAME=PATH ...] [--device DEV]`` (``python -m easlurm.evaluate`` alike)

Test sets: ``eval.sets`` of the run's config (``name: path``), or — when that is empty — the val shards as ``val``;
each ``--sets NAME=PATH`` adds a set or replaces the one of the same name (relative paths are relative to the
current directory). A set is a shard folder or a folder of HR images; HR images are mod-cropped and degraded with
MATLAB-style bicubic (:mod:`easlurm.scoring`). Every set is checked before any model is loaded or run: missing or
bad sets raise ONE :class:`EvalError` naming each set, its path and where to put it.

Models, one row each per set: ``bicubic`` (MATLAB-style bicubic upscaling of the same LR, the baseline every SR table
has), every final member (``RUN/cycles/<run.cycles>/members/I/G.pt``, label ``member_I``, with its preference) and,
when the fusion stage finished, the fused model (``RUN/fusion/fused.pt``, label ``fused``). Inference is whole
image, or tiled with ``eval.tile`` LR pixels (16 px overlap) when set; outputs are rounded to uint8 as BasicSR does
(:func:`easlurm.inference.super_resolve`).

Metrics per image, averaged per set: ``eval.metrics`` (default PSNR-Y, SSIM-Y, LPIPS-alex, DISTS; definitions and
crops in :mod:`easlurm.metrics.registry`). Outputs (atomic writes; a rerun with the same inputs rewrites identical
bytes):

- ``RUN/eval/results.csv`` — set, model, preference (``w_dist:w_perc``), one column per metric, n_images;
- ``RUN/eval/per_image.csv`` — the same per image (``image`` column instead of ``n_images``);
- ``RUN/eval/results.md`` — one Markdown table per set;
- ``RUN/eval/pareto.png`` — PSNR vs LPIPS (or the configured perceptual metric) per set, members' Pareto front
  highlighted, fused model as a star, bicubic as a grey square;
- ``RUN/tb/eval`` — the numbers as scalars (``SET/METRIC/MODEL``, step 0), the plot as an image, the table as text;
- ``RUN/eval/done.json`` — last, the stage's record (:class:`easlurm.stages.evaluation.EvalRecord`: sha256 and size
  of the four files above, the sets and models, when it ran); the stage is done when it and the files agree.

Scoring one model on one set from other code: :func:`easlurm.scoring.score_model`.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import factory
from .config import Config, load_run_config
from .errors import EaslurmError
from .report import ResultRow, format_preference, metric_names, pareto_png, results_csv, results_markdown
from .engine.context import StageContext, stage_context
from .runtime import pick_device
from .scoring import EvalError, EvalSet, ModelScore, open_test_set, open_test_sets, score_models
from .stages.evaluation import OUTPUTS, EvalRecord
from .stages.evaluation import read_record as read_eval_record
from .stages.fuse import read_record as read_fusion_record
from .store import RunDir, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from .tensor_files import load_verified

__all__ = ["EvalError", "EvalSet", "ModelEntry", "BICUBIC", "parse_set_arg", "resolve_sets", "open_test_set",
           "check_test_sets", "final_models", "score_entries", "evaluate_run", "main"]

log = logging.getLogger("easlurm.evaluate")

_OVERLAP = 16  # LR px of context around each tile (see easlurm.inference)


@dataclass
class ModelEntry:
    """A model to evaluate: its label, member preference (None otherwise) and backbone (``None``: the bicubic
    baseline)."""

    label: str
    preference: tuple[float, float] | None
    model: nn.Module | None

    @property
    def baseline(self) -> bool:
        return self.model is None


#: The bicubic row every table starts with.
BICUBIC = ModelEntry("bicubic", None, None)


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


def check_test_sets(cfg: Config, extra: Mapping[str, str] | None = None) -> list[EvalSet]:
    """Open every test set of ``cfg`` (plus ``extra``); ONE :class:`EvalError` names each missing or bad set, its path
    and what to put there. Cheap (lists files, reads manifests): a launcher can call it before spending GPU-hours."""
    return open_test_sets(resolve_sets(cfg, extra), cfg.data.max_pixels)


def final_models(cfg: Config, run: RunDir) -> list[ModelEntry]:
    """The final members (slot order) and, when the fusion stage is done, the fused model — all on CPU, eval mode."""
    from .population import final_members, load_member_file

    entries = []
    for i, (folder, meta) in enumerate(final_members(cfg, run)):
        g = factory.build_generator(cfg)
        g.load_state_dict(load_member_file(folder, meta, "G.pt"), strict=True)
        entries.append(ModelEntry(f"member_{i}", meta.preference, g.eval()))
    fmeta = read_fusion_record(cfg, run)
    if fmeta is not None and fmeta.done and "fused.pt" in fmeta.files.get("sha256", {}):
        g = factory.build_generator(cfg)
        g.load_state_dict(load_verified(run.fusion, "fused.pt", fmeta.store), strict=True)
        entries.append(ModelEntry("fused", None, g.eval()))
    elif (run.fusion / "fused.pt").exists():
        raise EvalError(f"{run.fusion / 'fused.pt'}: exists but the fusion stage is not marked done in "
                        f"{run.fusion / 'meta.json'}; rerun it: python -m easlurm.orchestrate.runner {run.root} "
                        f"fuse 0")
    return entries


def score_entries(cfg: Config, entries: Sequence[ModelEntry], test_sets: Sequence[EvalSet],
                  device: str | torch.device | None = None) -> tuple[list[ResultRow], list[ModelScore]]:
    """Score ``entries`` on every set with ``cfg.eval`` (metrics, crop, tiling) at ``cfg.data.scale``.

    Returns one :class:`ResultRow` per (set, entry), sets outer, and the per-image scores behind them (same order).
    """
    from .metrics.registry import build_metrics

    dev = pick_device(device)
    metrics = build_metrics(cfg.eval.metrics, scale=cfg.data.scale, perceptual_crop=cfg.eval.perceptual_crop,
                            device=dev)
    rows: list[ResultRow] = []
    scores: list[ModelScore] = []
    for ts in test_sets:
        by_label = score_models([(e.label, e.model) for e in entries], ts, cfg.data.scale, metrics, device=dev,
                                tile=cfg.eval.tile, overlap=_OVERLAP)
        for e in entries:
            sc = by_label[e.label]
            rows.append(ResultRow(ts.name, e.label, e.preference, sc.means, sc.n_images, baseline=e.baseline))
            scores.append(sc)
        log.info("%s (%d images): %s", ts.name, len(ts.ids), ", ".join(
            f"{r.model} {r.metrics.get('psnr', math.nan):.2f} dB" for r in rows[-len(entries):]))
    return rows, scores


def _per_image_csv(scores: Sequence[ModelScore], entries: Sequence[ModelEntry], names: Sequence[str]) -> str:
    from .metrics.registry import metric_spec

    prefs = {e.label: format_preference(e.preference) for e in entries}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["set", "model", "preference", "image", *names])
    for sc in scores:
        for im in sc.images:
            w.writerow([sc.set, sc.label, prefs[sc.label], im.image,
                        *(f"{im.metrics[n]:.{metric_spec(n).csv_digits}f}" for n in names)])
    return buf.getvalue()


def _tensorboard(ctx: StageContext, rows: Sequence[ResultRow], png: bytes, markdown: str) -> None:
    from PIL import Image
    # purge_step=0: TensorBoard drops the events of earlier evaluations of this run, so it shows the latest only.
    tb = ctx.writer(ctx.run.tb / "eval", purge_step=0)
    for r in rows:
        for metric, value in r.metrics.items():
            if math.isfinite(value):
                tb.add_scalar(f"{r.set}/{metric}/{r.model}", value, 0)
    img = np.asarray(Image.open(io.BytesIO(png), formats=["PNG"]).convert("RGB"))
    tb.add_image("pareto", img, 0, dataformats="HWC")
    tb.add_text("results", markdown, 0)
    tb.flush()


def evaluate_run(run_dir: str | Path, sets: Mapping[str, str] | None = None,
                 device: str | None = None) -> dict[str, Any]:
    """Evaluate bicubic, every final member and the fused model on the test sets; write the reports (module
    docstring).

    Args:
        run_dir: the run directory.
        sets: extra test sets ``{name: path}`` (add to / replace the config's).
        device: torch device (default: CUDA when available, else CPU).

    Returns:
        ``{"rows": [ResultRow, ...], "markdown": str, "csv": Path, "markdown_path": Path, "pareto": Path}``.
    """
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    test_sets = check_test_sets(cfg, sets)  # before any model is loaded: one error for all bad sets
    with stage_context(run, cfg, run.eval, "evaluation", device, preemptible=False) as ctx:
        attempt = ctx.attempt_log(_earlier_attempts(run), 0)
        entries = [BICUBIC, *final_models(cfg, run)]
        try:
            rows, scores = score_entries(cfg, entries, test_sets, ctx.device)
        finally:
            for e in entries:
                if e.model is not None:
                    e.model.to("cpu")

        markdown = results_markdown(rows, title=f"Evaluation of {cfg.run.name} ({run.root.name})",
                                    scale=cfg.data.scale)
        png = pareto_png(rows)
        out = run.eval
        atomic_write_text(out / "results.csv", results_csv(rows))
        atomic_write_text(out / "per_image.csv", _per_image_csv(scores, entries, metric_names(rows)))
        atomic_write_text(out / "results.md", markdown)
        atomic_write_bytes(out / "pareto.png", png)
        _tensorboard(ctx, rows, png, markdown)
        ctx.lease.check()
        record = EvalRecord(iteration=1, iters_target=1, attempts=attempt.entries(1),
                            outputs={n: sha256_file(out / n) for n in OUTPUTS},
                            sizes={n: (out / n).stat().st_size for n in OUTPUTS},
                            sets=[ts.name for ts in test_sets], models=[e.label for e in entries])
        atomic_write_json(out / "done.json", record.to_dict())
    return {"rows": rows, "markdown": markdown, "csv": out / "results.csv", "markdown_path": out / "results.md",
            "pareto": out / "pareto.png", "record": record}


def _earlier_attempts(run: RunDir) -> list[dict[str, Any]]:
    rec = read_eval_record(run)
    return rec.attempts if rec is not None else []


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints the Markdown tables and the path of pareto.png. Exit 2 on a bad input."""
    ap = argparse.ArgumentParser(prog="python -m easlurm.evaluate",
                                 description="Evaluate a run's final members and fused model on test sets.")
    ap.add_argument("run", nargs="?", help="run directory (holds config.yaml)")
    ap.add_argument("--run", dest="run_flag", help=argparse.SUPPRESS)  # the earlier spelling
    ap.add_argument("--sets", nargs="+", default=[], metavar="NAME=PATH",
                    help="test sets to add (or replace by name): a shard folder or a folder of HR images")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    args = ap.parse_args(argv)
    run = args.run or args.run_flag
    if not run:
        ap.error("the run directory is needed: easlurm evaluate RUN [--sets NAME=PATH ...]")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        extra = dict(parse_set_arg(s) for s in args.sets)
        result = evaluate_run(run, extra, device=args.device)
    except EaslurmError as exc:
        print("easlurm.evaluate: error: " + str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    print(result["markdown"], end="")
    print(f"\npareto plot: {result['pareto']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
