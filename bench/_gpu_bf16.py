"""Section 10 of bench/gpu_check.py: TF32 vs bf16 in a short training run (issue 17: bf16 becomes the default only
if its losses and PSNR-Y/LPIPS stay within seed noise of TF32).

Three MSRResNet members (configs/srresnet.yaml's networks and losses, preference (½, ½) so both gradients of the
normalised mix count; the demo shards) start from the same initial G and D and train ``ITERS`` iterations each:

* TF32, data seed 0 — the reference;
* TF32, data seed 1 — the seed noise: how far a second TF32 run drifts from the first on other batches;
* bf16 autocast, data seed 0 — the candidate.

Then every member is scored on the demo val photos with the config's metrics (``easlurm.evaluate.score_entries``).
Per quantity (the mean of each loss term over the last quarter of the iterations, PSNR-Y, LPIPS…), bf16 is
"within seed noise" when |bf16 − TF32₀| ≤ |TF32₁ − TF32₀| (one seed pair: a coarse noise estimate; the section says
so rather than decide on a closer call). The section records, it switches nothing.

Its budget is spent only when asked: it runs last, after the sections whose numbers issue 17 needs first, so a
separate call does it: ``bash bench/gpu_check.sh --only device,bf16``.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from _gpu_common import tf32

#: Iterations per arm on a GPU (MSRResNet: ~30 it/s eager on an H200, so about 30 s per arm).
ITERS = 800


def _arm(ctx: Any, cfg: Any, bf16: bool, data_seed: int, iters: int, perceptual: torch.nn.Module) -> dict[str, Any]:
    from easlurm.engine.data import batches
    from easlurm.evaluate import ModelEntry
    from easlurm.train.member import build_member

    dev = ctx.device
    cfg = dataclasses.replace(cfg, adam=dataclasses.replace(cfg.adam, bf16=bf16))
    torch.manual_seed(0)  # the same initial networks in every arm
    tr = build_member(cfg, (0.5, 0.5), dev, "bf16 check", perceptual)
    data = batches(Path(cfg.data.train), cfg, cfg.adam.batch_size, seed=data_seed, start_index=0,
                   total=iters * cfg.adam.batch_size, num_workers=cfg.data.num_workers)
    tr.data = data
    curves: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for it in range(iters):
        scalars = tr.step(it)
        if it >= iters - max(1, iters // 4):
            for k, v in scalars.items():
                curves.setdefault(k, []).append(float(v))
    seconds = time.perf_counter() - t0
    return {"bf16": bf16, "data_seed": data_seed, "seconds": seconds,
            "last_quarter": {k: statistics.fmean(v) for k, v in curves.items()},
            "entry": ModelEntry(f"{'bf16' if bf16 else 'TF32'} seed {data_seed}", (0.5, 0.5), tr.s.g.eval())}


def section_bf16(ctx: Any, record: dict[str, Any]) -> None:
    from easlurm import factory
    from easlurm.evaluate import check_test_sets, score_entries

    cfg = ctx.cfg("srresnet", ("adam.bf16=false", "data.num_workers=2"))
    iters = 3 if ctx.smoke else ITERS
    record.update(config="srresnet", iters=iters, batch=cfg.adam.batch_size, patch=cfg.data.patch_size,
                  preference=[0.5, 0.5], metrics=list(cfg.eval.metrics))
    perceptual = factory.build_perceptual(cfg).to(ctx.device)
    arms = {}
    with tf32(True):
        for name, bf16, seed in (("TF32 seed 0", False, 0), ("TF32 seed 1", False, 1), ("bf16 seed 0", True, 0)):
            arms[name] = _arm(ctx, cfg, bf16, seed, iters, perceptual)
            record.setdefault("arm_seconds", {})[name] = arms[name]["seconds"]
            ctx.results.put("bf16", record)
    rows, _ = score_entries(cfg, [a["entry"] for a in arms.values()], check_test_sets(cfg), device=ctx.device)
    values: dict[str, dict[str, float]] = {}
    for (name, arm), row in zip(arms.items(), rows):
        values[name] = {**{f"loss/{k}": v for k, v in arm["last_quarter"].items()},
                        **{k: float(v) for k, v in row.metrics.items()}}
    record["values"] = values
    ref, noise, cand = values["TF32 seed 0"], values["TF32 seed 1"], values["bf16 seed 0"]
    verdict = {}
    for key in (k for k in ref if not k.startswith("loss/grad_norm")):  # losses and metrics, not gradient norms
        seed_gap, bf16_gap = abs(noise[key] - ref[key]), abs(cand[key] - ref[key])
        verdict[key] = {"seed_gap": seed_gap, "bf16_gap": bf16_gap, "within_seed_noise": bf16_gap <= seed_gap}
    record["verdict"] = verdict
    record["bf16_within_seed_noise"] = all(v["within_seed_noise"] for v in verdict.values())
