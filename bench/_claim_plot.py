"""The paper-claim plot: every arm in the PSNR–LPIPS plane (absolute, and relative to each seed's start)."""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from _claim_arms import ARM_BY_NAME, ARMS

__all__ = ["COLOURS", "mean_std", "model_order", "by_model", "plot_png"]

COLOURS = {"ea_moead": "tab:blue", "ea_nsga2": "tab:green", "adam_only": "tab:orange", "weighted_sum": "tab:red",
           "reference": "0.45"}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def model_order(models: Sequence[Mapping[str, Any]], arm: str) -> list[str]:
    """The models of ``arm``: members in slot order, then the fused model, then anything else by name."""
    return sorted({m["model"] for m in models if m["arm"] == arm},
                  key=lambda s: (s == "fused", int(s.split("_")[1]) if s.startswith("member_") else 0, s))


def by_model(models: Sequence[Mapping[str, Any]], arm: str, model: str) -> list[Mapping[str, Any]]:
    return sorted((m for m in models if m["arm"] == arm and m["model"] == model), key=lambda m: m["seed"])


def _draw_arms(ax: Any, models: Sequence[Mapping[str, Any]], delta: bool) -> None:
    """Per-seed points faint, means over seeds with ±1 std bars, each arm's mean members joined in slot order;
    fused = star, pretrained start = grey X. ``delta``: relative to the seed's start."""
    start = {m["seed"]: m for m in models if m["model"] == "pretrained"}

    def xy(m: Mapping[str, Any]) -> tuple[float, float]:
        if not delta:
            return m["psnr"], m["lpips"]
        s = start[m["seed"]]
        return m["psnr"] - s["psnr"], m["lpips"] - s["lpips"]

    for arm in [a.name for a in ARMS] + ["reference"]:
        colour = COLOURS[arm]
        label_done = False
        member_means = []
        for model in model_order(models, arm):
            if model == "bicubic" or (delta and model == "pretrained"):
                continue
            pts = [xy(p) for p in by_model(models, arm, model)]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            marker, size = {"fused": ("*", 180), "pretrained": ("X", 70)}.get(model, ("o", 40))
            ax.scatter(xs, ys, marker=marker, s=size * 0.45, color=colour, alpha=0.3, linewidths=0)
            (mx, sx), (my, sy) = mean_std(xs), mean_std(ys)
            lab = None
            if arm == "reference":
                lab = "pretrained start (L1)"
            elif not label_done:
                lab, label_done = ARM_BY_NAME[arm].label, True
            ax.errorbar([mx], [my], xerr=[sx], yerr=[sy], fmt="none", ecolor=colour, elinewidth=0.8, alpha=0.6)
            ax.scatter([mx], [my], marker=marker, s=size, color=colour, edgecolors="black", linewidths=0.5,
                       label=lab, zorder=3)
            if model.startswith("member_"):
                member_means.append((mx, my))
        if len(member_means) > 1:
            ax.plot([p[0] for p in member_means], [p[1] for p in member_means], "-", color=colour, lw=1.0, zorder=2)
    if delta:
        ax.axhline(0.0, color="0.5", lw=0.6)
        ax.axvline(0.0, color="0.5", lw=0.6)
    ax.grid(True, alpha=0.3)


def plot_png(data: Mapping[str, Any], title: str) -> bytes:
    """All arms in one figure, PSNR-Y (x, higher is better) vs LPIPS-alex (y, lower is better). Left: absolute
    values with the shared hypervolume reference (+); right: each model relative to its seed's pretrained start,
    which removes the seed-to-seed offset of the start. Bicubic is far off (noted in the left title)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = data["models"]
    fig = Figure(figsize=(13.0, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_abs, ax_rel = fig.subplots(1, 2)
    _draw_arms(ax_abs, models, delta=False)
    ref = data["ref"]
    ax_abs.scatter([-ref[0]], [ref[1]], marker="+", s=90, color="black", label="hypervolume reference")
    bic = [m for m in models if m["model"] == "bicubic"]
    note = (f" (bicubic, off the plot: {np.mean([m['psnr'] for m in bic]):.2f} dB, "
            f"{np.mean([m['lpips'] for m in bic]):.3f})" if bic else "")
    ax_abs.set_title("absolute" + note, fontsize=9)
    ax_abs.set_xlabel("PSNR-Y (dB) ↑")
    ax_abs.set_ylabel("LPIPS-alex ↓")
    ax_abs.legend(fontsize=8, loc="best")
    _draw_arms(ax_rel, models, delta=True)
    ax_rel.set_title("relative to each seed's pretrained start (means ± std over seeds)", fontsize=9)
    ax_rel.set_xlabel("Δ PSNR-Y (dB) ↑")
    ax_rel.set_ylabel("Δ LPIPS-alex ↓")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
