"""Section 7 of bench/gpu_check.py: k members on one GPU (issue 17, step C) — the gate and the two forms.

* **Grouped-convolution gate**: the RDB convolutions of RRDBNet 64×23 (3×3, 64 + 32·j → 32 channels, j = 0..3, and
  the 5th, 192 → 64) on a member batch (16 × 32² LR), forward + both backward convolutions, as k = 5 separate
  convolutions and as one grouped convolution (groups = k). On CUDA both are also captured in a CUDA graph and
  replayed (what a captured step would launch); the population-batched step pays only where grouped is faster.
* **k members per GPU**: k = 4 RRDB members (the config's batch and patch), one iteration each in turn
  (``adam.members_per_task``, :class:`easlurm.train.member.MemberStep`) against one
  :class:`easlurm.train.population_step.PopulationStep` call; ms per member iteration and peak memory.

Times are medians of synchronised calls; the section says which form was faster, and nothing is switched on by it.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable

import torch
import torch.nn.functional as F

from _common import peak_gib, reset_peak
from _gpu_ctx import Ctx


def _median_s(ctx: Ctx, fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm-up (cuDNN picks its algorithms, allocator fills)
    return statistics.median(ctx.timed(fn) for _ in range(reps))


def _graphed(fn: Callable[[], Any]) -> Callable[[], Any] | None:
    """``fn`` captured in a CUDA graph (warmed up on a side stream first), as a replay function; None off CUDA."""
    if not torch.cuda.is_available():
        return None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _gate_row(ctx: Ctx, k: int, cin: int, cout: int, batch: int, side: int, reps: int) -> dict[str, Any]:
    dev = ctx.device
    gen = torch.Generator(device="cpu").manual_seed(cin)
    xs = [torch.randn(batch, cin, side, side, generator=gen).to(dev).requires_grad_() for _ in range(k)]
    ws = [(0.05 * torch.randn(cout, cin, 3, 3, generator=gen)).to(dev).requires_grad_() for _ in range(k)]
    gys = [torch.randn(batch, cout, side, side, generator=gen).to(dev) for _ in range(k)]
    xg = torch.cat([x.detach() for x in xs], 1).requires_grad_()       # B × (k·cin) × h × w
    wg = torch.cat([w.detach() for w in ws], 0).requires_grad_()       # (k·cout) × cin × 3 × 3
    gyg = torch.cat(gys, 1)

    def separate() -> None:
        for x, w, gy in zip(xs, ws, gys):
            y = F.conv2d(x, w, padding=1)
            torch.autograd.grad(y, (x, w), gy)

    def grouped() -> None:
        y = F.conv2d(xg, wg, padding=1, groups=k)
        torch.autograd.grad(y, (xg, wg), gyg)

    row: dict[str, Any] = {"cin": cin, "cout": cout, "batch": batch, "side": side, "k": k,
                           "separate_ms": 1e3 * _median_s(ctx, separate, reps),
                           "grouped_ms": 1e3 * _median_s(ctx, grouped, reps)}
    row["ratio_separate_to_grouped"] = row["separate_ms"] / row["grouped_ms"]
    try:
        gs, gg = _graphed(separate), _graphed(grouped)
        if gs is not None and gg is not None:
            row["graph_separate_ms"] = 1e3 * _median_s(ctx, gs, reps)
            row["graph_grouped_ms"] = 1e3 * _median_s(ctx, gg, reps)
            row["graph_ratio_separate_to_grouped"] = row["graph_separate_ms"] / row["graph_grouped_ms"]
    except Exception as exc:  # noqa: BLE001 - the eager numbers stand; say why the graph ones are missing
        row["graph_error"] = f"{type(exc).__name__}: {exc}"
    return row


def _k_members(ctx: Ctx, k: int, reps: int) -> dict[str, Any]:
    from easlurm import factory
    from easlurm.population import preferences
    from easlurm.runtime import adam
    from easlurm.train.member import MemberStep
    from easlurm.train.population_step import PopulationStep

    dev = ctx.device
    cfg = ctx.cfg("rrdb", ("adam.bf16=false",))
    perceptual = factory.build_perceptual(cfg).to(dev)
    prefs = preferences(k + 1)[1:]
    singles, members = [], []
    for i in range(k):
        torch.manual_seed(i)
        g, d = factory.build_generator(cfg).to(dev).train(), factory.build_discriminator(cfg).to(dev).train()
        opt_g = adam(g.parameters(), cfg.adam.lr, cfg.adam.betas)
        opt_d = adam(d.parameters(), cfg.discriminator.lr, cfg.discriminator.betas)
        singles.append(MemberStep(cfg, g, d, perceptual, prefs[i], opt_g, opt_d, dev))
        members.append((g, d, opt_g, opt_d, prefs[i]))
    b, p, s = cfg.adam.batch_size, cfg.data.patch_size, cfg.data.scale
    gen = torch.Generator(device="cpu").manual_seed(0)
    hr = torch.rand(k, b, 3, p, p, generator=gen).to(dev)
    lr = F.avg_pool2d(hr.flatten(0, 1), s).unflatten(0, (k, b))

    def in_turn() -> None:
        for i, st in enumerate(singles):
            st(lr[i], hr[i])

    out: dict[str, Any] = {"k": k, "config": "rrdb", "batch": b, "patch": p}
    reset_peak(dev)
    out["in_turn_ms_per_member"] = 1e3 * _median_s(ctx, in_turn, reps) / k
    out["in_turn_peak_gib"] = peak_gib(dev)
    batched = PopulationStep.from_members(cfg, members, perceptual, dev)
    reset_peak(dev)
    out["batched_ms_per_member"] = 1e3 * _median_s(ctx, lambda: batched(lr, hr), reps) / k
    out["batched_peak_gib"] = peak_gib(dev)
    out["ratio_in_turn_to_batched"] = out["in_turn_ms_per_member"] / out["batched_ms_per_member"]
    return out


def section_population(ctx: Ctx, record: dict[str, Any]) -> None:
    reps = 2 if ctx.smoke else 10
    batch, side = (2, 8) if ctx.smoke else (16, 32)
    width = (8, 4) if ctx.smoke else (64, 32)  # num_feat, num_grow_ch
    shapes = [(width[0] + j * width[1], width[1]) for j in range(4)] + [(width[0] + 4 * width[1], width[0])]
    rows = record["gate"] = []
    for cin, cout in shapes:
        rows.append(_gate_row(ctx, 5, cin, cout, batch, side, reps))
    record["gate_total"] = {key: sum(r[key] for r in rows) for key in ("separate_ms", "grouped_ms")}
    record["gate_total"]["ratio"] = record["gate_total"]["separate_ms"] / record["gate_total"]["grouped_ms"]
    record["k_members"] = _k_members(ctx, 4, 2 if ctx.smoke else 5)
