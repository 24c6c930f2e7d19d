"""What bench/paper_claim.py concludes from the runs' results: hypervolumes, tables, the Markdown report.

Input: the arms' ``results.csv`` rows and the pretrained starts' rows (:mod:`_claim_run`). The first test set is the
one compared. Hypervolume lives in the (−PSNR, LPIPS) plane (both minimised) with one reference point shared by all
arms and seeds (:func:`shared_reference`).
"""
from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _claim_arms import ARM_BY_NAME, ARMS, BenchError
from _claim_plot import by_model, mean_std, model_order, plot_png
from _claim_run import ArmResult, PretrainResult

from easlurm.store import atomic_write_bytes, atomic_write_text

__all__ = ["HV_MARGIN", "to_min_plane", "shared_reference", "front_hypervolume", "collect", "models_csv",
           "summary_csv", "outcome_lines", "results_markdown", "write_results"]

#: The shared hypervolume reference point lies this fraction of each objective's span beyond the worst model.
HV_MARGIN = 0.1
_METRICS = ("psnr", "ssim", "lpips")


def to_min_plane(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """(PSNR dB, LPIPS) pairs → n×2 array of (−PSNR, LPIPS): both objectives minimised."""
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.stack([-arr[:, 0], arr[:, 1]], axis=1)


def shared_reference(points: Sequence[tuple[float, float]], margin: float = HV_MARGIN) -> tuple[float, float]:
    """Reference point in the (−PSNR, LPIPS) plane for (PSNR, LPIPS) ``points`` (every model of every arm and seed):
    the worst value of each objective plus ``margin`` × that objective's span (1e-6 when all values are equal)."""
    F = to_min_plane(points)
    if F.shape[0] == 0:
        raise BenchError("shared_reference: no points")
    if not np.all(np.isfinite(F)):
        raise BenchError("shared_reference: non-finite PSNR or LPIPS among the points")
    worst, span = F.max(axis=0), F.max(axis=0) - F.min(axis=0)
    span = np.where(span > 0, span, 1e-6)
    ref = worst + margin * span
    return float(ref[0]), float(ref[1])


def front_hypervolume(points: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area (dB × LPIPS) of the (−PSNR, LPIPS) plane dominated by ``points`` (PSNR, LPIPS) and bounded by ``ref``
    (a (−PSNR, LPIPS) pair); dominated points and points not strictly better than ``ref`` add nothing."""
    from easlurm.evo.pareto import hypervolume

    return hypervolume(to_min_plane(points), ref)


def _model(seed: int, arm: str, row: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in _METRICS if k not in row]
    if missing:
        raise BenchError(f"seed {seed} {arm} {row['model']}: results lack {', '.join(missing)} (eval.metrics must "
                         f"include psnr, ssim and lpips)")
    return {"seed": seed, "arm": arm, "model": row["model"], "preference": row.get("preference") or "",
            **{k: float(row[k]) for k in _METRICS}}


def collect(pretrains: Sequence[PretrainResult], results: Sequence[ArmResult]) -> dict[str, Any]:
    """Long table of every model on the first test set, the shared reference point and hypervolumes per (seed, arm).

    Reference rows: each seed's pretrained start, and bicubic ONCE — every run's ``results.csv`` has a bicubic row,
    and they must all agree (same test set, same degradation), else :class:`BenchError` names the runs.
    """
    if not results or not results[0].rows:
        raise BenchError("no evaluation rows")
    set_name = str(results[0].rows[0]["set"])
    models: list[dict[str, Any]] = []
    bicubic: dict[tuple[float, ...], list[str]] = {}
    for r in results:
        for row in r.rows:
            if row["set"] != set_name:
                continue
            if row["model"] == "bicubic":
                bicubic.setdefault(tuple(float(row[k]) for k in _METRICS), []).append(str(r.run_dir))
                continue
            models.append(_model(r.seed, r.arm.name, row))
    if len(bicubic) > 1:
        raise BenchError(f"bicubic rows on set {set_name} differ between runs (not the same test set?): "
                         + "; ".join(f"{v} in {', '.join(runs)}" for v, runs in bicubic.items()))
    for p in pretrains:
        models.extend(_model(p.seed, "reference", row) for row in p.rows if row["set"] == set_name)
    if bicubic:
        first = next(r for r in results for row in r.rows if row["model"] == "bicubic" and row["set"] == set_name)
        row = next(row for row in first.rows if row["model"] == "bicubic" and row["set"] == set_name)
        models.append(_model(min(p.seed for p in pretrains) if pretrains else first.seed, "reference", row))
    arm_pts = [(m["psnr"], m["lpips"]) for m in models if m["arm"] != "reference"]
    ref = shared_reference(arm_pts)
    hv: list[dict[str, Any]] = []
    for r in results:
        mine = [m for m in models if m["seed"] == r.seed and m["arm"] == r.arm.name]
        members = [(m["psnr"], m["lpips"]) for m in mine if m["model"].startswith("member_")]
        everything = [(m["psnr"], m["lpips"]) for m in mine]
        hv.append({"seed": r.seed, "arm": r.arm.name, "hv_members": front_hypervolume(members, ref),
                   "hv_with_fused": front_hypervolume(everything, ref), "planned_updates": r.planned,
                   "recorded_updates": r.recorded, "seconds": r.seconds, "ea": r.ea_stats})
    return {"set": set_name, "models": models, "ref": ref, "hv": hv}


def models_csv(data: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["set", "seed", "arm", "model", "preference", "psnr", "ssim", "lpips"])
    for m in data["models"]:
        w.writerow([data["set"], m["seed"], m["arm"], m["model"], m["preference"], f"{m['psnr']:.4f}",
                    f"{m['ssim']:.6f}", f"{m['lpips']:.6f}"])
    return buf.getvalue()


def summary_csv(data: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["seed", "arm", "hv_members", "hv_with_fused", "ref_neg_psnr", "ref_lpips", "planned_updates",
                "recorded_updates", "ea_children", "seconds"])
    for h in data["hv"]:
        w.writerow([h["seed"], h["arm"], f"{h['hv_members']:.6g}", f"{h['hv_with_fused']:.6g}",
                    f"{data['ref'][0]:.4f}", f"{data['ref'][1]:.6f}", h["planned_updates"], h["recorded_updates"],
                    sum(h["ea"].get("children", [])), f"{h['seconds']:.1f}"])
    return buf.getvalue()


def _pm(values: Sequence[float], digits: int) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def _hv(value: float) -> str:
    """A hypervolume in units of 10⁻³ dB·LPIPS (the areas at this scale are small)."""
    return f"{value * 1e3:.4g}"


def _hv_pm(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    return f"{_hv(m)} ± {_hv(s)}" if len(values) > 1 else _hv(m)


def _paired(hv: Sequence[Mapping[str, Any]], arm: str, base: str, key: str) -> list[float]:
    a = {h["seed"]: h[key] for h in hv if h["arm"] == arm}
    b = {h["seed"]: h[key] for h in hv if h["arm"] == base}
    return [a[s] - b[s] for s in sorted(a) if s in b]


def _fused_vs(models: Sequence[Mapping[str, Any]], arm: str, other: str) -> tuple[int, int, int]:
    """Seeds where ``arm``'s fused model dominates (higher PSNR and lower LPIPS) ``other``'s, is dominated, total."""
    mine = {m["seed"]: m for m in models if m["arm"] == arm and m["model"] == "fused"}
    theirs = {m["seed"]: m for m in models if m["arm"] == other and m["model"] == "fused"}
    wins = losses = 0
    for s in sorted(mine):
        if s not in theirs:
            continue
        a, b = mine[s], theirs[s]
        if a["psnr"] > b["psnr"] and a["lpips"] < b["lpips"]:
            wins += 1
        elif b["psnr"] > a["psnr"] and b["lpips"] < a["lpips"]:
            losses += 1
    return wins, losses, len([s for s in mine if s in theirs])


def _paired_line(hv: Sequence[Mapping[str, Any]], arm: str, base: str, key: str, what: str) -> str | None:
    d = _paired(hv, arm, base, key)
    if not d:
        return None
    m, s = mean_std(d)
    pos = sum(1 for v in d if v > 0)
    spread = (f" ± {_hv(s)}; the mean is {'within' if abs(m) <= s else 'larger than'} one std of the paired "
              f"differences" if len(d) > 1 else "")
    return (f"- {ARM_BY_NAME[arm].label} − {ARM_BY_NAME[base].label}, {what} hypervolume, paired per seed: "
            f"{'+' if m >= 0 else '−'}{_hv(abs(m))}{spread} ({pos}/{len(d)} seeds positive).")


def outcome_lines(data: Mapping[str, Any]) -> list[str]:
    """Data-driven statements about who wins (hypervolume, paired per seed; fused vs fused)."""
    hv, models = data["hv"], data["models"]
    seeds = sorted({h["seed"] for h in hv})
    lines = []
    means = {a.name: mean_std([h["hv_members"] for h in hv if h["arm"] == a.name])[0] for a in ARMS}
    best = max(means, key=lambda k: means[k])
    lines.append(f"- Largest mean members hypervolume (10⁻³ dB·LPIPS): **{ARM_BY_NAME[best].label}** "
                 f"({_hv(means[best])}); "
                 + ", ".join(f"{ARM_BY_NAME[k].label} {_hv(v)}" for k, v in means.items() if k != best) + ".")
    pairs = [("ea_moead", "adam_only"), ("ea_nsga2", "adam_only"), ("adam_only", "weighted_sum")]
    for arm, base in pairs:
        for key, what in (("hv_members", "members"), ("hv_with_fused", "members + fused")):
            line = _paired_line(hv, arm, base, key, what)
            if line:
                lines.append(line)
    for arm in ("ea_moead", "ea_nsga2"):
        for other in ("adam_only", "weighted_sum"):
            w, lo, n = _fused_vs(models, arm, other)
            lines.append(f"- {ARM_BY_NAME[arm].label} fused model vs {ARM_BY_NAME[other].label}'s fused model: "
                         f"better LPIPS at higher PSNR in {w}/{n} seeds, worse on both in {lo}/{n}, a trade-off in "
                         f"{n - w - lo}/{n}.")
    spans, ends = [], []
    for arm in [a.name for a in ARMS]:
        for s in seeds:
            mem = sorted((m for m in models if m["arm"] == arm and m["seed"] == s and m["model"].startswith("member_")),
                         key=lambda m: int(m["model"].split("_")[1]))
            if len(mem) > 1:
                spans.append((max(m["psnr"] for m in mem) - min(m["psnr"] for m in mem),
                              max(m["lpips"] for m in mem) - min(m["lpips"] for m in mem)))
                ends.append((mem[-1]["psnr"] - mem[0]["psnr"], mem[-1]["lpips"] - mem[0]["lpips"]))
    if spans:
        lines.append(f"- Population spread (max − min over members, mean over arms and seeds): "
                     f"{np.mean([x[0] for x in spans]):.3f} dB PSNR, {np.mean([x[1] for x in spans]):.4f} LPIPS.")
        lower = sum(1 for e in ends if e[1] < 0)
        lines.append(f"- Preference effect, perception end (last slot, w_perc = 1) minus distortion end (slot 0, "
                     f"w_dist = 1), mean over arms and seeds: {np.mean([e[0] for e in ends]):+.3f} dB PSNR, "
                     f"{np.mean([e[1] for e in ends]):+.4f} LPIPS; the perception end has the lower LPIPS in "
                     f"{lower}/{len(ends)} populations.")
    pre = [m for m in models if m["model"] == "pretrained"]
    if pre:
        lines.append(f"- Pretrained start (L1): {np.mean([m['psnr'] for m in pre]):.3f} dB, LPIPS "
                     f"{np.mean([m['lpips'] for m in pre]):.4f} (mean over seeds).")
    for arm in (a.name for a in ARMS if a.evolves):
        stats = [h["ea"] for h in hv if h["arm"] == arm and h["ea"].get("children")]
        if stats:
            acc = np.mean([np.mean(st["accepted"]) for st in stats])
            made = np.mean([np.mean(st["children"]) for st in stats])
            gain = np.mean([np.mean([(b - a) / a if a > 0 else 0.0 for a, b in zip(st["hv_initial"], st["hv_final"])])
                            for st in stats])
            lines.append(f"- {ARM_BY_NAME[arm].label}: {acc:.1f} of {made:.0f} children accepted into the "
                         f"population per EA phase on average; an EA phase changed the hypervolume of the training "
                         f"objectives (mean L1, mean perceptual loss on the fitness tiles) by {100 * gain:+.2f} % on "
                         f"average.")
    dup = {a.name: [h["ea"].get("final_duplicates", 0) for h in hv if h["arm"] == a.name] for a in ARMS}
    if any(any(v) for v in dup.values()):
        lines.append("- Final populations holding the same genome in two or more slots (duplicate slots per seed): "
                     + "; ".join(f"{ARM_BY_NAME[a].label} {', '.join(map(str, v))}" for a, v in dup.items() if any(v))
                     + ".")
    return lines


WHAT = {
    "ea_moead": "EA-Adam, MOEA/D selection (reference)",
    "ea_nsga2": "EA-Adam, NSGA-II selection",
    "adam_only": "same population and Adam phases, `ea.selection: identity` (every EA phase passes the population "
                 "through)",
    "weighted_sum": "same as Adam only, but each member follows the gradient of its raw weighted loss "
                    "(`adam.mix: weighted_sum`)",
}

FAIRNESS = [
    "- **Same start, same data, same budget.** Every arm of a seed loads that seed's pretrained generator "
    "(`model.pretrained` → the pretraining run's `pretrain/G.pt`), shares `run.seed` (discriminator initialisation "
    "and the per-(cycle, slot) data streams) and makes the same number of generator updates, read back from every "
    "trained member's record. The arms' configs differ only in `ea.selection` and `adam.mix`.",
    "- **Adam only = `ea.selection: identity`.** The EA job still runs (it measures the population on the fitness "
    "tiles and writes the next cycle's start population), but creates no child: every slot carries its own "
    "generator, with the same generator-moment reset (`ea.reset_adam`) as after a real EA phase. "
    "`ea.p_crossover = ea.p_mutation = 0` would not switch the EA off: \"copy\" children would still go through "
    "MOEA/D selection and replace neighbours. So the EA operators and selection are the only difference from the "
    "EA-Adam arms.",
    "- **ESRGAN-style = `adam.mix: weighted_sum` with `ea.selection: identity`.** Each member of the same population "
    "follows ∇(w_dist·L1 + w_perc·(perceptual + 0.005·GAN)), ESRGAN's raw weighted loss with the member's "
    "preference as the L1 : perceptual ratio, instead of EA-Adam's per-tensor normalised mix. This compares the "
    "mix at equal updates per model and per arm. It is not one ESRGAN model given the whole budget: easlurm's "
    "preferences are uniform on the simplex, so no member has ESRGAN's exact 0.01 : 1 ratio, and a population "
    "has at least two members (see bench/paper_claim.py).",
    "- **Fusion is part of the EA-Adam method** and is given to every arm alike; it trains attention branches only "
    "and is not counted as generator updates.",
    "- **Reference point**: shared by all arms and seeds (see above) so hypervolumes are comparable; it is "
    "data-derived (the worst model of any arm), so absolute values shift if arms change; rankings do not depend on "
    "the margin as long as every model lies inside.",
    "- **Scale**: a 2-block, 16-feature SRResNet, 32 px patches, a few hundred updates per member and 3 test images "
    "— orders of magnitude below the paper (16 blocks, 128 px, 22 × 13k iterations, VGG19). The benchmark tests "
    "the *mechanism* at a scale that runs on 2 CPU cores, not the paper's numbers.",
]


def results_markdown(data: Mapping[str, Any], meta: Mapping[str, Any], notes: str | None) -> str:
    hv, models = data["hv"], data["models"]
    seeds = sorted({h["seed"] for h in hv})
    quick = meta["quick"]
    L: list[str] = [f"# Does EA-Adam beat Adam? (paper-claim benchmark){' — QUICK SMOKE RUN' if quick else ''}", ""]
    if quick:
        L += ["> **Smoke run (`--quick`)**: a handful of iterations to check the pipeline. These numbers say "
              "nothing about EA-Adam; the real result comes from `python bench/paper_claim.py`.", ""]
    L += [f"Command: `{meta['command']}`  ", f"Config: `{meta['config']}`; seeds {', '.join(map(str, seeds))}; "
          f"test set `{data['set']}` (held-out demo photos; ×{meta['scale']}).  ",
          f"Machine: {meta['machine']}; {meta['max_parallel']} process(es) at a time, OMP_NUM_THREADS="
          f"{meta['omp']}; torch {meta['torch']}; perceptual net {meta['perceptual_net']}.  ",
          f"Wall time: {meta['wall_s'] / 60:.1f} min (summed over the invocations that did work; {meta['date']}).",
          ""]
    L += ["## Setup", "",
          f"Backbone: MSRResNet ({meta['num_feat']} features, {meta['num_block']} blocks), L1-pretrained once per "
          f"seed ({meta['pretrain_iters']} iterations); population of {meta['population']} (preferences w_dist = "
          f"{meta['prefs']}), {meta['cycles']} cycle(s) of Adam phase + {meta['generations']} EA generations, "
          f"Adam phases of {meta['phases']} iterations, fusion {meta['fusion_iters']} iterations (attention only), "
          f"batch {meta['batch']} of {meta['patch']} px patches, Adam lr {meta['lr']}.", "",
          "| arm | what | generator updates per seed (planned → recorded) | EA children per seed |",
          "|---|---|---|---|"]
    for a in ARMS:
        mine = [h for h in hv if h["arm"] == a.name]
        counts = ", ".join(f"{h['planned_updates']} → {h['recorded_updates']}" for h in mine)
        children = ", ".join(str(sum(h["ea"].get("children", []))) for h in mine)
        L.append(f"| {a.label} | {WHAT[a.name]} | {counts} | {children} |")
    equal = meta["updates_equal"]
    L += ["", f"Generator updates are **{'equal' if equal else 'NOT EQUAL'}** across arms in every seed.", ""]
    L += ["## Hypervolume of each arm's front in the (−PSNR, LPIPS) plane", "",
          f"One reference point for all arms and seeds: (−PSNR, LPIPS) = ({data['ref'][0]:.4f} dB, "
          f"{data['ref'][1]:.5f}), i.e. PSNR {-data['ref'][0]:.3f} dB — the worst PSNR and worst LPIPS over every "
          f"arm's models, pushed out by {int(HV_MARGIN * 100)} % of each span. Units: 10⁻³ dB·LPIPS; higher is "
          f"better.", "", "| arm | HV members (mean ± std) | HV members + fused | per seed (members) |",
          "|---|---:|---:|---|"]
    for a in ARMS:
        mine = [h for h in hv if h["arm"] == a.name]
        L.append(f"| {a.label} | {_hv_pm([h['hv_members'] for h in mine])} | "
                 f"{_hv_pm([h['hv_with_fused'] for h in mine])} | "
                 f"{', '.join(_hv(h['hv_members']) for h in mine)} |")
    L += ["", "## Every model (mean ± std over seeds)", "",
          "| arm | model | preference | PSNR-Y (dB) ↑ | SSIM-Y ↑ | LPIPS-alex ↓ |", "|---|---|---|---:|---:|---:|"]
    for arm in [a.name for a in ARMS] + ["reference"]:
        for model in model_order(models, arm):
            pts = by_model(models, arm, model)
            label = ARM_BY_NAME[arm].label if arm in ARM_BY_NAME else "reference"
            L.append(f"| {label} | {model} | {pts[0]['preference'] or '—'} | {_pm([p['psnr'] for p in pts], 3)} | "
                     f"{_pm([p['ssim'] for p in pts], 4)} | {_pm([p['lpips'] for p in pts], 4)} |")
    L += ["", "## Outcome", "", *outcome_lines(data)]
    if notes:
        L += ["", "## Discussion", "", notes.strip()]
    L += ["", "## Choices that make the comparison fair", "", *FAIRNESS, ""]
    L += [f"Files: `{meta['stem']}.csv` (every model and seed), `{meta['stem']}_summary.csv` (hypervolumes, update "
          f"counts, EA children, wall time per arm and seed), `{meta['stem']}.png` (all arms).", ""]
    return "\n".join(L)


def write_results(pretrains: Sequence[PretrainResult], results: Sequence[ArmResult], out: Path, stem: str,
                  meta: dict[str, Any], notes: str | None = None) -> dict[str, Any]:
    """Aggregate and write ``<out>/<stem>.md``, ``.csv``, ``_summary.csv`` and ``.png``; return the aggregate
    (with ``updates_equal``: every seed's arms planned and recorded one and the same count)."""
    data = collect(pretrains, results)
    equal = all(len({r.recorded for r in results if r.seed == s} | {r.planned for r in results if r.seed == s}) == 1
                for s in sorted({r.seed for r in results}))
    meta = {**meta, "updates_equal": equal, "stem": stem}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.csv", models_csv(data))
    atomic_write_text(out / f"{stem}_summary.csv", summary_csv(data))
    title = (f"EA-Adam vs Adam only vs weighted-sum losses on the demo val set ({len(data['hv']) // len(ARMS)} "
             f"seed(s))" + (" — QUICK SMOKE RUN" if meta["quick"] else ""))
    atomic_write_bytes(out / f"{stem}.png", plot_png(data, title))
    atomic_write_text(out / f"{stem}.md", results_markdown(data, meta, notes))
    data["updates_equal"] = equal
    return data
