"""The fusion job (DESIGN.md §2 "Fusion", §4): the N final experts in, one plain backbone out.

``run_fusion(RUN)`` reads the final population ``RUN/cycles/<run.cycles>/members/*/G.pt`` (written by the EA job of
the last cycle), wraps every conv of the backbone into a dynamic conv over the N experts
(:func:`easlurm.fuse.dynamic.make_dynamic`, attention branch kernel ``fusion.att_kernel``, width
``fusion.att_channels``) and trains **only the attention branches** for ``fusion.iters`` iterations with Adam
(``fusion.lr``, betas (0.9, 0.999)) on random training patches (the same data pipeline as a member's Adam phase,
batch ``fusion.batch_size``):

    L_fuse = fusion.l1_weight · L1(sr, hr) + loss.perceptual_weight · Perceptual(sr, hr)
             + loss.gan_weight · GAN_G(D, sr, hr)                     (GAN type ``loss.gan_type``)

One discriminator, warm-started from member ``fusion.discriminator_from``'s ``D.pt`` (negative = from the end), takes
one step per iteration on (hr, sr.detach()) with Adam (``discriminator.lr`` / ``discriminator.betas``, fresh
moments). All images are NCHW RGB float in [0, 1].

Checkpoints go to ``RUN/fusion/`` through :func:`easlurm.store.commit_checkpoint` every ``fusion.checkpoint_every``
iterations, at the end and on preemption (SIGUSR2/SIGTERM, as for members):

- ``attention.pt`` — only the attention-branch parameters (state-dict keys containing ``.attention.``; the frozen
  expert kernels are re-read from the members, never duplicated here);
- ``D.pt``, ``optim.pt`` (``{"att": …, "d": …}`` Adam states), ``rng.pt``;
- ``meta.json`` — iteration, sample index, the experts' G.pt sha256 (a resume refuses other experts), sha256s.

After training, each layer's softmax vector is averaged over a fixed validation set — the first ``data.val_images``
entries (sorted ids) of the val shards, the centre crop of half the height and width of each LR image, one image per
forward — renormalised to sum to 1 in float64, and the experts are merged layer by layer
(:func:`easlurm.fuse.merge.merge_from_dynamic`). The same commit then adds:

- ``attention.json`` — ``{layer name: [K weights]}`` in module order (the exact numbers the merge used);
- ``fused.pt`` — the plain backbone state dict, loadable with ``strict=True`` by ``factory.build_generator(cfg)``;

and sets ``done: true``. Rerunning a finished, verified job is a no-op (a finished job whose outputs fail their
checksums redoes only the averaging and merge). TensorBoard: the loss terms every ``min(adam.log_every,
fusion.checkpoint_every)`` iterations under ``RUN/tb/fusion``, plus each layer's averaged attention (step = layer
index in module order) and a text table of it.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from .. import factory
from ..config import Config, load_run_config
from ..errors import CheckpointError, ConfigError
from ..store import (
    RunDir, commit_checkpoint, load_verified, read_checkpoint_meta, torch_bytes, verify_checkpoint_dir,
)
from ..train import rng
from ..train.member import (
    _check_finite, batches, cpu_state, optimizer_state_cpu, pick_device, restore_training_state,
)
from ..train.preempt import Preemption
from .dynamic import attention_parameters, average_attention, dynamic_layers, make_dynamic
from .merge import merge_from_dynamic

__all__ = ["ATTENTION_KEY", "run_fusion", "load_experts", "build_fusion_model", "attention_state",
           "validation_crops", "fusion_step"]

log = logging.getLogger("easlurm.fuse")

ATTENTION_KEY = ".attention."
_SEED_TAG = 0xF05E  # separates the fusion stage's seeds from the members' (cycle, slot) seeds


def _final_cycle(cfg: Config) -> int:
    return cfg.run.cycles


def load_experts(cfg: Config, run: RunDir) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """The N final generators (CPU state dicts, checksum-verified) and their meta.json records, slot order.

    Raises :class:`CheckpointError` naming the first missing or corrupt member folder.
    """
    cycle = _final_cycle(cfg)
    states, metas = [], []
    for i in range(cfg.population.size):
        folder = run.member(cycle, i)
        meta = read_checkpoint_meta(folder)
        if meta is None:
            raise CheckpointError(f"{folder}: final member {i} not found (the final population, cycle {cycle}, is "
                                  f"written by the EA job of cycle {cycle - 1})")
        states.append(load_verified(folder, "G.pt", meta))
        metas.append(meta)
    return states, metas


def build_fusion_model(cfg: Config, expert_states: list[dict[str, torch.Tensor]]) -> nn.Module:
    """The dynamic model over the experts (attention branches freshly initialised from the current torch RNG)."""
    experts = []
    for i, sd in enumerate(expert_states):
        g = factory.build_generator(cfg)
        try:
            g.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"final member {i}: G.pt does not fit model {cfg.model.arch} "
                                  f"({str(exc).splitlines()[0]})") from exc
        experts.append(g)
    return make_dynamic(experts, cfg.fusion.att_kernel, cfg.fusion.att_channels)


def attention_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The attention-branch entries of the dynamic model's state dict (CPU copies)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if ATTENTION_KEY in k}


def _load_attention_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    own = {k: v for k, v in model.state_dict().items() if ATTENTION_KEY in k}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: attention parameters do not match the dynamic model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: {k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])


def validation_crops(cfg: Config) -> tuple[list[str], Iterator[torch.Tensor]]:
    """The averaging set: ids and (lazily) 1×3×h×w LR centre crops (half height and width), RGB in [0, 1].

    The first ``data.val_images`` entries (sorted ids) of the val shards. Raises :class:`ConfigError` when no
    val shards are configured.
    """
    from ..data.dataset import ShardReader, to_tensor

    val = factory.data_dirs(cfg)[1]
    if val is None:
        raise ConfigError("data.val: fusion needs validation shards to average the attention over (set data.val)")
    reader = ShardReader(val, scale=cfg.data.scale)
    ids = list(reader.ids)[: cfg.data.val_images]

    def crops() -> Iterator[torch.Tensor]:
        try:
            for eid in ids:
                h, w = reader.entries[eid]["lr_shape"][:2]
                ch, cw = max(1, h // 2), max(1, w // 2)
                y, x = (h - ch) // 2, (w - cw) // 2
                yield to_tensor(reader.read(eid, "lr", y, x, ch, cw)).unsqueeze(0)
        finally:
            reader.close()

    return ids, crops()


def fusion_step(cfg: Config, model: nn.Module, d: nn.Module, perceptual: nn.Module, opt_att: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, lr: torch.Tensor, hr: torch.Tensor, iteration: int = 0
                ) -> dict[str, float]:
    """One attention update on L_fuse and one discriminator update; returns the loss values (floats)."""
    from .. import losses

    kind = cfg.loss.gan_type
    d.requires_grad_(False)  # the generator-side loss must not leave gradients in D
    sr = model(lr)
    l1 = losses.l1_loss(sr, hr)
    perc = perceptual(sr, hr)
    d_fake = d(sr)
    d_real = d(hr).detach() if kind == "relativistic" else None
    gan = losses.gan_g_loss(kind, d_fake, d_real)
    total = cfg.fusion.l1_weight * l1 + cfg.loss.perceptual_weight * perc + cfg.loss.gan_weight * gan
    _check_finite("fusion", iteration, l1=l1, perceptual=perc, gan=gan)
    opt_att.zero_grad(set_to_none=True)
    total.backward()
    opt_att.step()
    opt_att.zero_grad(set_to_none=True)

    d.requires_grad_(True)
    sr_d = sr.detach()
    l_d = losses.gan_d_loss(kind, d(hr), d(sr_d))
    _check_finite("fusion", iteration, discriminator=l_d)
    opt_d.zero_grad(set_to_none=True)
    l_d.backward()
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)
    return {"l1": float(l1.detach()), "perceptual": float(perc.detach()), "gan": float(gan.detach()),
            "total": float(total.detach()), "d": float(l_d.detach())}


def _normalised(averages: dict[str, np.ndarray]) -> dict[str, list[float]]:
    # The float32 softmax rows sum to 1 only to ~1e-7; renormalising in float64 makes the written numbers exactly
    # the ones the merge uses and keeps them well inside the merge's ±1e-6 sum check.
    out = {}
    for name, vec in averages.items():
        v = np.asarray(vec, dtype=np.float64)
        out[name] = [float(x) for x in v / v.sum()]
    return out


def run_fusion(run_dir: str | Path, device: str | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) the fusion stage of a run; return the fusion folder's meta.json.

    Preemption (SIGUSR2/SIGTERM) checkpoints after the current iteration and hands the signal on, as for members.
    """
    with Preemption() as pre:
        return _run_fusion(run_dir, device, pre)


def _run_fusion(run_dir: str | Path, device: str | None, pre: Preemption) -> dict[str, Any]:
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    folder = run.fusion
    meta = read_checkpoint_meta(folder, recover=True)  # the fusion job owns RUN/fusion
    if meta is not None and meta.get("done") and verify_checkpoint_dir(folder):
        log.info("fusion already complete (%s)", folder / "fused.pt")
        return meta

    expert_states, expert_metas = load_experts(cfg, run)
    expert_sha = [m["sha256"]["G.pt"] for m in expert_metas]
    n = cfg.population.size
    d_slot = cfg.fusion.discriminator_from % n
    target = cfg.fusion.iters
    batch = cfg.fusion.batch_size

    if meta is not None and meta.get("experts_sha256") != expert_sha:
        raise CheckpointError(f"{folder}: the fusion checkpoint was made from other experts than the current "
                              f"final population (cycle {_final_cycle(cfg)}); delete {folder} to fuse again")

    dev = pick_device(device)
    torch.manual_seed(rng.derive_seed(cfg.run.seed, _SEED_TAG))
    model = build_fusion_model(cfg, expert_states)
    del expert_states
    d = factory.build_discriminator(cfg)
    if meta is None:
        d_folder = run.member(_final_cycle(cfg), d_slot)
        d.load_state_dict(load_verified(d_folder, "D.pt", expert_metas[d_slot]))
        meta = {"kind": "fusion", "iteration": 0, "sample_index": 0, "iters_target": target,
                "experts_sha256": expert_sha, "experts_cycle": _final_cycle(cfg), "discriminator_from": d_slot,
                "num_experts": n, "done": False}
        meta = commit_checkpoint(folder, {"attention.pt": torch_bytes(attention_state(model)),
                                          "D.pt": torch_bytes(cpu_state(d)),
                                          "optim.pt": torch_bytes({"att": None, "d": None})}, meta)
    else:
        _load_attention_state(model, load_verified(folder, "attention.pt", meta), folder / "attention.pt")
        d.load_state_dict(load_verified(folder, "D.pt", meta))
    model.to(dev).train()
    d.to(dev).train()
    opt_att = torch.optim.Adam(attention_parameters(model), lr=cfg.fusion.lr, betas=(0.9, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.discriminator.lr, betas=tuple(cfg.discriminator.betas))
    restore_training_state(folder, meta, {"att": opt_att, "d": opt_d})

    it0 = int(meta["iteration"])
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(log_dir=str(run.tb / "fusion"), purge_step=it0)

    def checkpoint(it: int) -> dict[str, Any]:
        files = {"attention.pt": torch_bytes(attention_state(model)), "D.pt": torch_bytes(cpu_state(d)),
                 "optim.pt": torch_bytes({"att": optimizer_state_cpu(opt_att), "d": optimizer_state_cpu(opt_d)}),
                 "rng.pt": torch_bytes(rng.capture())}
        return commit_checkpoint(folder, files, {**meta, "iteration": it, "sample_index": it * batch})

    try:
        if it0 < target:
            perceptual = factory.build_perceptual(cfg).to(dev)
            data = batches(factory.data_dirs(cfg)[0], cfg, batch, rng.derive_seed(cfg.run.seed, _SEED_TAG, 0xDA7A),
                           start_index=it0 * batch, total=target * batch, num_workers=cfg.data.num_workers)
            t_last, it_last = time.perf_counter(), it0
            log_every = max(1, min(cfg.adam.log_every, cfg.fusion.checkpoint_every))
            for it in range(it0, target):
                lr_b, hr_b = next(data)
                res = fusion_step(cfg, model, d, perceptual, opt_att, opt_d, lr_b.to(dev), hr_b.to(dev), it)
                done = it + 1
                if done % log_every == 0 or done == target:
                    now = time.perf_counter()
                    for k, v in res.items():
                        tb.add_scalar(f"loss/{k}", v, done)
                    tb.add_scalar("speed/iters_per_s", (done - it_last) / max(now - t_last, 1e-9), done)
                    t_last, it_last = now, done
                if done % cfg.fusion.checkpoint_every == 0 or done == target or pre.requested:
                    tb.flush()
                    meta = checkpoint(done)
                    log.info("fusion iteration %d/%d: %s", done, target,
                             ", ".join(f"{k} {v:.4g}" for k, v in res.items()))
                if pre.requested:
                    tb.close()
                    pre.finish()
        meta = _finish(cfg, run, model, meta, tb)
    finally:
        tb.close()
    return meta


def _finish(cfg: Config, run: RunDir, model: nn.Module, meta: dict[str, Any], tb: Any) -> dict[str, Any]:
    """Average the attention over the validation crops, merge, self-check, and commit the outputs."""
    ids, crops = validation_crops(cfg)
    if not ids:
        raise ConfigError(f"data.val: {factory.data_dirs(cfg)[1]} holds no images to average the attention over")
    averages = _normalised(average_attention(model, crops))
    merged = {k: v.detach().cpu().clone() for k, v in merge_from_dynamic(model, averages).items()}
    backbone = factory.build_generator(cfg)
    backbone.load_state_dict(merged, strict=True)  # a fused.pt that does not load must never be written
    layer_names = [name for name, _ in dynamic_layers(model)]
    for step_k, name in enumerate(layer_names):
        for k, w in enumerate(averages[name]):
            tb.add_scalar(f"attention/expert_{k:02d}", w, step_k)
    tb.add_text("attention", "\n".join(f"    {name}: " + ", ".join(f"{w:.4f}" for w in averages[name])
                                       for name in layer_names), 0)
    tb.flush()
    files = {"attention.json": (json.dumps(averages, indent=2) + "\n").encode("utf-8"),
             "fused.pt": torch_bytes(merged)}
    meta = commit_checkpoint(run.fusion, files, {**meta, "done": True, "val_ids": ids,
                                                 "attention_layers": len(layer_names)})
    log.info("fusion done: %s (%d layers averaged over %d validation crops)", run.fusion / "fused.pt",
             len(layer_names), len(ids))
    return meta
