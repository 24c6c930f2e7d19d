"""Adam-phase step benchmark: the member trainer's iteration (MemberStep) vs a bare PyTorch loop, and the whole job.

Two questions, one run:

1. Does ``easlurm.train.member.MemberStep`` — the exact object ``train_member`` calls every iteration — cost more
   than the same math written as a bare loop? The bare loop below is written independently of the package: same
   networks (built by ``easlurm.factory`` from one seed, then deep-copied so each side owns its G, D, VGG and Adam
   states), sr = G(lr), L1, VGG pre-ReLU feature L1 (through the same frozen ``VGGFeatureExtractor``), vanilla or
   relativistic GAN, two ``torch.autograd.grad`` passes, the per-tensor normalised mix, an Adam step on G and one D
   step — with no gradient-norm bookkeeping (MemberStep returns ‖g1‖, ‖g2‖ and the losses as device tensors; neither
   side syncs with the host: the training loop reads the losses at log steps only). Both sides run on
   the same fixed in-memory batches (real patches drawn once through the project's loader), interleaved in blocks
   whose order alternates every repetition, after a warm-up. Before timing, one step of each side from identical
   states must agree (Adam first moments of G and D), so the two really do the same math.
   **ratio = bare time / MemberStep time** (1 = no overhead; the target is >= 0.95).
2. What does the job around the step cost? ``train_member`` (loader, the training loop's loss watch, TensorBoard
   scalars and images, atomic checkpoints, lease, preemption handler) is run on a throw-away run directory
   (1-iteration L1 pretrain, then the init stage, as its starting point) with a first Adam phase of
   ``--job-iters`` iterations and the config's log/image/checkpoint cadence, timed per iteration, interleaved with
   the step blocks. ``MemberStep.__call__`` is wrapped (in this process only) to clock the steps inside the job
   (CUDA events on a GPU, so the wrapper adds no host sync), and so are the loader, the TensorBoard writer and the
   checkpoint serialisation and writes, to say where the rest goes. **job ratio = MemberStep alone / job per
   iteration** (steady state: after the first step; "whole" adds start-up: models, VGG weights, member init, data,
   TensorBoard writer). Each job run is
   compared with MemberStep alone in the repetitions just before and after it (same machine load).

Timing is per iteration, median and inter-quartile range over repetitions, read on two clocks: wall time and this
process's CPU time. On a shared CPU machine the wall clock also counts time spent waiting for a core, which swings
by 2× within seconds with other people's work; CPU time does not, so it is the headline there. On CUDA (a
dedicated GPU) the wall clock is the measure and every timed block is synchronised.
The FLOPs of one iteration are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products of G, D and VGG, forward and both backward passes, D step) to report achieved TFLOP/s.

    OMP_NUM_THREADS=1 python bench/adam_step.py           # CPU: tiny.yaml, num_feat 32, 4 blocks, 64 px, batch 4
    OMP_NUM_THREADS=1 python bench/adam_step.py --quick   # smoke run (prints only, unless --out)
    python bench/adam_step.py --device cuda               # GPU: rrdb.yaml (RRDB 64×23, batch 16, 128 px), fp32 + bf16
    python bench/adam_step.py --device cuda --set adam.bf16=true --reps 6
    python bench/adam_step.py --config configs/srresnet.yaml --set adam.batch_size=8

Images are NCHW RGB float in [0, 1] throughout. Only the results table is written (``--out``); the job runs in a
temporary directory that is removed afterwards.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from _machine import cpu_name  # noqa: E402  (bench/ is sys.path[0])

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easlurm import factory  # noqa: E402
from easlurm.config import Config, load_config, write_config  # noqa: E402
from easlurm.errors import ConfigError, EaslurmError  # noqa: E402
from easlurm.population import preferences  # noqa: E402
from easlurm.store import RunDir, atomic_write_text  # noqa: E402
from easlurm.train import loop as loop_mod  # noqa: E402
from easlurm.train import member as member_mod  # noqa: E402
from easlurm.train.init import init_population  # noqa: E402
from easlurm.train.member import MemberStep, train_member  # noqa: E402
from easlurm.train.pretrain import pretrain  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "adam_step.md"
CPU_CONFIG = ROOT / "configs" / "tiny.yaml"
CUDA_CONFIG = ROOT / "configs" / "rrdb.yaml"
# "Tiny-ish" on CPU: big enough that convolutions dominate, small enough for a shared 2-core machine.
CPU_SIZE = ("model.num_feat=32", "model.num_block=4", "data.patch_size=64", "adam.batch_size=4")


# ----------------------------------------------------------------------------------------------------------------
# The bare loop (independent of easlurm.train and easlurm.losses)

class BareStep:
    """One EA-Adam iteration written out plainly: G update from the normalised two-gradient mix, then one D step.

    ``lr``: N×3×h×w, ``hr``: N×3×(s·h)×(s·w), RGB float in [0, 1]. ``vgg(x)`` returns ``{layer: features}``
    (pre-ReLU, ImageNet-normalised inside); ``layer_weights`` weighs the L1 distance of each layer's features.
    """

    def __init__(self, g: nn.Module, d: nn.Module, vgg: nn.Module, layer_weights: dict[str, float], l2: bool,
                 gan: str, w: tuple[float, float], eps: float, perceptual_weight: float, gan_weight: float,
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, bf16: bool, channels_last: bool):
        self.g, self.d, self.vgg, self.layer_weights, self.l2, self.gan = g, d, vgg, layer_weights, l2, gan
        self.w_dist, self.w_perc = w
        self.eps, self.pw, self.gw = eps, perceptual_weight, gan_weight
        self.opt_g, self.opt_d = opt_g, opt_d
        self.bf16, self.channels_last = bf16, channels_last
        self.params = [p for p in g.parameters() if p.requires_grad]

    def amp(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def direction(self, g1: Sequence[torch.Tensor | None], g2: Sequence[torch.Tensor | None]
                  ) -> list[torch.Tensor | None]:
        """The per-tensor normalised mix, one tensor at a time (bench/gpu_check.py times a flat variant)."""
        out: list[torch.Tensor | None] = []
        for a, b in zip(g1, g2):
            step = None
            if a is not None:
                step = (self.w_dist / (a.norm(2) + self.eps)) * a
            if b is not None:
                t = (self.w_perc / (b.norm(2) + self.eps)) * b
                step = t if step is None else step + t
            out.append(step)
        return out

    @staticmethod
    def bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))

    def __call__(self, lr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
        with self.amp():
            sr = self.g(lr)
            srf = sr.float()
            l_dist = (srf - hr).abs().mean()
            f_sr = self.vgg(srf)
            with torch.no_grad():
                f_hr = self.vgg(hr)
            l_vgg = sum(w * ((f_sr[k] - f_hr[k]).pow(2).mean() if self.l2 else (f_sr[k] - f_hr[k]).abs().mean())
                        for k, w in self.layer_weights.items())
            fake = self.d(sr).float()
            if self.gan == "vanilla":
                l_adv = self.bce(fake, True)
            else:  # relativistic average, real logits fixed for the generator
                real = self.d(hr).float().detach()
                l_adv = 0.5 * (self.bce(real - fake.mean(), False) + self.bce(fake - real.mean(), True))
            l_perc = self.pw * l_vgg + self.gw * l_adv
        n = len(self.params)
        g1 = (torch.autograd.grad(l_dist, self.params, retain_graph=self.w_perc != 0.0, allow_unused=True)
              if self.w_dist != 0.0 else (None,) * n)
        g2 = (torch.autograd.grad(l_perc, self.params, allow_unused=True) if self.w_perc != 0.0 else (None,) * n)
        for p, step in zip(self.params, self.direction(g1, g2)):
            p.grad = step
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)

        fake_in = sr.detach()
        with self.amp():
            real = self.d(hr).float()
            fake = self.d(fake_in).float()
            if self.gan == "vanilla":
                l_d = self.bce(real, True) + self.bce(fake, False)
            else:
                l_d = 0.5 * (self.bce(real - fake.detach().mean(), True) + self.bce(fake - real.detach().mean(), False))
        l_d.backward()
        self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)
        return fake_in


# ----------------------------------------------------------------------------------------------------------------
# Set-up

@dataclass
class Side:
    """One contestant: a callable ``(lr, hr)`` doing one iteration, and its optimizers (for the equivalence check)."""
    name: str
    step: Callable[[torch.Tensor, torch.Tensor], Any]
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    times: list[np.ndarray] = field(default_factory=list)  # per block: [wall, cpu] seconds per iteration


def make_optimizers(cfg: Config, g: nn.Module, d: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    # As _train_member builds them.
    return (torch.optim.Adam(g.parameters(), lr=cfg.adam.lr, betas=tuple(cfg.adam.betas)),
            torch.optim.Adam(d.parameters(), lr=cfg.discriminator.lr, betas=tuple(cfg.discriminator.betas)))


def build_sides(cfg: Config, device: torch.device, w: tuple[float, float]) -> tuple[Side, Side]:
    """MemberStep and BareStep over deep copies of one seeded G, D and perceptual net (identical start states)."""
    torch.manual_seed(0)
    g0, d0, perc0 = factory.build_generator(cfg), factory.build_discriminator(cfg), factory.build_perceptual(cfg)
    channels_last = device.type == "cuda" and cfg.adam.channels_last
    bf16 = device.type == "cuda" and cfg.adam.bf16
    sides = []
    for name in ("MemberStep", "bare"):
        g, d, perc = copy.deepcopy(g0).to(device).train(), copy.deepcopy(d0).to(device).train(), \
            copy.deepcopy(perc0).to(device)
        if channels_last:
            g.to(memory_format=torch.channels_last)
            d.to(memory_format=torch.channels_last)
        opt_g, opt_d = make_optimizers(cfg, g, d)
        if name == "MemberStep":
            step: Callable[..., Any] = MemberStep(cfg, g, d, perc, w, opt_g, opt_d, device)
        else:
            step = BareStep(g, d, perc.vgg, dict(perc.layer_weights), perc.criterion == "l2", cfg.loss.gan_type, w,
                            cfg.adam.norm_eps, cfg.loss.perceptual_weight, cfg.loss.gan_weight, opt_g, opt_d,
                            bf16, channels_last)
        sides.append(Side(name, step, opt_g, opt_d))
    return sides[0], sides[1]


def resolve_shards(cfg: Config, explicit: Path | None, scratch: Path) -> Path:
    """The training shard folder: ``--shards``, else the config's, else the demo photos built into ``scratch``."""
    if explicit is not None:
        return explicit
    try:
        train = factory.data_dirs(cfg)[0]
    except ConfigError:
        train = None
    if train is not None and (train / "manifest.json").is_file():
        return train
    from easlurm.data.samples import build_samples

    print(f"[bench] no shards at {train}; building the demo photos into {scratch}", flush=True)
    return build_samples(scratch / "demo", scale=cfg.data.scale)["train"]


def fixed_batches(cfg: Config, shards: Path, count: int, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    """``count`` real training batches (LR, HR), drawn once through the project's loader and kept on ``device``."""
    it = member_mod.batches(shards, cfg, cfg.adam.batch_size, seed=0, start_index=0,
                            total=count * cfg.adam.batch_size, num_workers=0)
    return [tuple(t.to(device) for t in next(it)) for _ in range(count)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: The two clocks every interval is read on: wall time, and this process's CPU time (all its threads). On a shared
#: CPU machine the wall clock also counts time spent waiting for a core; CPU time does not, and is far steadier.
CLOCKS = ("wall", "cpu")


def stamp() -> np.ndarray:
    """[wall, process CPU] seconds now."""
    return np.array([time.perf_counter(), time.process_time()])


def rel_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """‖a − b‖ / ‖b‖ over all tensors concatenated."""
    num = sum(float((x.float() - y.float()).pow(2).sum()) for x, y in zip(a, b))
    den = sum(float(y.float().pow(2).sum()) for y in b)
    return (num / max(den, 1e-30)) ** 0.5


def check_same_math(trainer: Side, bare: Side, lr: torch.Tensor, hr: torch.Tensor, tol: float) -> dict[str, float]:
    """One step of each side from identical states; their Adam first moments (∝ the update directions) must agree."""
    trainer.step(lr, hr)
    bare.step(lr, hr)
    out = {}
    for which in ("opt_g", "opt_d"):
        ot, ob = getattr(trainer, which), getattr(bare, which)
        pt = [p for grp in ot.param_groups for p in grp["params"] if p in ot.state]
        pb = [p for grp in ob.param_groups for p in grp["params"] if p in ob.state]
        if len(pt) != len(pb) or not pt:
            raise EaslurmError(f"bench: {which} updated {len(pt)} tensors in MemberStep but {len(pb)} in the bare loop")
        out[which] = rel_diff([ob.state[p]["exp_avg"] for p in pb], [ot.state[p]["exp_avg"] for p in pt])
        if not out[which] <= tol:
            raise EaslurmError(f"bench: the bare loop does not do MemberStep's math ({which} first moments differ by "
                               f"{out[which]:.2e} relative, tolerance {tol:.0e})")
    return out


def timed_block(side: Side, batches: list[tuple[torch.Tensor, ...]], iters: int, device: torch.device,
                first: int = 0) -> np.ndarray:
    """[wall, CPU] seconds per iteration over ``iters`` steps on ``batches[first]``, ``batches[first + 1]``, …"""
    sync(device)
    t0 = stamp()
    for k in range(first, first + iters):
        lr, hr = batches[k % len(batches)]
        side.step(lr, hr)
    sync(device)
    return (stamp() - t0) / iters


def count_flops(side: Side, lr: torch.Tensor, hr: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        side.step(lr, hr)
    return int(counter.get_total_flops())


def bookkeeping_cost(g: nn.Module, device: torch.device, repeats: int = 20) -> np.ndarray:
    """[wall, CPU] seconds for what MemberStep does beyond the bare loop, timed alone (fastest of ``repeats``).

    That is: the global ‖g1‖ and ‖g2‖ it returns for logging (``easlurm.train.mix.global_norm``, device tensors,
    no host read) — on gradient-shaped tensors, without the rest of the step. (The loss finiteness watch and the
    host reads at log steps belong to the training loop, not to MemberStep: see the whole-job table.)
    """
    from easlurm.train.mix import global_norm

    grads = [[torch.randn_like(p) for p in g.parameters()] for _ in range(2)]
    best = np.full(2, np.inf)
    for _ in range(repeats):
        sync(device)
        t0 = stamp()
        global_norm(grads[0])
        global_norm(grads[1])
        sync(device)
        best = np.minimum(best, stamp() - t0)
    return best


# ----------------------------------------------------------------------------------------------------------------
# The whole job

def make_job_run(root: Path, config: Path, overrides: Sequence[str], shards: Path, iters: int) -> Path:
    """A run directory whose members train ``iters`` iterations in cycle 0's Adam phase, starting from a
    1-iteration L1 pretrain (:func:`prepare_job_run` runs it and the init stage)."""
    base = load_config(config, overrides)
    cfg = load_config(config, [*overrides, "model.pretrained=null", f"data.train={shards}", "data.val=null",
                               "pretrain.iters=1", f"pretrain.batch_size={base.adam.batch_size}",
                               "pretrain.checkpoint_every=1", f"adam.iters_per_cycle={iters}",
                               f"adam.first_phase_iters={iters}"])
    write_config(cfg, root, argv=["bench/adam_step.py"])
    return root


def prepare_job_run(root: Path, device: torch.device) -> None:
    """The stages before a member's first Adam phase: the L1 pretrain and the init stage (cycle 0's start
    population)."""
    pretrain(root, device=str(device))
    init_population(root)


class JobClock:
    """Times the parts of ``train_member`` (this process only) by wrapping what it calls through its module.

    ``MemberStep.__call__`` (every step), ``batches`` (each ``next`` on the loader), the TensorBoard writer's
    methods, and ``torch_bytes`` + ``write_member`` (serialising and committing checkpoints; the training loop's
    ``rng.pt`` included). Only time after the first step has ended is booked (start-up is reported separately).

    On CUDA a step's wall time is read from CUDA events recorded around it (summed after the job), so the wrapper
    adds no host sync to the job — except one after the first step, which ends the start-up. The step's CPU time is
    always the host's.
    """

    PARTS = ("step", "loader", "tensorboard", "checkpoint")

    def __init__(self, device: torch.device):
        self.device = device
        self.starts: list[np.ndarray] = []
        self.ends: list[np.ndarray] = []
        self.booked = {k: np.zeros(2) for k in self.PARTS}
        self.events: list[tuple[Any, Any]] = []  # CUDA: (start, end) of each steady step

    def _book(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            t0 = stamp()
            try:
                return fn(*a, **k)
            finally:
                if self.ends:  # after the first step: steady state
                    self.booked[part] += stamp() - t0
        return timed

    @contextlib.contextmanager
    def installed(self) -> Any:
        saved = {name: getattr(member_mod, name) for name in ("batches", "tb_writer", "torch_bytes",
                                                               "write_member")}
        saved_loop_bytes = loop_mod.torch_bytes
        original_call = MemberStep.__call__
        clock = self
        cuda = self.device.type == "cuda"

        def step_call(step_self: MemberStep, *a: Any, **k: Any) -> Any:
            steady = bool(clock.ends)
            ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda and steady \
                else None
            t0 = stamp()
            clock.starts.append(t0)
            if ev:
                ev[0].record()
            out = original_call(step_self, *a, **k)
            if ev:
                ev[1].record()
                clock.events.append(ev)
            elif not steady:
                sync(clock.device)  # the first step ends the start-up: once, so the steady clock starts there
            t1 = stamp()
            if steady:
                clock.booked["step"] += t1 - t0  # wall part replaced by the events' time on CUDA (finish())
            clock.ends.append(t1)
            return out

        def batches(*a: Any, **k: Any) -> Any:
            inner = saved["batches"](*a, **k)
            take = clock._book("loader", lambda: next(inner))
            while True:
                try:
                    yield take()
                except StopIteration:
                    return

        def tb_writer(*a: Any, **k: Any) -> Any:
            writer = saved["tb_writer"](*a, **k)
            for name in ("add_scalar", "add_image", "flush", "close"):
                setattr(writer, name, clock._book("tensorboard", getattr(writer, name)))
            return writer

        MemberStep.__call__ = step_call  # type: ignore[method-assign]
        member_mod.batches = batches
        member_mod.tb_writer = tb_writer
        member_mod.torch_bytes = self._book("checkpoint", saved["torch_bytes"])
        member_mod.write_member = self._book("checkpoint", saved["write_member"])
        loop_mod.torch_bytes = self._book("checkpoint", saved_loop_bytes)
        try:
            yield self
        finally:
            MemberStep.__call__ = original_call  # type: ignore[method-assign]
            for name, fn in saved.items():
                setattr(member_mod, name, fn)
            loop_mod.torch_bytes = saved_loop_bytes

    def finish(self) -> None:
        """After the job (and a sync): on CUDA, the steady steps' wall time from their events."""
        if self.events:
            self.booked["step"][0] = sum(a.elapsed_time(b) for a, b in self.events) / 1e3


def run_job(run: Path, member: int, device: torch.device, iters: int) -> dict[str, np.ndarray]:
    """Train ``member`` of cycle 0 from scratch once: [wall, CPU] seconds per iteration (whole, steady, parts)
    and of start-up."""
    rd = RunDir(run)
    shutil.rmtree(rd.member(0, member), ignore_errors=True)
    shutil.rmtree(rd.tb / f"member_{member:02d}", ignore_errors=True)
    clock = JobClock(device)
    with clock.installed():
        t0 = stamp()
        meta = train_member(run, 0, member, device=str(device))
        sync(device)
        t1 = stamp()
    clock.finish()
    if meta.iteration != iters or not meta.done or len(clock.starts) != iters:
        raise EaslurmError(f"bench: the job stopped at iteration {meta.iteration} of {iters} "
                           f"({len(clock.starts)} steps seen; member {member} must be Adam-trained)")
    if iters < 2:
        raise EaslurmError("bench: --job-iters must be >= 2 (the first iteration is start-up)")
    rest = iters - 1
    out = {"whole": (t1 - t0) / iters, "steady": (t1 - clock.ends[0]) / rest, "startup": clock.starts[0] - t0}
    out.update({k: v / rest for k, v in clock.booked.items()})
    out["other"] = out["steady"] - sum(clock.booked.values()) / rest
    return out


# ----------------------------------------------------------------------------------------------------------------
# Statistics and reporting

def med_iqr(xs: Sequence[float]) -> tuple[float, float, float]:
    """(median, 25th, 75th percentile)."""
    a = np.asarray(xs, dtype=float)
    return float(np.median(a)), float(np.percentile(a, 25)), float(np.percentile(a, 75))


def pick(xs: Sequence[np.ndarray], c: int) -> list[float]:
    """Clock ``c`` (0 wall, 1 CPU) of each [wall, CPU] pair."""
    return [float(x[c]) for x in xs]


def fmt_ms(xs: Sequence[float]) -> str:
    m, q1, q3 = med_iqr(xs)
    return f"{m * 1e3:.1f} [{q1 * 1e3:.1f}–{q3 * 1e3:.1f}]"


def fmt_ratio(xs: Sequence[float]) -> str:
    m, q1, q3 = med_iqr(xs)
    return f"{m:.3f} [{q1:.3f}–{q3:.3f}]"


@dataclass
class Plan:
    reps: int
    iters: int
    warmup: int
    batches: int
    job_runs: int
    job_iters: int


def plan_for(args: argparse.Namespace, device: torch.device) -> Plan:
    # CPU: one iteration per block, so the two sides alternate every iteration (ABBA…) and the load of a shared
    # machine, which swings by 2× within seconds here, hits both alike. CUDA: a dedicated GPU, so longer
    # synchronised blocks let the bare loop keep its kernel queue full across iterations.
    if args.quick:
        base = Plan(reps=4, iters=1, warmup=1, batches=2, job_runs=1, job_iters=4)
    elif device.type == "cuda":
        base = Plan(reps=8, iters=5, warmup=3, batches=4, job_runs=2, job_iters=100)
    else:
        base = Plan(reps=40, iters=1, warmup=2, batches=4, job_runs=3, job_iters=100)
    for name in ("reps", "iters", "warmup", "batches", "job_runs", "job_iters"):
        v = getattr(args, name)
        if v is not None:
            least = {"warmup": 0, "job_runs": 0, "job_iters": 2}.get(name, 1)
            if v < least:
                raise SystemExit(f"--{name.replace('_', '-')}: must be >= {least}")
            setattr(base, name, v)
    return base


def run_variant(label: str, config: Path, overrides: list[str], device: torch.device, plan: Plan, member: int | None,
                shards_arg: Path | None, scratch: Path, loads: list[float]) -> dict[str, Any]:
    """Everything for one config: equivalence check, FLOPs, interleaved step blocks and job runs."""
    cfg = load_config(config, overrides)
    n = cfg.population.size
    m = n // 2 if member is None else member
    if not 0 <= m < n:
        raise SystemExit(f"--member {m}: the population has members 0..{n - 1}")
    w = preferences(n)[m]
    shards = resolve_shards(cfg, shards_arg, scratch)
    data = fixed_batches(cfg, shards, plan.batches, device)
    trainer, bare = build_sides(cfg, device, w)
    tol = 2e-2 if (device.type == "cuda" and cfg.adam.bf16) else 1e-3
    same = check_same_math(trainer, bare, *data[0], tol)
    for side in (trainer, bare):
        if plan.warmup:
            timed_block(side, data, plan.warmup, device)
    flops = {s.name: count_flops(s, *data[0]) for s in (trainer, bare)}
    sync(device)
    peak: dict[str, float] = {}

    job_root = scratch / f"job-{label}"
    job_root.mkdir(parents=True)
    jobs: list[dict[str, Any]] = []
    if plan.job_runs:
        make_job_run(job_root / "warm", config, overrides, shards, max(2, min(plan.job_iters, 3)))
        prepare_job_run(job_root / "warm", device)
        run_job(job_root / "warm", m, device, max(2, min(plan.job_iters, 3)))  # imports, TensorBoard, h5py
        make_job_run(job_root / "run", config, overrides, shards, plan.job_iters)
        prepare_job_run(job_root / "run", device)
    # Job runs spread evenly between the step repetitions, so both measurements see the same machine load.
    job_after = [min(plan.reps - 1, round((j + 1) * plan.reps / (plan.job_runs + 1)) - 1) for j in range(plan.job_runs)]
    for r in range(plan.reps):
        order = (trainer, bare) if r % 2 == 0 else (bare, trainer)
        for side in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            side.times.append(timed_block(side, data, plan.iters, device, first=r * plan.iters))
            if device.type == "cuda":
                peak[side.name] = max(peak.get(side.name, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)
        loads.append(os.getloadavg()[0])
        t, b = trainer.times[-1] * 1e3, bare.times[-1] * 1e3
        print(f"[{label}] rep {r + 1}/{plan.reps}: MemberStep {t[0]:.1f} ms/it wall ({t[1]:.1f} CPU), bare "
              f"{b[0]:.1f} ({b[1]:.1f}), ratio {b[0] / t[0]:.3f} ({b[1] / t[1]:.3f}), load {loads[-1]:.2f}", flush=True)
        for _ in range(job_after.count(r)):
            jobs.append({**run_job(job_root / "run", m, device, plan.job_iters), "after": r})
            loads.append(os.getloadavg()[0])
            j = jobs[-1]
            print(f"[{label}] job {len(jobs)}/{plan.job_runs}: {j['whole'][0]:.3f} s/it whole, {j['steady'][0]:.3f} "
                  f"s/it steady ({j['steady'][1]:.3f} CPU), {j['step'][0]:.3f} s/it in MemberStep "
                  f"({j['step'][1]:.3f} CPU), start-up {j['startup'][0]:.2f} s, load {loads[-1]:.2f}", flush=True)
    shutil.rmtree(job_root, ignore_errors=True)
    # MemberStep alone in the repetitions just before and after each job (>= 4 iterations on each side of it):
    # the closest in time, so the same machine load.
    k = max(1, -(-4 // plan.iters))
    for job in jobs:
        near = trainer.times[max(0, job["after"] + 1 - k):job["after"] + 1 + k]
        job["alone"] = np.array([med_iqr(pick(near, c))[0] for c in range(2)])

    ms = trainer.step
    assert isinstance(ms, MemberStep)
    return {"label": label, "cfg": cfg, "member": m, "w": w, "shards": shards, "same": same, "flops": flops,
            "trainer": trainer.times, "bare": bare.times, "jobs": jobs, "peak": peak,
            "extra": bookkeeping_cost(ms.g, device),
            "g_params": sum(p.numel() for p in ms.g.parameters()),
            "d_params": sum(p.numel() for p in ms.d.parameters()),
            "vgg": getattr(ms.perceptual, "net", "?"), "layers": dict(cfg.loss.perceptual.layers)}


def report(results: list[dict[str, Any]], argv: Sequence[str], device: torch.device, plan: Plan, load_start: float,
           loads: list[float], threads: int) -> str:
    command = "python bench/adam_step.py" + ("" if not argv else " " + " ".join(argv))
    if os.environ.get("OMP_NUM_THREADS"):
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    if device.type == "cuda":
        dev = (f"{torch.cuda.get_device_name(device)}; cuDNN TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
               f"{torch.backends.cuda.matmul.allow_tf32}, cudnn.benchmark {torch.backends.cudnn.benchmark}")
        unit, scale = "TFLOP/s", 1e12
        clocks = [("wall", 0)]  # the GPU is the resource; host CPU time says little
    else:
        dev = "CPU only (no GPU in this environment)"
        unit, scale = "GFLOP/s", 1e9
        clocks = [("CPU time", 1), ("wall", 0)]
    cfg0, r0 = results[0]["cfg"], results[0]
    lines = [
        "# Adam-phase iteration: MemberStep vs a bare PyTorch loop, and the whole train_member job",
        "",
        f"- command: `{command}`",
        f"- date: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, {threads} torch thread(s); device: {dev}",
        f"- load (1-min average, other engineers share the cores): {load_start:.2f} at start, "
        f"{min(loads):.2f}–{max(loads):.2f} during, {os.getloadavg()[0]:.2f} at end",
        f"- model: {cfg0.model.arch} num_feat {cfg0.model.num_feat}, num_block {cfg0.model.num_block} "
        f"({r0['g_params']:,} parameters), ×{cfg0.data.scale}; D {cfg0.discriminator.arch} num_feat "
        f"{cfg0.discriminator.num_feat} ({r0['d_params']:,} parameters); perceptual {r0['vgg']} {r0['layers']}; "
        f"GAN {cfg0.loss.gan_type}",
        f"- batch {cfg0.adam.batch_size} × {cfg0.data.patch_size}² HR RGB patches (real photos, {plan.batches} fixed "
        f"in-memory batches); member {r0['member']}, preference w = ({r0['w'][0]:g}, {r0['w'][1]:g}) (both gradient "
        f"passes run)",
        f"- protocol: one equivalence step, {plan.warmup} warm-up iteration(s) per side, then {plan.reps} "
        f"repetitions × {plan.iters} iteration(s) per side, order alternating (ABBA…); {plan.job_runs} whole-job "
        f"run(s) of {plan.job_iters} iterations (after one short warm-up job) spread between the repetitions; job "
        f"cadence: log every {cfg0.adam.log_every}, image every {cfg0.adam.image_every}, checkpoint every "
        f"{cfg0.adam.checkpoint_every} (and at the end), data.num_workers {cfg0.data.num_workers}",
        "",
        "## MemberStep vs bare loop (same math, same batches)",
        "",
        f"| variant | clock | MemberStep ms/it, median [IQR] | bare ms/it, median [IQR] | ratio bare/MemberStep "
        f"(medians) | paired ratio per rep, median [IQR] | GFLOP/it | MemberStep {unit} | bare {unit} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ft, fb = r["flops"]["MemberStep"], r["flops"]["bare"]
        flop_note = f"{ft / 1e9:.2f}" if ft == fb else f"{ft / 1e9:.2f} / {fb / 1e9:.2f}"
        for name, c in clocks:
            tt, bt = pick(r["trainer"], c), pick(r["bare"], c)
            mt, mb = med_iqr(tt)[0], med_iqr(bt)[0]
            lines.append(f"| {r['label']} | {name} | {fmt_ms(tt)} | {fmt_ms(bt)} | {mb / mt:.3f} | "
                         f"{fmt_ratio([b / t for b, t in zip(bt, tt)])} | {flop_note} | {ft / mt / scale:.2f} | "
                         f"{fb / mb / scale:.2f} |")
    for r in results:
        name, c = clocks[0]
        tt, bt = pick(r["trainer"], c), pick(r["bare"], c)
        paired, medians = med_iqr([b / t for b, t in zip(bt, tt)])[0], med_iqr(bt)[0] / med_iqr(tt)[0]
        ok = min(paired, medians) >= 0.95
        lines += ["", f"**Verdict ({r['label']}, {name}):** bare/MemberStep = {medians:.3f} (medians), {paired:.3f} "
                  f"(paired) — {'meets' if ok else 'BELOW'} the 0.95 target."]
    lines += ["", "Equivalence (one step of each side from identical states, relative difference of the Adam first "
              "moments of G / D): " + "; ".join(f"{r['label']}: {r['same']['opt_g']:.1e} / {r['same']['opt_d']:.1e}"
                                                for r in results) + "."]
    lines += ["", "MemberStep's extra work over the bare loop (the two global gradient norms it returns for "
              "logging, as device tensors; no host reads), timed alone: " + "; ".join(
                  f"{r['label']}: {r['extra'][0] * 1e3:.2f} ms/it wall = "
                  f"{r['extra'][0] / med_iqr(pick(r['trainer'], 0))[0]:.2%} of a MemberStep iteration"
                  for r in results) + "."]
    if any(r["peak"] for r in results):
        lines += ["", "Peak GPU memory per side (GiB): " + "; ".join(
            f"{r['label']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["peak"].items()) for r in results)]
    if any(r["jobs"] for r in results):
        lines += [
            "",
            "## Whole job (train_member: loader + TensorBoard + checkpoints) vs MemberStep alone",
            "",
            "| variant | clock | job s/it whole (incl. start-up) | job s/it steady | MemberStep alone s/it (adjacent "
            "reps) | ratio alone/steady, median [IQR] | ratio alone/whole, median [IQR] | start-up s |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results:
            js = r["jobs"]
            for name, c in clocks if js else ():
                lines.append(f"| {r['label']} | {name} | {med_iqr([j['whole'][c] for j in js])[0]:.3f} | "
                             f"{med_iqr([j['steady'][c] for j in js])[0]:.3f} | "
                             f"{med_iqr([j['alone'][c] for j in js])[0]:.3f} | "
                             f"{fmt_ratio([j['alone'][c] / j['steady'][c] for j in js])} | "
                             f"{fmt_ratio([j['alone'][c] / j['whole'][c] for j in js])} | "
                             f"{med_iqr([j['startup'][c] for j in js])[0]:.2f} |")
        lines += [
            "",
            "Where a steady job iteration goes (ms per iteration, median over job runs; share of the steady time):",
            "",
            "| variant | clock | MemberStep | loader | TensorBoard | checkpoint (serialise + commit) | other |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in results:
            js = r["jobs"]
            for name, c in clocks if js else ():
                cells = []
                for part in (*JobClock.PARTS, "other"):
                    ms = med_iqr([j[part][c] for j in js])[0] * 1e3
                    share = med_iqr([j[part][c] / j["steady"][c] for j in js])[0]
                    cells.append(f"{ms:.1f} ({share:.1%})")
                lines.append(f"| {r['label']} | {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios: 1 = no overhead, lower = slower than the reference; the target for bare/MemberStep is >= 0.95.",
        "\"CPU time\" is this process's CPU time (all its threads; DataLoader worker processes, if any, are not",
        "counted): on a shared machine the wall clock also counts time spent waiting for a core, which swings",
        "with other people's work. \"Paired\" divides the two sides' times of the same repetition (adjacent in",
        "time, so load mostly cancels); each job run is compared with MemberStep alone in the repetitions just",
        "before and after it (median of >= 4 iterations on each side). \"Steady\" job time runs from the end of",
        "the first step to the end of the job, per iteration; \"whole\" adds start-up (building G, D and VGG,",
        "loading weights, member init, loader and TensorBoard writer; process start and imports excluded). The",
        "breakdown wraps, in this process only, MemberStep.__call__, the loader's next(), the TensorBoard writer's",
        "methods and torch_bytes + write_member as train_member and its loop call them; \"other\" is the rest (the",
        "loop: the on-device loss watch, float() of the scalars and the loss check at log steps, the weight check",
        "before a commit; cpu_state copies, the sample grid, host-to-device copies). MemberStep has no host sync; the",
        "loop syncs at log and checkpoint steps only. FLOPs: torch.utils.flop_counter.FlopCounterMode",
        "over one iteration (conv and matmul only; elementwise work is not counted).",
        "",
    ]
    if device.type != "cuda":
        lines += ["The `--device cuda` path (RRDB 64×23, batch 16, 128² HR, fp32 and `--set adam.bf16=true`, "
                  "TFLOP/s) exists but was not run: no GPU was available for this run.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:N]")
    ap.add_argument("--config", type=Path, default=None,
                    help="config YAML (default: configs/tiny.yaml with num_feat 32, 4 blocks, 64 px, batch 4 on "
                         "CPU; configs/rrdb.yaml on CUDA)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override, e.g. adam.bf16=true")
    ap.add_argument("--precision", choices=("config", "fp32", "bf16", "both"), default=None,
                    help="CUDA: fp32, bf16 autocast, or both (default on CUDA unless --set adam.bf16=… is given)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 reps × 1 iteration, one 4-iteration job")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per side (default 40 CPU, 8 CUDA)")
    ap.add_argument("--iters", type=int, default=None, help="iterations per timed block (default 1 CPU, 5 CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed warm-up iterations per side")
    ap.add_argument("--batches", type=int, default=None, help="fixed in-memory batches to cycle through")
    ap.add_argument("--job-runs", type=int, default=None, help="whole train_member runs (0 = skip; default 3/2)")
    ap.add_argument("--job-iters", type=int, default=None, help="iterations per job run (default 100)")
    ap.add_argument("--member", type=int, default=None, help="population slot (default: the middle one)")
    ap.add_argument("--shards", type=Path, default=None, help="training shard folder (default: the config's, else "
                                                              "the demo photos)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default OMP_NUM_THREADS or 1)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"results file (default {RESULTS.relative_to(ROOT)}; --quick prints only)")
    args = ap.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    torch.set_num_threads(threads)
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    load_start = os.getloadavg()[0]
    plan = plan_for(args, device)

    if args.config is None:
        config = CUDA_CONFIG if device.type == "cuda" else CPU_CONFIG
        base = [] if device.type == "cuda" else list(CPU_SIZE)
    else:
        config, base = args.config, []
    overrides = [*base, *args.overrides]
    bf16_set = any(o.split("=", 1)[0].strip() == "adam.bf16" for o in args.overrides)
    precision = args.precision or ("both" if device.type == "cuda" and not bf16_set else "config")
    if precision == "config":
        variants = [("bf16" if load_config(config, overrides).adam.bf16 and device.type == "cuda" else "fp32",
                     overrides)]
    else:
        names = ["fp32", "bf16"] if precision == "both" else [precision]
        variants = [(v, [*overrides, f"adam.bf16={'true' if v == 'bf16' else 'false'}"]) for v in names]
    if device.type != "cuda" and any(v == "bf16" for v, _ in variants):
        raise SystemExit("--precision bf16: bf16 autocast is CUDA-only in the trainer (adam.bf16 is ignored on CPU)")

    loads: list[float] = []
    results = []
    with tempfile.TemporaryDirectory(prefix="adam_step_") as tmp:
        for label, over in variants:
            results.append(run_variant(label, config, over, device, plan, args.member, args.shards, Path(tmp),
                                       loads))
    text = report(results, argv_used, device, plan, load_start, loads or [load_start], threads)
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out is not None:
        atomic_write_text(out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
