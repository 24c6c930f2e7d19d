"""Result tables and plots with metrics as data (easlurm.report)."""
from __future__ import annotations

import copy
import csv
import io
import pickle

import numpy as np
import pytest

from easlurm.report import ResultRow, front_mask, metric_names, pareto_png, results_csv, results_markdown


def _rows() -> list[ResultRow]:
    m = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
    return [
        ResultRow("Set5", "bicubic", None, {**m, "psnr": 28.4, "ssim": 0.81, "lpips": 0.34}, 5, baseline=True),
        ResultRow("Set5", "member_0", (1.0, 0.0), {**m, "psnr": 32.1, "ssim": 0.89, "lpips": 0.17}, 5),
        ResultRow("Set5", "member_1", (0.5, 0.5), {**m, "psnr": 31.0, "ssim": 0.87, "lpips": 0.09}, 5),
        ResultRow("Set5", "member_2", (0.0, 1.0), {**m, "psnr": 30.2, "ssim": 0.88, "lpips": 0.10}, 5),
        ResultRow("Set5", "fused", None, {**m, "psnr": 31.5, "ssim": 0.88, "lpips": 0.08}, 5),
    ]


def test_rows_hold_metrics_as_data_with_attribute_shorthand() -> None:
    r = _rows()[1]
    assert r.psnr == r.metrics["psnr"] == 32.1 and r.is_member and not r.baseline
    with pytest.raises(AttributeError, match=r"no attribute or metric 'dists' \(metrics: psnr, ssim, lpips\)"):
        r.dists  # noqa: B018
    assert copy.deepcopy(r) == r and pickle.loads(pickle.dumps(r)) == r
    assert metric_names(_rows()) == ["psnr", "ssim", "lpips"]


def test_csv_columns_follow_the_metrics_in_order() -> None:
    rows = _rows()
    rows.append(ResultRow("Set14", "member_0", (1.0, 0.0), {"psnr": 28.0, "dists": 0.125}, 14))
    parsed = list(csv.DictReader(io.StringIO(results_csv(rows))))
    assert list(parsed[0]) == ["set", "model", "preference", "psnr", "ssim", "lpips", "dists", "n_images"]
    assert parsed[1]["psnr"] == "32.1000" and parsed[1]["lpips"] == "0.170000" and parsed[1]["dists"] == ""
    assert parsed[-1]["ssim"] == "" and parsed[-1]["dists"] == "0.125000" and parsed[0]["preference"] == ""


def test_front_uses_each_metrics_direction() -> None:
    rows = _rows()
    # PSNR up, LPIPS down: member_2 (30.2, 0.10) is dominated by member_1 (31.0, 0.09); bicubic and fused never count.
    assert front_mask(rows).tolist() == [False, True, True, False, False]
    # PSNR up, SSIM up: member_0 (32.1, 0.89) dominates the other two.
    assert front_mask(rows, ("psnr", "ssim")).tolist() == [False, True, False, False, False]
    # LPIPS down, SSIM up: each member is best somewhere or trades one for the other.
    assert front_mask(rows, ("lpips", "ssim")).tolist() == [False, True, True, True, False]


def test_markdown_has_a_column_per_metric_and_marks_the_front() -> None:
    md = results_markdown(_rows(), title="T", scale=4)
    assert "| model | preference (w_dist:w_perc) | PSNR-Y (dB) ↑ | SSIM-Y ↑ | LPIPS-alex ↓ |" in md
    assert "| bicubic | — | 28.40 | 0.8100 | 0.3400 |" in md
    assert "| member_1 ★ | 0.5:0.5 |" in md and "| member_2 | 0:1 |" in md
    assert md.rstrip().endswith("★ on the members' Pareto front (PSNR-Y vs LPIPS-alex).")


def test_plot_frames_the_models_and_names_a_far_baseline() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from easlurm.report import _zoom_on_models

    rows = _rows()
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs, ys = [r.psnr for r in rows], [r.lpips for r in rows]
    inside = _zoom_on_models(ax, rows, xs, ys)
    assert inside == [False, True, True, True, True]
    lo, hi = ax.get_xlim()
    assert lo < 30.2 and hi > 32.1 and lo > 28.4
    png = pareto_png(rows)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and pareto_png(rows) == png  # deterministic bytes
    one_metric = [ResultRow(r.set, r.model, r.preference, {"psnr": r.psnr}, 5, r.baseline) for r in rows]
    assert pareto_png(one_metric)[:4] == b"\x89PNG"
    assert np.array_equal(front_mask(one_metric), [False, True, False, False, False])
