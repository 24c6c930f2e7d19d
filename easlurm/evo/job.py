"""The EA-phase job of one cycle (DESIGN.md §2 "EA phase", §4): ``cycles/C/members`` in, ``cycles/C+1/start`` out.

``run_ea(RUN, C)`` reads the N finished members of cycle C, evolves their generators for ``ea.generations``
generations (:func:`easlurm.evo.evolve.evolve`) and writes, once:

- ``cycles/C+1/start/J/`` — slot J's start entry for the next Adam phase: ``G.pt`` (the EA's genome for slot J; a
  genome that came through unchanged, or that several slots share, is a *reference* to the file that already holds
  it), ``D.pt`` and ``optim.pt`` as references to cycle C slot J's files (each slot keeps its discriminator and its
  D optimizer state; the generator moments are reset when ``ea.reset_adam``) and ``meta.json``;
- ``cycles/C/ea/fitness.json`` — fitness tiles and their source hashes, the perceptual net, initial and final
  objectives, z_min/z_max, hypervolume and distinct genomes per generation;
- ``cycles/C/ea/lineage.jsonl`` — one row per child (:func:`~easlurm.evo.evolve.evolve`); every checkpoint a row
  names (``parents[].checkpoint``, ``checkpoint``) is a write-once file that stays valid for the life of the run;
- ``cycles/C/ea/front.png`` and ``RUN/tb/ea`` (scalars per generation, the front as an image);
- ``cycles/C/ea/done.json`` — written last (the commit point): sha256 of the records and of each start entry.

Idempotent and restartable: :func:`is_done` (the launcher's check too) makes a finished phase a no-op; an
interrupted one resumes from its last generation checkpoint (``cycles/C/ea/progress/``, every
``ea.checkpoint_every`` generations and on SIGUSR2/SIGTERM) — every random draw comes from a per-child seed, so the
result is byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .. import factory
from ..checkpoints import FileRef, commit_checkpoint, read_checkpoint_meta, ref_in_run
from ..config import Config, load_run_config
from ..engine.context import StageContext, stage_context
from ..errors import CheckpointError, ConfigError
from ..leases import Lease
from ..models.specs import generator_spec
from ..population import MemberMeta, after_adam, member_file, require_member, slot_mode, write_member
from ..runtime import deterministic_cudnn
from ..stages.ea import RECORD_FILES, EADone, done_record
from ..store import RunDir, atomic_write_bytes, atomic_write_json, sha256_file
from ..tensor_files import load_verified, torch_bytes
from .evolve import HV_REF_FACTOR, EAState, distinct_genomes, evolve
from .genes import GenePlan, gene_plan
from .objectives import OBJECTIVE_NAMES, FitnessSet, Objectives
from .operators import Genome
from .pareto import hypervolume
from .plot import plot_front
from .selection import MoeadState

__all__ = ["run_ea"]

log = logging.getLogger("easlurm.evo")


def _cpu_genome(genome: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in genome.items()}


# ----------------------------------------------------------------------------------------------------------------
# Generation checkpoints


def _save_progress(folder: Path, st: EAState, F0: np.ndarray, evaluations: int, attempts: list[dict[str, Any]],
                   lease: Lease) -> None:
    unique: list[Genome] = []
    index: list[int] = []
    for gnm in st.genomes:
        k = next((u for u, other in enumerate(unique) if other is gnm), None)
        if k is None:
            unique.append(gnm)
            k = len(unique) - 1
        index.append(k)
    state = {"generation": st.generation, "F": st.F.tolist(), "F0": F0.tolist(), "refs": st.refs,
             "slots": index, "z": st.z.to_dict(), "z_initial": st.z_initial.to_dict(), "hv_ref": st.hv_ref,
             "children_F": [list(f) for f in st.children_F], "hypervolume": st.hypervolume,
             "accepted": st.accepted, "rejected": st.rejected, "distinct": st.distinct,
             "evaluations": evaluations, "attempts": attempts}
    commit_checkpoint(folder, {"genomes.pt": torch_bytes([_cpu_genome(g) for g in unique]),
                               "rows.jsonl": "".join(json.dumps(r, sort_keys=True) + "\n"
                                                     for r in st.rows).encode("utf-8"),
                               "state.json": json.dumps(state, sort_keys=True).encode("utf-8")},
                      {"kind": "ea-progress", "generation": st.generation, "attempts": attempts}, fence=lease.check)
    log.info("EA checkpoint after generation %d (%s)", st.generation, folder)


def _load_progress(folder: Path, device: torch.device
                   ) -> tuple[EAState, np.ndarray, int, list[dict[str, Any]]] | None:
    meta = read_checkpoint_meta(folder, recover=True)
    if meta is None:
        return None
    try:
        unique = load_verified(folder, "genomes.pt", meta)
    except CheckpointError as exc:
        log.warning("%s; redoing the EA phase from generation 0", exc)
        shutil.rmtree(folder)
        return None
    path = folder / "state.json"
    if sha256_file(path) != meta["sha256"]["state.json"] or sha256_file(folder / "rows.jsonl") != \
            meta["sha256"]["rows.jsonl"]:
        # The phase is deterministic: a damaged checkpoint only costs the generations since the phase's start.
        log.warning("%s: EA checkpoint fails its sha256; redoing the phase from generation 0", folder)
        shutil.rmtree(folder)
        return None
    s = json.loads(path.read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text(encoding="utf-8").splitlines() if line]
    genomes_dev = [{k: v.to(device) for k, v in g.items()} for g in unique]
    st = EAState([genomes_dev[k] for k in s["slots"]], np.array(s["F"], dtype=np.float64), s["refs"],
                 MoeadState.from_dict(s["z"]), MoeadState.from_dict(s["z_initial"]), s["hv_ref"],
                 generation=s["generation"], rows=rows, children_F=[tuple(f) for f in s["children_F"]],
                 hypervolume=s["hypervolume"], accepted=s["accepted"], rejected=s["rejected"],
                 distinct=s["distinct"])
    return st, np.array(s["F0"], dtype=np.float64), int(s.get("evaluations", 0)), list(s.get("attempts", []))


# ----------------------------------------------------------------------------------------------------------------
# The job


def run_ea(run_dir: str | os.PathLike[str], cycle: int, device: str | None = None) -> EADone:
    """Run (or resume, or skip when already complete) the EA phase of ``cycle``; return its done record.

    ``device`` defaults to CUDA when available, else CPU. Raises :class:`CheckpointError` naming the member folder
    when a cycle-C member is missing, corrupt or unfinished, and :class:`ConfigError` for unusable settings.
    """
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    n = cfg.population.size
    ea = cfg.ea
    if not 0 <= cycle < cfg.run.cycles:
        raise ConfigError(f"cycle {cycle}: the run's EA phases are cycles 0..{cfg.run.cycles - 1}")
    if ea.p_crossover > 0 and ea.p_global_partner < 1 and min(ea.neighbourhood, n) < 2:
        raise ConfigError(f"ea.neighbourhood: {ea.neighbourhood} leaves no crossover partner inside B(i); use >= 2")
    done = done_record(cfg, run, cycle, full=True)
    if done is not None:
        log.info("cycle %d EA phase already complete (%s)", cycle, run.ea(cycle) / "done.json")
        return done
    with stage_context(run, cfg, run.ea(cycle), f"EA phase of cycle {cycle}", device) as ctx:
        return _run_ea(ctx, cycle)


def _run_ea(ctx: StageContext, cycle: int) -> EADone:
    run, cfg, dev, pre, lease = ctx.run, ctx.cfg, ctx.device, ctx.preempt, ctx.lease
    n, ea = cfg.population.size, cfg.ea
    members = []
    for j in range(n):
        folder, kind = after_adam(cfg, run, cycle, j)
        hint = (f"written by the Adam phase of cycle {cycle}" if kind == "member"
                else "written by the init stage" if cycle == 0 else f"written by the EA phase of cycle {cycle - 1}")
        members.append((folder, require_member(folder, kind, ("G.pt", "D.pt"), hint)))
    progress = run.ea(cycle) / "progress"
    with deterministic_cudnn():
        model = factory.build_generator(cfg).to(dev).eval()
        genes = gene_plan(model, generator_spec(cfg.model.arch).ea_genes)
        perceptual = factory.build_perceptual(cfg).to(dev).eval()
        fitness = FitnessSet.from_config(cfg)
        objective = Objectives(model, perceptual, fitness.to(dev), ea.eval_batch, cfg.data.fitness_mean)
        resumed = _load_progress(progress, dev)
        if resumed is None:
            genomes, refs = [], []
            for folder, meta in members:
                sd = load_verified(folder, "G.pt", meta.store)
                try:
                    model.load_state_dict(sd, strict=True)
                except RuntimeError as exc:
                    raise CheckpointError(f"{folder / 'G.pt'}: does not fit the configured {cfg.model.arch} "
                                          f"({str(exc).splitlines()[0]})") from exc
                genes.check_buffers(sd, str(folder / "G.pt"))
                genomes.append({k: v.to(dev) for k, v in genes.genome(sd).items()})
                ref = member_file(folder, meta, "G.pt")
                refs.append({"checkpoint": run.rel(ref.path), "sha256": ref.sha256})
            F0 = np.array(objective.many(genomes) if ea.batch_children else [objective(g) for g in genomes],
                          dtype=np.float64)
            for (folder, _), f in zip(members, F0):
                if not np.isfinite(f).all():
                    raise CheckpointError(f"{folder}: generator has non-finite objectives {f.tolist()} on the "
                                          f"fitness set (diverged?)")
            st = EAState.initial(genomes, F0, refs)
            before, earlier = 0, list[dict[str, Any]]()
        else:
            st, F0, before, earlier = resumed
            log.info("cycle %d EA phase: resuming after generation %d", cycle, st.generation)
        attempt = ctx.attempt_log(earlier, st.generation)
        attempt.loop_started()
        weights = np.array([m.preference for _, m in members], dtype=np.float64)
        fixed = [j for j in range(n) if slot_mode(cfg, j) == "frozen"]
        log.info("cycle %d EA phase: %d members, %d generations, %s selection, %d fitness tiles, on %s",
                 cycle, n, ea.generations, ea.selection, len(fitness), dev)
        step0 = cycle * ea.generations
        tb = ctx.writer(run.tb / "ea", purge_step=step0 + st.generation + 1)

        def on_generation(g: int, s: EAState) -> None:
            step = step0 + g + 1
            for tag, val in (("hypervolume", s.hypervolume[-1]), ("accepted", s.accepted[-1]),
                             ("rejected", s.rejected[-1]), ("distinct_genomes", s.distinct[-1])):
                tb.add_scalar(f"ea/{tag}", val, step)
            for j in range(n):
                tb.add_scalar(f"ea/slot_{j:02d}/f1_l1", float(s.F[j, 0]), step)
                tb.add_scalar(f"ea/slot_{j:02d}/f2_perceptual", float(s.F[j, 1]), step)
            log.info("cycle %d generation %d/%d: hypervolume %.6g, accepted %d, rejected %d, distinct %d", cycle,
                     g + 1, ea.generations, s.hypervolume[-1], s.accepted[-1], s.rejected[-1], s.distinct[-1])
            last = s.generation >= ea.generations
            if not last and (s.generation % ea.checkpoint_every == 0 or pre.requested):
                tb.flush()
                _save_progress(progress, s, F0, before + objective.calls, attempt.entries(s.generation), lease)
            if pre.requested and not last:
                tb.close()
                pre.finish()

        evolve(st, weights, ea, cycle=cycle, run_seed=cfg.run.seed, fixed=fixed, evaluate=objective,
               on_generation=on_generation, genes=genes,
               evaluate_many=objective.many if ea.batch_children else None)
        record = _write_outputs(run, cfg, cycle, members, st, F0, fitness, perceptual, before + objective.calls,
                                attempt.entries(st.generation), lease, genes)
        _tb_front(tb, (run.ea(cycle) / "front.png").read_bytes(), step0 + ea.generations)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(progress)
    return record


def _tb_front(tb: Any, png: bytes, step: int) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(png), formats=["PNG"]) as im:
        tb.add_image("ea/front", np.asarray(im.convert("RGB")), step, dataformats="HWC")
    tb.flush()


def _write_outputs(run: RunDir, cfg: Config, cycle: int, members: list[tuple[Path, MemberMeta]], st: EAState,
                   F0: np.ndarray, fitness: FitnessSet, perceptual: Any, evaluations: int,
                   attempts: list[dict[str, Any]], lease: Lease, genes: GenePlan) -> EADone:
    """Start entries of cycle C+1 first, then the phase's records, done.json last (the commit point). A new
    genome is written as the full state dict (its buffers put back, :meth:`GenePlan.complete`)."""
    n, ea = cfg.population.size, cfg.ea
    rows_by_id = {r["id"]: r for r in st.rows}
    written: dict[str, FileRef] = {}        # child id → where its genome was first written
    starts: dict[str, str] = {}
    for j in range(n):
        src_folder, src = members[j]
        ref = st.refs[j]
        refs = {"D.pt": member_file(src_folder, src, "D.pt")}
        if "optim.pt" in src.files.get("sha256", {}):
            refs["optim.pt"] = member_file(src_folder, src, "optim.pt")
        files: dict[str, bytes] = {}
        if "child" in ref:
            cid = ref["child"]
            origin = f"ea:{cid}"
            if cid in written:
                refs["G.pt"] = written[cid]
            else:
                files["G.pt"] = torch_bytes(_cpu_genome(genes.complete(st.genomes[j])))
        else:
            origin = f"carried:{ref['checkpoint']}"
            refs["G.pt"] = ref_in_run(run.root, ref["checkpoint"], ref["sha256"])
        meta = MemberMeta(kind="start", cycle=cycle + 1, slot=j, preference=src.preference, mode=slot_mode(cfg, j),
                          origin=origin, ea_objectives=(float(st.F[j, 0]), float(st.F[j, 1])),
                          reset_g_optimizer=ea.reset_adam)
        folder = run.start(cycle + 1, j)
        out = write_member(folder, meta, files, refs, fence=lease.check)
        g_ref = member_file(folder, out, "G.pt")
        if "child" in ref:
            row = rows_by_id[ref["child"]]
            if ref["child"] not in written:
                written[ref["child"]] = g_ref
                row["checkpoint"], row["checkpoint_sha256"] = run.rel(g_ref.path), g_ref.sha256
            row.setdefault("final_slots", []).append(j)
        starts[f"{j:02d}"] = sha256_file(folder / "meta.json")

    ea_dir = run.ea(cycle)
    atomic_write_bytes(ea_dir / "lineage.jsonl",
                       "".join(json.dumps(r, sort_keys=True) + "\n" for r in st.rows).encode("utf-8"))
    hv0 = hypervolume(F0, st.hv_ref)
    record = {
        "cycle": cycle, "selection": ea.selection, "generations": ea.generations, "population": n,
        "seed": cfg.run.seed, "objectives": list(OBJECTIVE_NAMES), "objective_mean": cfg.data.fitness_mean,
        "perceptual": {"net": getattr(perceptual, "net", None), "layers": dict(cfg.loss.perceptual.layers)},
        "fitness_set": {"tile": cfg.data.fitness_tile, "scale": cfg.data.scale, **fitness.describe()},
        "eval_batch": ea.eval_batch, "initial": F0.tolist(), "final": st.F.tolist(),
        "preferences": [list(m.preference) for _, m in members],
        "z_initial": st.z_initial.to_dict(), "z_final": st.z.to_dict(),
        "hypervolume_ref": st.hv_ref, "hypervolume_ref_rule": f"{HV_REF_FACTOR} x initial max per objective",
        "hypervolume_initial": hv0, "hypervolume": st.hypervolume, "accepted": st.accepted,
        "rejected": st.rejected, "distinct_genomes": st.distinct, "evaluations": evaluations,
    }
    atomic_write_json(ea_dir / "fitness.json", record)
    png = plot_front(F0, st.F, st.children_array, f"EA phase of cycle {cycle} ({ea.selection}, {ea.generations} "
                                                  f"generations, N={n})")
    atomic_write_bytes(ea_dir / "front.png", png)
    done = EADone(cycle=cycle, outputs={name: sha256_file(ea_dir / name) for name in RECORD_FILES},
                  sizes={name: (ea_dir / name).stat().st_size for name in RECORD_FILES}, starts=starts,
                  hypervolume_initial=hv0, hypervolume_final=st.hypervolume[-1] if st.hypervolume else hv0,
                  distinct_final=distinct_genomes(st.refs), evaluations=evaluations, attempts=attempts,
                  iteration=st.generation, iters_target=ea.generations)
    lease.check()
    atomic_write_json(ea_dir / "done.json", done.to_dict())
    log.info("cycle %d EA phase done: hypervolume %.6g → %.6g, %d distinct genomes, %d evaluations", cycle,
             done.hypervolume_initial, done.hypervolume_final, done.distinct_final, evaluations)
    return done
