"""The EA phase's picture: f1 (mean L1) vs f2 (mean perceptual) of the initial and final population and all children.

Byte-stable PNG (fixed size and dpi, Agg renderer, no "Software" metadata), so a rerun writes identical bytes.
"""
from __future__ import annotations

import io

import numpy as np

from .pareto import pareto_front_mask

__all__ = ["plot_front"]


def plot_front(initial: np.ndarray, final: np.ndarray, children: np.ndarray, title: str) -> bytes:
    """PNG bytes of f1 (mean L1) vs f2 (mean perceptual): children light grey, initial population as blue circles,
    final population as red crosses labelled by slot, the final Pareto front as a red line. Byte-stable: fixed
    size and dpi, Agg renderer, no "Software" metadata."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(children):
        ax.scatter(children[:, 0], children[:, 1], s=10, color="0.82", label="children", zorder=1)
    ax.scatter(initial[:, 0], initial[:, 1], s=46, facecolors="none", edgecolors="tab:blue",
               label="initial population", zorder=2)
    ax.scatter(final[:, 0], final[:, 1], s=40, marker="x", color="tab:red", label="final population", zorder=3)
    front = final[pareto_front_mask(final)]
    front = front[np.lexsort((front[:, 1], front[:, 0]))]
    ax.plot(front[:, 0], front[:, 1], "-", color="tab:red", linewidth=1.2, label="final Pareto front", zorder=3)
    labels: dict[tuple[float, float], list[str]] = {}
    for j, (x, y) in enumerate(final):
        labels.setdefault((float(x), float(y)), []).append(str(j))  # slots sharing a genome share one label
    for (x, y), names in labels.items():
        ax.annotate(",".join(names), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8,
                    color="tab:red")
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(6))
    ax.ticklabel_format(axis="both", style="sci", scilimits=(-2, 3), useOffset=True)
    ax.set_xlabel("f1: mean L1 (lower is better)")
    ax.set_ylabel("f2: mean perceptual loss (lower is better)")
    ax.set_title(title)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
