"""Section 2 of bench/gpu_check.py: HDF5 shard samples/s through the trainer's loader (``easlurm.engine.data``),
next to what the bf16 RRDB member step of section 1 consumes."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from _gpu_common import note_failure
from _gpu_ctx import Ctx


def section_loader(ctx: Ctx, record: dict[str, Any]) -> None:
    from easlurm.data.shards import load_manifest
    from easlurm.engine.data import batches

    cfg = ctx.cfg("rrdb")
    train = Path(cfg.data.train)
    man = load_manifest(train)
    record["data"] = {"images": len(man["entries"]), "bytes": man["counts"]["bytes"],
                      "hr_shapes": [e.get("hr_shape") for e in man["entries"]]}
    batch, patch = cfg.adam.batch_size, cfg.data.patch_size
    record.update(batch=batch, patch=patch, config_workers=cfg.data.num_workers)
    workers = [cfg.data.num_workers] + [w for w in ((0,) if ctx.smoke else (0, 8))
                                        if w != cfg.data.num_workers]
    window = 1.5 if ctx.smoke else 4.0
    rows = record["rows"] = []
    for nw in workers:
        try:
            t0 = time.perf_counter()
            it = batches(train, cfg, batch, seed=1234, start_index=0, total=10**7, num_workers=nw)
            next(it)
            startup = time.perf_counter() - t0
            n, t1 = 0, time.perf_counter()
            while time.perf_counter() - t1 < window:
                lr, hr = next(it)
                n += lr.shape[0]
            secs = time.perf_counter() - t1
            del it
            rows.append({"workers": nw, "samples": n, "seconds": secs, "samples_per_s": n / secs,
                         "first_batch_s": startup})
            print(f"[gpu_check] loader, {nw} workers: {n / secs:.0f} samples/s", flush=True)
        except Exception as exc:  # noqa: BLE001
            note_failure(record, f"{nw} workers", exc)
        ctx.results.put("loader", record)
    consumer = ctx.shared.get("member_rows", {}).get("RRDB bf16")
    if consumer:
        need = consumer["samples_per_s"]
        record["consumer"] = {"label": "RRDB bf16 MemberStep", "samples_per_s": need}
        for r in rows:
            r["ratio_to_consumer"] = r["samples_per_s"] / need
