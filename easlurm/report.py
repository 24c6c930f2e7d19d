"""Tables and plots of evaluation results (CSV, Markdown, the PSNR–LPIPS Pareto plot).

A result row is a :class:`ResultRow`: one model on one test set, metrics averaged over the set's images (PSNR-Y in
dB, SSIM-Y in [0, 1], LPIPS-alex ≥ 0 or None when LPIPS is off). Everything here is a pure function of the rows,
so equal rows give byte-identical files (the PNG carries no timestamp or version metadata).

Pareto plot: one panel per test set, PSNR-Y on x (higher is better) against LPIPS on y (lower is better; SSIM-Y,
higher is better, when LPIPS is off). Members are circles; those on the members' Pareto front
(:func:`easlurm.evo.pareto.pareto_front_mask` on (−PSNR, LPIPS)) are filled and joined by a line, dominated ones are
hollow. Models that are not members (the fused model) are red stars and are not part of the front computation.
Every point is labelled with its model name (and a member's preference ``w_dist:w_perc``).
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ResultRow", "CSV_FIELDS", "format_preference", "results_csv", "results_markdown", "front_mask",
           "pareto_png"]

CSV_FIELDS = ("set", "model", "preference", "psnr", "ssim", "lpips", "n_images")


@dataclass(frozen=True)
class ResultRow:
    """One model on one test set: per-image metrics averaged over ``n_images`` images."""

    set: str
    model: str
    preference: tuple[float, float] | None  # (w_dist, w_perc) of a member; None for the fused model
    psnr: float
    ssim: float
    lpips: float | None
    n_images: int

    @property
    def is_member(self) -> bool:
        return self.preference is not None


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
    """CSV text with header :data:`CSV_FIELDS`; PSNR with 4 decimals, SSIM and LPIPS with 6, empty LPIPS when off."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in rows:
        w.writerow([r.set, r.model, format_preference(r.preference), _num(r.psnr, 4), _num(r.ssim, 6),
                    _num(r.lpips, 6), r.n_images])
    return buf.getvalue()


def _sets(rows: Sequence[ResultRow]) -> list[str]:
    return list(dict.fromkeys(r.set for r in rows))  # first-seen order: the order the sets were evaluated in


def front_mask(rows: Sequence[ResultRow]) -> np.ndarray:
    """For rows of one set: True where a member lies on the members' front of (−PSNR, LPIPS) (SSIM without LPIPS).

    Non-members and rows with a non-finite metric are never on the front.
    """
    from .evo.pareto import pareto_front_mask

    mask = np.zeros(len(rows), dtype=bool)
    idx = [i for i, r in enumerate(rows) if r.is_member]
    if not idx:
        return mask
    use_lpips = all(rows[i].lpips is not None for i in idx)
    pts = np.array([[-rows[i].psnr, rows[i].lpips if use_lpips else -rows[i].ssim] for i in idx], dtype=np.float64)
    finite = np.all(np.isfinite(pts), axis=1)
    if finite.any():
        sub = pareto_front_mask(pts[finite])
        mask[np.asarray(idx)[finite]] = sub
    return mask


def results_markdown(rows: Sequence[ResultRow], title: str = "Evaluation", scale: int | None = None) -> str:
    """A Markdown section with one table per test set; members on the set's Pareto front are marked with ★."""
    lines = [f"## {title}", ""]
    has_lpips = any(r.lpips is not None for r in rows)
    for name in _sets(rows):
        sub = [r for r in rows if r.set == name]
        on_front = front_mask(sub)
        n = max(r.n_images for r in sub)
        lines.append(f"### {name} ({n} image{'s' if n != 1 else ''}{f', ×{scale}' if scale else ''})")
        lines.append("")
        head = ["model", "preference (w_dist:w_perc)", "PSNR-Y (dB) ↑", "SSIM-Y ↑"]
        if has_lpips:
            head.append("LPIPS-alex ↓")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
        for r, front in zip(sub, on_front):
            cells = [r.model + (" ★" if front else ""), format_preference(r.preference) or "—",
                     _num(r.psnr, 2), _num(r.ssim, 4)]
            if has_lpips:
                cells.append(_num(r.lpips, 4) or "—")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("★ on the members' Pareto front (PSNR-Y vs " + ("LPIPS" if has_lpips else "SSIM-Y") + ").")
    return "\n".join(lines) + "\n"


def pareto_png(rows: Sequence[ResultRow], dpi: int = 100) -> bytes:
    """The PSNR-vs-LPIPS plot (see the module docstring) as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = _sets(rows)
    fig = Figure(figsize=(5.0 * max(1, len(names)), 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for ax, name in zip(axes, names):
        sub = [r for r in rows if r.set == name]
        use_lpips = all(r.lpips is not None for r in sub)
        ys = [(r.lpips if use_lpips else r.ssim) for r in sub]
        on_front = front_mask(sub)
        members = [i for i, r in enumerate(sub) if r.is_member]
        front = sorted((i for i in members if on_front[i]), key=lambda i: sub[i].psnr)
        if front:
            ax.plot([sub[i].psnr for i in front], [ys[i] for i in front], "-", color="tab:blue", lw=1.2,
                    zorder=1, label="members' Pareto front")
        for i in members:
            ax.scatter([sub[i].psnr], [ys[i]], s=50, zorder=2, edgecolors="tab:blue",
                       facecolors="tab:blue" if on_front[i] else "none")
        others = [i for i, r in enumerate(sub) if not r.is_member]
        if others:
            ax.scatter([sub[i].psnr for i in others], [ys[i] for i in others], marker="*", s=220, color="tab:red",
                       edgecolors="black", linewidths=0.6, zorder=3, label="fused")
        for i, r in enumerate(sub):
            label = f"{r.model} ({format_preference(r.preference)})" if r.is_member else r.model
            ax.annotate(label, (r.psnr, ys[i]), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_title(f"{name} ({max(r.n_images for r in sub)} images)")
        ax.set_xlabel("PSNR-Y (dB) ↑")
        ax.set_ylabel("LPIPS-alex ↓" if use_lpips else "SSIM-Y ↑")
        ax.grid(True, alpha=0.3)
        if front or others:
            ax.legend(fontsize=8, loc="best")
        ax.margins(0.15)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
