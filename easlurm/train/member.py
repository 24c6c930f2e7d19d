"""One member's Adam phase (DESIGN.md §2): ``cycles/C/start/I`` in, ``cycles/C/members/I`` out, resumable to the bit.

The stage reads slot I's start entry of cycle C (written by the init stage for cycle 0, by the EA phase of cycle
C-1 after that; never modified) and trains into ``cycles/C/members/I/``, which it alone writes: ``G.pt``, ``D.pt``,
``optim.pt`` (generator and discriminator Adam states), ``rng.pt`` and ``meta.json``
(:class:`easlurm.population.MemberMeta`). All files are committed together every ``adam.checkpoint_every``
iterations, at the end (``done: true``) and on preemption (:mod:`easlurm.engine`). Running the same call again
resumes from the last commit; a finished phase is a no-op. Training data are drawn by global sample index (a pure
function of seed and index), so the sample position is one integer and a resumed run sees exactly the batches an
uninterrupted one would.

A slot that is not Adam-trained (``population.member0: ea_only | frozen``) has no task and no members folder: its
start entry is its state after the phase. With ``adam.members_per_task`` k > 1 one task trains k members side by
side (:func:`train_members`), each committing exactly what it would alone.

Per iteration (batch of HR patches, ×scale bicubic LR; all images NCHW RGB in [0,1]):
  sr = G(lr); L_dist = L1(sr, hr); L_perc = perceptual_weight·Perc(sr, hr) + gan_weight·GAN_G(D, sr, hr)
  g1 = ∇L_dist, g2 = ∇L_perc (two backward passes over one forward; a term whose preference weight is 0 is skipped)
  Adam step on G with the ``adam.mix`` direction (easlurm.train.mix); one D step on (hr, sr.detach()).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Sequence

import torch
import torch.nn as nn

from .. import factory, losses, rng
from ..config import Config, load_run_config
from ..engine.context import StageContext, drain, load_optimizers, loader, resume, stage_context, train_steps
from ..engine.data import batches
from ..engine.loop import Cadence
from ..engine.preempt import Preemption
from ..errors import ConfigError
from ..population import (
    MemberMeta, adam_cycles, is_adam_trained, phase_iters, read_member, require_member, write_member,
)
from ..runtime import adam, cpu_state, optimizer_state_cpu
from ..store import RunDir
from ..tensor_files import torch_bytes
from .graphed import CudaGraph, GraphBackend, GraphedStep
from .mix import global_norm, mix


@dataclass
class StepResult:
    """Loss values and gradient norms of one iteration, as 0-d tensors on the training device (no host sync)."""
    l1: torch.Tensor
    perceptual: torch.Tensor
    gan: torch.Tensor
    d: torch.Tensor
    grad_norm_dist: torch.Tensor
    grad_norm_perc: torch.Tensor

    def scalars(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class MemberStep:
    """The math of one EA-Adam iteration for one member, with no I/O (shared by the job and its benchmarks)."""

    def __init__(self, cfg: Config, g: nn.Module, d: nn.Module, perceptual: nn.Module, w: tuple[float, float],
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, device: torch.device):
        self.cfg, self.g, self.d, self.perceptual, self.w = cfg, g, d, perceptual, w
        self.opt_g, self.opt_d, self.device = opt_g, opt_d, device
        self.params = [p for p in g.parameters() if p.requires_grad]
        self.autocast = device.type == "cuda" and cfg.adam.bf16
        self.channels_last = device.type == "cuda" and cfg.adam.channels_last
        self.autocast_cache = True  # off under a CUDA graph (easlurm.train.graphed)

    def _amp(self) -> Any:
        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=self.autocast_cache)
        return contextlib.nullcontext()

    def __call__(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[StepResult, torch.Tensor]:
        """One G update and one D update; returns the losses (device tensors) and the SR batch (detached)."""
        cfg = self.cfg
        if self.channels_last:
            lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
        w_dist, w_perc = self.w
        kind = cfg.loss.gan_type
        with self._amp():
            sr = self.g(lr)
            l_dist = losses.l1_loss(losses.full(sr), hr)
            l_per = self.perceptual(losses.full(sr), hr)
            l_gan = losses.generator_gan_loss(kind, self.d, sr, hr)
            l_perc = cfg.loss.perceptual_weight * l_per + cfg.loss.gan_weight * l_gan
        g1 = (torch.autograd.grad(l_dist, self.params, retain_graph=w_perc != 0.0, allow_unused=True)
              if w_dist != 0.0 else [None] * len(self.params))
        g2 = (torch.autograd.grad(l_perc, self.params, allow_unused=True)
              if w_perc != 0.0 else [None] * len(self.params))
        direction = mix(cfg.adam.mix, g1, g2, w_dist, w_perc, cfg.adam.norm_eps)
        for p, dp in zip(self.params, direction):
            p.grad = dp
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)

        sr_d = sr.detach()
        with self._amp():
            l_d = losses.gan_d_loss(kind, losses.full(self.d(hr)), losses.full(self.d(sr_d)))
        self.opt_d.zero_grad(set_to_none=True)
        l_d.backward()
        self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)
        res = StepResult(l_dist.detach(), l_per.detach(), l_gan.detach(), l_d.detach(),
                         global_norm(g1, self.device), global_norm(g2, self.device))
        return res, sr_d


def sample_grid(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """CHW image: nearest-upsampled LR | SR | HR of the first sample, clamped to [0, 1]."""
    up = torch.nn.functional.interpolate(lr[:1].float(), size=hr.shape[-2:], mode="nearest")
    return torch.cat([up[0], sr[0].float(), hr[0].float()], dim=2).clamp(0, 1).cpu()


class MemberTrainee:
    """The member's step, data and state files, as :func:`easlurm.engine.loop.run_loop` drives them."""

    def __init__(self, where: str, step: MemberStep, data: Iterator[tuple[torch.Tensor, torch.Tensor]] | None,
                 device: torch.device, graph: GraphedStep | None = None):
        self.where, self.s, self.data, self.device, self.graph = where, step, data, device, graph
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def step(self, iteration: int) -> dict[str, torch.Tensor]:
        assert self.data is not None
        lr, hr = next(self.data)
        lr, hr = lr.to(self.device, non_blocking=True), hr.to(self.device, non_blocking=True)
        res, sr = (self.graph or self.s)(lr, hr)
        self._last = (lr, sr, hr)
        return res.scalars()

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.s.g, "D": self.s.d}

    def checkpoint_files(self) -> dict[str, bytes]:
        return {"G.pt": torch_bytes(cpu_state(self.s.g)), "D.pt": torch_bytes(cpu_state(self.s.d)),
                "optim.pt": torch_bytes({"g": optimizer_state_cpu(self.s.opt_g),
                                         "d": optimizer_state_cpu(self.s.opt_d)})}

    def load_files(self, load: Callable[[str], Any]) -> None:
        self.s.g.load_state_dict(load("G.pt"))
        self.s.d.load_state_dict(load("D.pt"))
        load_optimizers(load("optim.pt"), {"g": self.s.opt_g, "d": self.s.opt_d})
        if self.graph is not None:
            self.graph.reset()  # the loaded state replaced tensors a captured graph would write

    def sample_image(self) -> torch.Tensor | None:
        return None if self._last is None else sample_grid(*self._last)


def build_member(cfg: Config, preference: tuple[float, float], device: torch.device, where: str = "member",
                 perceptual: nn.Module | None = None) -> MemberTrainee:
    """A member with freshly built networks and optimizers on ``device`` (no data yet; load its files next).
    ``perceptual``: a frozen perceptual net on ``device`` to share (default: a new one). With ``adam.cuda_graph``
    on a CUDA device its step runs as a captured graph (:mod:`easlurm.train.graphed`)."""
    g = factory.build_generator(cfg).to(device).train()
    d = factory.build_discriminator(cfg).to(device).train()
    if device.type == "cuda" and cfg.adam.channels_last:
        g.to(memory_format=torch.channels_last)
        d.to(memory_format=torch.channels_last)
    a, dc = cfg.adam, cfg.discriminator
    backend = graph_backend(cfg, device)
    capturable = backend is CudaGraph
    opt_g = adam(g.parameters(), a.lr, a.betas, capturable=capturable)
    opt_d = adam(d.parameters(), dc.lr, dc.betas, capturable=capturable)
    perceptual = perceptual if perceptual is not None else factory.build_perceptual(cfg).to(device)
    step = MemberStep(cfg, g, d, perceptual, preference, opt_g, opt_d, device)
    return MemberTrainee(where, step, None, device, GraphedStep(step, backend) if backend is not None else None)


def graph_backend(cfg: Config, device: torch.device) -> Callable[[], GraphBackend] | None:
    """How ``adam.cuda_graph`` runs on ``device``: a CUDA graph on CUDA, None (eager) elsewhere or when off."""
    return CudaGraph if cfg.adam.cuda_graph and device.type == "cuda" else None


def _start_hint(cycle: int) -> str:
    return ("written by the init stage" if cycle == 0 else f"written by the EA phase of cycle {cycle - 1}")


def train_member(run_dir: str | Path, cycle: int, member: int | None = None, device: str | None = None,
                 members: Sequence[int] | None = None) -> MemberMeta | list[MemberMeta]:
    """Run (or resume, or skip) the Adam phase of ``member`` in ``cycle``; return its final record. ``members``
    instead (a task of ``adam.members_per_task`` > 1): train those members side by side in this process
    (:func:`train_members`) and return their records.

    SIGUSR2/SIGTERM at any point (also during start-up) → checkpoint after the current iteration, then the process
    exits with 128 + signal (the Slurm batch script then requeues the job).
    """
    if members is not None:
        if member is not None:
            raise ConfigError("train_member: give member or members, not both")
        return train_members(run_dir, cycle, members, device)
    if member is None:
        raise ConfigError("train_member: which member? (member=I or members=[I, J, …])")
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    _check_slot(cfg, run, cycle, member)
    with stage_context(run, cfg, run.member(cycle, member), _where(cycle, member), device) as ctx:
        return drain(_member_steps(ctx, cycle, member))


def train_members(run_dir: str | Path, cycle: int, members: Sequence[int], device: str | None = None
                  ) -> list[MemberMeta]:
    """The Adam phase of several members in one process (``adam.members_per_task``): one iteration of each in turn
    (:func:`easlurm.engine.group.interleave`), one frozen perceptual net shared, each member with its own folder,
    lease, data, RNG stream and commits — the files each writes are those it would write alone. A member whose loss
    or weights go non-finite stops with the usual error after the others finished (their commits stay); on the
    pre-timeout warning every member commits, then the process exits 140 like a single member's."""
    from ..engine.group import Lane, RoundPreemption, interleave

    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    slots = [int(m) for m in members]
    if not slots or len(set(slots)) != len(slots):
        raise ConfigError(f"members: a non-empty list of distinct slots, got {list(members)}")
    for m in slots:
        _check_slot(cfg, run, cycle, m)
    with Preemption() as outer, contextlib.ExitStack() as stack:
        shared = RoundPreemption(outer)
        lanes, perceptual = [], None
        for m in slots:
            ctx = stack.enter_context(stage_context(run, cfg, run.member(cycle, m), _where(cycle, m), device,
                                                    preempt=shared))
            if perceptual is None:
                perceptual = factory.build_perceptual(cfg).to(ctx.device)
            lanes.append(Lane(ctx.where, _member_steps(ctx, cycle, m, perceptual)))
        outcomes = interleave(lanes, shared)
        failed = [m for m, o in zip(slots, outcomes) if o.error is not None]
        if failed:
            others = [f"{m:02d}" for m, o in zip(slots, outcomes) if o.error is None]
            first = outcomes[slots.index(failed[0])].error
            assert first is not None
            note = (f" ({len(failed)} of {len(slots)} members failed: {', '.join(f'{m:02d}' for m in failed)}; "
                    + (f"member(s) {', '.join(others)} kept their commits)" if others else "no other member)"))
            first.args = (f"{first}{note}",)  # keeps its type: whether a retry may help is the error's call
            raise first
        if any(o.preempted for o in outcomes):
            outer.finish()
        return [o.result for o in outcomes]


def _where(cycle: int, member: int) -> str:
    return f"Adam phase of cycle {cycle}, member {member:02d}"


def _check_slot(cfg: Config, run: RunDir, cycle: int, member: int) -> None:
    n = cfg.population.size
    if not 0 <= member < n:
        raise ConfigError(f"member {member}: the population has members 0..{n - 1}")
    if cycle not in adam_cycles(cfg):
        raise ConfigError(f"cycle {cycle}: the run's Adam phases are cycles 0..{adam_cycles(cfg)[-1]}")
    if not is_adam_trained(cfg, member):
        raise ConfigError(f"member {member:02d}: not Adam-trained (population.member0: {cfg.population.member0}); "
                          f"its state after the phase is its start entry {run.start(cycle, member)}, nothing runs")


def _member_steps(ctx: StageContext, cycle: int, member: int, perceptual: nn.Module | None = None
                  ) -> Generator[int, None, MemberMeta]:
    """The member's phase one iteration at a time (:func:`easlurm.engine.context.train_steps`); returns its final
    record (at once, yielding nothing, when the record says done). ``perceptual``: a frozen perceptual net shared
    with other members of the process (default: its own)."""
    run, cfg, folder = ctx.run, ctx.cfg, ctx.folder
    meta = read_member(folder, recover=True)  # we own the folder (we hold its lease)
    if meta is not None and meta.done:
        return meta
    start_folder = run.start(cycle, member)
    start = require_member(start_folder, "start", ("G.pt", "D.pt"), _start_hint(cycle))
    target = phase_iters(cfg, cycle)
    trainee = build_member(cfg, start.preference, ctx.device, ctx.where, perceptual)
    if meta is None:  # first start: from the start entry; fresh G moments when the EA reset them
        meta = dataclasses.replace(start, kind="member", iteration=0, iters_target=target, sample_index=0,
                                   done=False, trained_from=run.rel(start_folder), files={}, attempts=[])
        trainee.load_files(loader(start_folder, start, {"optim.pt": ("g",)} if start.reset_g_optimizer else None))
        torch.manual_seed(rng.derive_seed(cfg.run.seed, cycle, member))
    else:
        resume(trainee, loader(folder, meta))
    it0, batch = meta.iteration, cfg.adam.batch_size
    trainee.data = batches(factory.data_dirs(cfg).train, cfg, batch,
                           rng.derive_seed(cfg.run.seed, cycle, member, rng.SEED_TAG_DATA),
                           start_index=it0 * batch, total=target * batch, num_workers=cfg.data.num_workers)
    graph = (f" (CUDA graph after {trainee.graph.warmup} eager iterations)" if trainee.graph is not None
             else " (eager: adam.cuda_graph acts on CUDA only)" if cfg.adam.cuda_graph else "")
    print(f"[train] {ctx.where}: {'resuming' if it0 else 'starting'} at iteration {it0}/{target} on {ctx.device}"
          f"{graph}", flush=True)

    def save(record: MemberMeta, files: dict[str, bytes]) -> MemberMeta:
        return write_member(folder, dataclasses.replace(record, sample_index=record.iteration * batch,
                                                        done=record.iteration >= target), files,
                            fence=ctx.lease.check)

    a = cfg.adam
    opt_g = trainee.s.opt_g
    return (yield from train_steps(
        ctx, trainee, meta, save, Cadence(target, a.checkpoint_every, a.log_every, a.image_every),
        tb_folder=run.tb / f"member_{member:02d}", tb_step0=sum(phase_iters(cfg, c) for c in range(cycle)),
        extra_scalars=lambda: {"lr/generator": float(opt_g.param_groups[0]["lr"])}))


__all__ = ["MemberStep", "StepResult", "MemberTrainee", "build_member", "sample_grid", "train_member", "train_members"]
