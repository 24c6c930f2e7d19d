"""Tables and plots of evaluation results (CSV, Markdown, the PSNR–perception Pareto plot).

A result row is a :class:`ResultRow`: one model on one test set, each metric averaged over the set's images, kept
as data (``row.metrics = {"psnr": 27.1, "lpips": 0.21, ...}``, names and directions from
:data:`easlurm.metrics.registry.METRICS`). Columns follow the metrics the rows hold, in their order. Everything
here is a pure function of the rows, so equal rows give byte-identical files (the PNG carries no timestamp or
version metadata).

Pareto plot: one panel per test set, x and y from :func:`easlurm.metrics.registry.plot_axes` (PSNR-Y against
LPIPS, else DISTS, else SSIM-Y), each axis labelled with its direction. Members are circles; those on the members'
Pareto front (:func:`easlurm.evo.pareto.pareto_front_mask`, both axes turned into "lower is better") are filled and
joined by a line, dominated ones are hollow. The fused model is a red star, baselines (bicubic) grey squares;
neither is part of the front computation. The axes frame the models; a baseline outside them is named in the legend
with its values. Every point is labelled with its model name (and a member's preference
``w_dist:w_perc``).
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics.registry import metric_spec, plot_axes

__all__ = ["ResultRow", "metric_names", "format_preference", "results_csv", "results_markdown", "front_mask",
           "pareto_png"]


@dataclass(frozen=True)
class ResultRow:
    """One model on one test set: per-image metrics averaged over ``n_images`` images.

    ``preference`` is a member's (w_dist, w_perc) and None otherwise; ``baseline`` marks reference rows such as
    bicubic upscaling. ``row.psnr`` is shorthand for ``row.metrics["psnr"]`` (any metric name works).
    """

    set: str
    model: str
    preference: tuple[float, float] | None
    metrics: dict[str, float]
    n_images: int
    baseline: bool = False

    @property
    def is_member(self) -> bool:
        return self.preference is not None

    def __getattr__(self, name: str) -> float:
        metrics = self.__dict__.get("metrics")  # absent while copy/pickle rebuild the object
        if metrics is not None and name in metrics:
            return metrics[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or metric {name!r}"
                             + (f" (metrics: {', '.join(metrics)})" if metrics else ""))


def metric_names(rows: Sequence[ResultRow]) -> list[str]:
    """The metrics the rows hold, in first-seen order (the order they were configured in)."""
    return list(dict.fromkeys(name for r in rows for name in r.metrics))


def format_preference(pref: tuple[float, float] | None) -> str:
    """``w_dist:w_perc`` with 3 significant digits (``1:0``, ``0.75:0.25``), or ``""`` for no preference."""
    if pref is None:
        return ""
    return f"{pref[0]:.3g}:{pref[1]:.3g}"


def _num(value: float | None, digits: int) -> str:
    if value is None:
        return ""
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.{digits}f}"


def results_csv(rows: Sequence[ResultRow]) -> str:
    """CSV text: ``set, model, preference, <one column per metric>, n_images``; a metric a row lacks is empty."""
    names = metric_names(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["set", "model", "preference", *names, "n_images"])
    for r in rows:
        w.writerow([r.set, r.model, format_preference(r.preference),
                    *(_num(r.metrics.get(n), metric_spec(n).csv_digits) for n in names), r.n_images])
    return buf.getvalue()


def _sets(rows: Sequence[ResultRow]) -> list[str]:
    return list(dict.fromkeys(r.set for r in rows))  # first-seen order: the order the sets were evaluated in


def front_mask(rows: Sequence[ResultRow], axes: tuple[str, str] | None = None) -> np.ndarray:
    """For rows of one set: True where a member lies on the members' front in the ``axes`` metrics (default
    :func:`plot_axes` of the rows' metrics). Non-members and rows with a missing or non-finite value are never on
    the front."""
    from .evo.pareto import pareto_front_mask

    mask = np.zeros(len(rows), dtype=bool)
    idx = [i for i, r in enumerate(rows) if r.is_member]
    if not idx:
        return mask
    x, y = axes if axes is not None else plot_axes(metric_names(rows))
    signs = [-1.0 if metric_spec(n).higher_is_better else 1.0 for n in (x, y)]
    pts = np.array([[s * rows[i].metrics.get(n, math.nan) for s, n in zip(signs, (x, y))] for i in idx],
                   dtype=np.float64)
    finite = np.all(np.isfinite(pts), axis=1)
    if finite.any():
        mask[np.asarray(idx)[finite]] = pareto_front_mask(pts[finite])
    return mask


def results_markdown(rows: Sequence[ResultRow], title: str = "Evaluation", scale: int | None = None) -> str:
    """A Markdown section with one table per test set; members on the set's Pareto front are marked with ★."""
    names = metric_names(rows)
    axes = plot_axes(names) if names else ("", "")
    lines = [f"## {title}", ""]
    for name in _sets(rows):
        sub = [r for r in rows if r.set == name]
        on_front = front_mask(sub, axes) if names else np.zeros(len(sub), dtype=bool)
        n = max(r.n_images for r in sub)
        lines.append(f"### {name} ({n} image{'s' if n != 1 else ''}{f', ×{scale}' if scale else ''})")
        lines.append("")
        head = ["model", "preference (w_dist:w_perc)"] + [f"{metric_spec(m).title} {metric_spec(m).arrow}"
                                                          for m in names]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---", "---"] + ["---:"] * len(names)) + "|")
        for r, front in zip(sub, on_front):
            cells = [r.model + (" ★" if front else ""), format_preference(r.preference) or "—"]
            cells += [_num(r.metrics.get(m), metric_spec(m).table_digits) or "—" for m in names]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if names:
        lines.append(f"★ on the members' Pareto front ({metric_spec(axes[0]).title.split(' ')[0]} vs "
                     f"{metric_spec(axes[1]).title.split(' ')[0]}).")
    return "\n".join(lines) + "\n"


def _zoom_on_models(ax: Any, rows: Sequence[ResultRow], xs: Sequence[float], ys: Sequence[float]) -> list[bool]:
    """Axis limits that frame the models (15 % margin), not the baselines: bicubic is usually far away and would
    squeeze the members' front into a corner. Returns, per row, whether its point lies inside the limits."""
    core = [i for i, r in enumerate(rows) if not r.baseline and math.isfinite(xs[i]) and math.isfinite(ys[i])]
    if not core or len(core) == len(rows):
        ax.margins(0.15)
        return [True] * len(rows)
    limits = []
    for vals in (xs, ys):
        lo, hi = min(vals[i] for i in core), max(vals[i] for i in core)
        pad = 0.15 * (hi - lo) if hi > lo else max(abs(hi) * 0.01, 1e-3)
        limits.append((lo - pad, hi + pad))
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    return [limits[0][0] <= xs[i] <= limits[0][1] and limits[1][0] <= ys[i] <= limits[1][1] for i in range(len(rows))]


def pareto_png(rows: Sequence[ResultRow], dpi: int = 100) -> bytes:
    """The PSNR-vs-perception plot (see the module docstring) as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = _sets(rows)
    xm, ym = plot_axes(metric_names(rows))
    fig = Figure(figsize=(5.0 * max(1, len(names)), 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for ax, name in zip(axes, names):
        sub = [r for r in rows if r.set == name]
        xs = [r.metrics.get(xm, math.nan) for r in sub]
        ys = [r.metrics.get(ym, math.nan) for r in sub]
        on_front = front_mask(sub, (xm, ym))
        members = [i for i, r in enumerate(sub) if r.is_member]
        front = sorted((i for i in members if on_front[i]), key=lambda i: xs[i])
        if front:
            ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", color="tab:blue", lw=1.2,
                    zorder=1, label="members' Pareto front")
        for i in members:
            ax.scatter([xs[i]], [ys[i]], s=50, zorder=2, edgecolors="tab:blue",
                       facecolors="tab:blue" if on_front[i] else "none")
        inside = _zoom_on_models(ax, sub, xs, ys)
        for group, style in ((lambda r: r.baseline, {"marker": "s", "s": 60, "color": "tab:gray"}),
                             (lambda r: not r.is_member and not r.baseline,
                              {"marker": "*", "s": 220, "color": "tab:red", "edgecolors": "black",
                               "linewidths": 0.6})):
            picked = [i for i, r in enumerate(sub) if group(r)]
            if picked:
                label = ", ".join(sub[i].model + ("" if inside[i] else f" ({xs[i]:.2f}, {ys[i]:.4g}; off the plot)")
                                  for i in picked)
                ax.scatter([xs[i] for i in picked], [ys[i] for i in picked], zorder=3, label=label, **style)
        for i, r in enumerate(sub):
            label = f"{r.model} ({format_preference(r.preference)})" if r.is_member else r.model
            ax.annotate(label, (xs[i], ys[i]), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_title(f"{name} ({max(r.n_images for r in sub)} images)")
        ax.set_xlabel(f"{metric_spec(xm).title} {metric_spec(xm).arrow}")
        ax.set_ylabel(f"{metric_spec(ym).title} {metric_spec(ym).arrow}")
        ax.grid(True, alpha=0.3)
        if front or len(members) < len(sub):
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
