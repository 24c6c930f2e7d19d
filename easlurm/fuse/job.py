"""The fusion job (DESIGN.md §2 "Fusion", §4): the final population in, one plain backbone out.

``run_fusion(RUN)`` reads the final population (:func:`easlurm.population.final_members`). Identical experts (slots
that hold the same genome, e.g. after MOEA/D copied one child into several slots) enter once: fusing K copies of one
kernel is the same as fusing it once with the copies' attention summed. Every conv (and a transformer's linear
layers and LayerNorms) of the backbone is wrapped into a dynamic layer over the distinct experts
(:func:`easlurm.fuse.dynamic.make_dynamic`, conv attention kernel ``fusion.att_kernel``, width
``fusion.att_channels``) and **only the attention branches** are trained for
``fusion.iters`` iterations with Adam (``fusion.lr``, ``fusion.betas``; both learning rates multiplied by
``fusion.gamma`` from each of the iterations ``fusion.milestones`` on), on random training patches (batch
``fusion.batch_size``):

    L_fuse = fusion.l1_weight · L1(sr, hr) + loss.perceptual_weight · Perceptual(sr, hr)
             + loss.gan_weight · GAN_G(D, sr, hr)                     (GAN type ``loss.gan_type``)

One discriminator, warm-started from final member ``fusion.discriminator_from``'s ``D.pt``, takes one step per
iteration on (hr, sr.detach()) with Adam (``fusion.d_lr``, null → ``fusion.lr`` as in the reference). All images
are NCHW RGB float in [0, 1]. The loop (:mod:`easlurm.train.loop`) checkpoints ``RUN/fusion/`` every
``fusion.checkpoint_every`` iterations, at the end and on preemption: ``attention.pt`` (attention parameters only),
``D.pt``, ``optim.pt``, ``rng.pt``, ``meta.json`` (:class:`FusionMeta`).

Then each layer's softmax vector is averaged over a fixed set of **training** LR images
(:func:`averaging_crops`: the first ``fusion.average_images`` entries of ``fusion.average_set``, default
``data.train``; the centre crop of half the height and width) — never over an evaluation set — renormalised in
float64, and the experts are merged layer by layer. The same commit adds ``attention.json`` (per layer, the weights
of every *slot*: a distinct expert's weight split evenly over the slots that share it, so the numbers read per
member) and ``fused.pt`` (the plain backbone, loadable with ``strict=True``), with ``done: true``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from .. import factory, losses, rng
from ..config import Config, load_run_config
from ..engine.context import StageContext, load_optimizers, loader, resume, stage_context, train
from ..engine.data import batches
from ..engine.loop import Cadence
from ..errors import CheckpointError, ConfigError
from ..models.specs import generator_spec
from ..population import final_cycle, final_members, load_member_file
from ..runtime import adam, cpu_state, optimizer_state_cpu
from ..stages.fuse import FusionMeta, read_record
from ..export import encode, sidecar
from ..checkpoints import checkpoint_intact, commit_checkpoint
from ..store import RunDir, sha256_bytes
from ..tensor_files import torch_bytes
from .dynamic import attention_parameters, average_attention, dynamic_layers, make_dynamic
from .collapse import merge_from_dynamic

__all__ = ["ATTENTION_KEY", "run_fusion", "distinct_experts", "build_fusion_model", "attention_state", "average_set",
           "averaging_crops", "fusion_step", "FusionTrainee"]

log = logging.getLogger("easlurm.fuse")

#: What names the attention branches' entries in the dynamic model's state dict.
ATTENTION_KEY = ".attention."


def distinct_experts(shas: list[str]) -> tuple[list[int], list[int]]:
    """(indices of the first slot holding each distinct genome, slot → distinct index), by G.pt sha256."""
    first: dict[str, int] = {}
    for sha in shas:
        first.setdefault(sha, len(first))
    unique = [shas.index(sha) for sha in first]
    return unique, [first[sha] for sha in shas]


def build_fusion_model(cfg: Config, expert_states: list[dict[str, torch.Tensor]]) -> nn.Module:
    """The dynamic model over the experts (attention branches freshly initialised from the current torch RNG)."""
    experts = []
    for i, sd in enumerate(expert_states):
        g = factory.build_generator(cfg)
        try:
            g.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"expert {i}: G.pt does not fit model {cfg.model.arch} "
                                  f"({str(exc).splitlines()[0]})") from exc
        experts.append(g)
    return make_dynamic(experts, cfg.fusion.att_kernel, cfg.fusion.att_channels)


def attention_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The attention-branch entries of the dynamic model's state dict (CPU copies)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if ATTENTION_KEY in k}


def _load_attention_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    own = {k: v for k, v in model.state_dict().items() if ATTENTION_KEY in k}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: attention parameters do not match the dynamic model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: {k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def average_set(cfg: Config) -> Path:
    """The shard folder the attention is averaged over: ``fusion.average_set``, null → ``data.train``.

    Raises :class:`ConfigError` when that folder is an evaluation set (``data.val`` or an ``eval.sets`` path):
    weights fitted on the images they are scored on would flatter the fused model.
    """
    dirs = factory.data_dirs(cfg)
    src = Path(cfg.fusion.average_set) if cfg.fusion.average_set else dirs.train
    evaluation = ([("data.val", dirs.val)] if dirs.val is not None else []) + \
        [(f"eval.sets.{k}", Path(v)) for k, v in sorted(cfg.eval.sets.items())]
    for name, path in evaluation:
        if _same_folder(src, path):
            raise ConfigError(f"fusion.average_set: {src} is also {name}; average the attention over training "
                              f"images (the reference uses 100 DIV2K training images), never an evaluation set")
    return src


def averaging_crops(cfg: Config) -> tuple[list[str], Iterator[torch.Tensor]]:
    """The attention-averaging set: ids and (lazily) 1×3×h×w LR centre crops (half height and width, rounded down to
    the backbone's input multiple), RGB in [0, 1].

    The first ``fusion.average_images`` entries (sorted ids) of :func:`average_set`.
    """
    from ..data.dataset import ShardReader, to_tensor

    reader = ShardReader(average_set(cfg), scale=cfg.data.scale)
    ids = list(reader.ids)[: cfg.fusion.average_images]
    m = generator_spec(cfg.model.arch).side_multiple(cfg.data.scale, cfg.model.options)  # sides it can take

    def crops() -> Iterator[torch.Tensor]:
        try:
            for eid in ids:
                h, w = reader.entries[eid]["lr_shape"][:2]
                ch, cw = max(m, h // 2 // m * m), max(m, w // 2 // m * m)
                y, x = (h - ch) // 2, (w - cw) // 2
                yield to_tensor(reader.read(eid, "lr", y, x, ch, cw)).unsqueeze(0)
        finally:
            reader.close()

    return ids, crops()


def fusion_step(cfg: Config, model: nn.Module, d: nn.Module, perceptual: nn.Module, opt_att: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
    """One attention update on L_fuse and one discriminator update; returns the losses (0-d device tensors)."""
    kind = cfg.loss.gan_type
    d.requires_grad_(False)  # the generator-side loss must not leave gradients in D
    sr = model(lr)
    l1 = losses.l1_loss(sr, hr)
    perc = perceptual(sr, hr)
    gan = losses.generator_gan_loss(kind, d, sr, hr)
    total = cfg.fusion.l1_weight * l1 + cfg.loss.perceptual_weight * perc + cfg.loss.gan_weight * gan
    opt_att.zero_grad(set_to_none=True)
    total.backward()
    opt_att.step()
    opt_att.zero_grad(set_to_none=True)

    d.requires_grad_(True)
    l_d = losses.gan_d_loss(kind, d(hr), d(sr.detach()))
    opt_d.zero_grad(set_to_none=True)
    l_d.backward()
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)
    return {"l1": l1.detach(), "perceptual": perc.detach(), "gan": gan.detach(), "total": total.detach(),
            "d": l_d.detach()}


class FusionTrainee:
    """The attention branches and the fusion discriminator, as :func:`easlurm.engine.loop.run_loop` drives them."""
    where = "fusion"

    def __init__(self, cfg: Config, model: nn.Module, d: nn.Module, perceptual: nn.Module,
                 opt_att: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, device: torch.device,
                 folder: Path = Path("fusion")):
        self.cfg, self.model, self.d, self.perceptual, self.folder = cfg, model, d, perceptual, folder
        self.opt_att, self.opt_d, self.device = opt_att, opt_d, device
        self.data: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
        f = cfg.fusion
        self.base = (f.lr, f.d_lr or f.lr)

    def step(self, iteration: int) -> dict[str, torch.Tensor]:
        assert self.data is not None
        # MultiStep schedule as a pure function of the iteration, so a resumed run needs no scheduler state.
        decay = self.cfg.fusion.gamma ** sum(1 for m in self.cfg.fusion.milestones if m <= iteration)
        for opt, base in zip((self.opt_att, self.opt_d), self.base):
            for group in opt.param_groups:
                group["lr"] = base * decay
        lr, hr = next(self.data)
        return fusion_step(self.cfg, self.model, self.d, self.perceptual, self.opt_att, self.opt_d,
                           lr.to(self.device, non_blocking=True), hr.to(self.device, non_blocking=True))

    def modules(self) -> dict[str, nn.Module]:
        return {"fusion": self.model, "D": self.d}

    def checkpoint_files(self) -> dict[str, bytes]:
        return {"attention.pt": torch_bytes(attention_state(self.model)), "D.pt": torch_bytes(cpu_state(self.d)),
                "optim.pt": torch_bytes({"att": optimizer_state_cpu(self.opt_att),
                                         "d": optimizer_state_cpu(self.opt_d)})}

    def load_files(self, load: Callable[[str], Any]) -> None:
        _load_attention_state(self.model, load("attention.pt"), self.folder / "attention.pt")
        self.d.load_state_dict(load("D.pt"))
        load_optimizers(load("optim.pt"), {"att": self.opt_att, "d": self.opt_d})

    def sample_image(self) -> torch.Tensor | None:
        return None


def run_fusion(run_dir: str | Path, device: str | None = None) -> FusionMeta:
    """Train (or resume, or skip) the fusion stage of a run; return its record (preemption as for members)."""
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    average_set(cfg)  # a refused averaging set must not cost the whole fusion training first
    with stage_context(run, cfg, run.fusion, "fusion", device) as ctx:
        return _run_fusion(ctx)


def _run_fusion(ctx: StageContext) -> FusionMeta:
    run, cfg = ctx.run, ctx.cfg
    got = read_record(cfg, run, recover=True)  # the fusion stage owns RUN/fusion
    if got is not None and got.done and checkpoint_intact(run.fusion, got.store, full=True):
        log.info("fusion already complete (%s)", run.fusion / "fused.pt")
        return got
    finals = final_members(cfg, run)
    shas = [m.files["sha256"]["G.pt"] for _, m in finals]
    unique, slot_expert = distinct_experts(shas)
    expert_sha = [shas[k] for k in unique]
    f = cfg.fusion
    target, batch = f.iters, f.batch_size
    d_slot = f.discriminator_from % cfg.population.size
    if got is not None and got.experts_sha256 != expert_sha:
        raise CheckpointError(f"{run.fusion}: the fusion checkpoint was made from other experts than the current "
                              f"final population (cycle {final_cycle(cfg)}); delete {run.fusion} to fuse again")
    torch.manual_seed(rng.derive_seed(cfg.run.seed, rng.SEED_TAG_FUSION))
    model = build_fusion_model(cfg, [load_member_file(finals[k][0], finals[k][1], "G.pt") for k in unique])
    d = factory.build_discriminator(cfg)
    model.to(ctx.device).train()
    d.to(ctx.device).train()
    opt_att, opt_d = adam(attention_parameters(model), f.lr, f.betas), adam(d.parameters(), f.d_lr or f.lr, f.betas)
    trainee = FusionTrainee(cfg, model, d, factory.build_perceptual(cfg).to(ctx.device), opt_att, opt_d, ctx.device,
                            run.fusion)
    if got is None:
        d.load_state_dict(load_member_file(finals[d_slot][0], finals[d_slot][1], "D.pt"))
        record = FusionMeta(iters_target=target, experts_sha256=expert_sha, slot_expert=slot_expert,
                            experts_cycle=final_cycle(cfg), discriminator_from=d_slot)
    else:
        record = got
        resume(trainee, loader(run.fusion, record))
    it0 = record.iteration
    if it0 < target:
        trainee.data = batches(factory.data_dirs(cfg).train, cfg, batch,
                               rng.derive_seed(cfg.run.seed, rng.SEED_TAG_FUSION, rng.SEED_TAG_DATA),
                               start_index=it0 * batch, total=target * batch, num_workers=cfg.data.num_workers)

    def save(rec: FusionMeta, files: dict[str, bytes]) -> FusionMeta:
        return FusionMeta.from_dict(commit_checkpoint(run.fusion, files, rec.to_dict(), fence=ctx.lease.check),
                                    run.fusion / "meta.json")

    tb = ctx.writer(run.tb / "fusion", purge_step=it0 + 1)
    attempt = ctx.attempt_log(record.attempts, it0)
    record = train(ctx, trainee, record, save, Cadence(target, f.checkpoint_every, f.log_every),
                   tb_folder=run.tb / "fusion", tb=tb, attempt=attempt,
                   extra_scalars=lambda: {"lr/attention": float(opt_att.param_groups[0]["lr"])})
    return _finish(cfg, run, model, dataclasses.replace(record, attempts=attempt.entries(target)), tb,
                   ctx.lease.check)


def _normalised(averages: dict[str, np.ndarray]) -> dict[str, list[float]]:
    # The float32 softmax rows sum to 1 only to ~1e-7; renormalising in float64 makes the written numbers exactly
    # the ones the merge uses and keeps them well inside the merge's ±1e-6 sum check.
    out = {}
    for name, vec in averages.items():
        v = np.asarray(vec, dtype=np.float64)
        out[name] = [float(x) for x in v / v.sum()]
    return out


def _per_slot(averages: dict[str, list[float]], slot_expert: list[int]) -> dict[str, list[float]]:
    """Each distinct expert's weight split evenly over the slots that share its genome."""
    share = [slot_expert.count(k) for k in slot_expert]
    return {name: [w[k] / c for k, c in zip(slot_expert, share)] for name, w in averages.items()}


def _finish(cfg: Config, run: RunDir, model: nn.Module, meta: FusionMeta, tb: Any,
            fence: Callable[[], None]) -> FusionMeta:
    """Average the attention over the training crops, merge, self-check, and commit the outputs."""
    ids, crops = averaging_crops(cfg)
    if not ids:
        raise ConfigError("fusion.average_set: holds no images to average the attention over")
    averages = _normalised(average_attention(model, crops))
    merged = {k: v.detach().cpu().clone() for k, v in merge_from_dynamic(model, averages).items()}
    backbone = factory.build_generator(cfg)
    backbone.load_state_dict(merged, strict=True)  # a fused.pt that does not load must never be written
    layer_names = [name for name, _ in dynamic_layers(model)]
    per_slot = _per_slot(averages, meta.slot_expert)
    for step_k, name in enumerate(layer_names):
        for k, w in enumerate(per_slot[name]):
            tb.add_scalar(f"attention/member_{k:02d}", w, step_k)
    tb.add_text("attention", "\n".join(f"    {name}: " + ", ".join(f"{w:.4f}" for w in per_slot[name])
                                       for name in layer_names), 0)
    tb.flush()
    files = {"attention.json": (json.dumps(per_slot, indent=2) + "\n").encode("utf-8"),
             "fused.pt": torch_bytes(merged)}
    if cfg.fusion.export:  # the formats other SR tools load, beside easlurm's own (easlurm.export)
        about = sidecar(cfg, "fused", run.rel(run.fusion / "fused.pt"), sha256_bytes(files["fused.pt"]),
                        experts=len(meta.experts_sha256), averaged_over=len(ids))
        files.update(encode("fused", merged, about, cfg.fusion.export))
    meta = dataclasses.replace(meta, done=True, average_ids=ids, attention_layers=len(layer_names))
    meta = FusionMeta.from_dict(commit_checkpoint(run.fusion, files, meta.to_dict(), fence=fence),
                                run.fusion / "meta.json")
    log.info("fusion done: %s (%d layers, %d distinct experts, averaged over %d training crops)",
             run.fusion / "fused.pt", len(layer_names), len(meta.experts_sha256), len(ids))
    return meta
