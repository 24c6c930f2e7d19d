"""The EA-phase job (easlurm.evo.job / python -m easlurm.evo): cycles/C/members in, cycles/C+1/start out, on tiny
networks and real photo crops."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import stage_done, stage_progress
from easlurm import factory
from easlurm.config import load_config, write_config
from easlurm.errors import CheckpointError, ConfigError
from easlurm.evo import evolve as evolve_mod
from easlurm.evo import objectives as objectives_mod
from easlurm.orchestrate.runner import main as runner_main
from easlurm.evo.evolve import EAState, evolve
from easlurm.evo.job import run_ea
from easlurm.stages.ea import EADone
from easlurm.evo.pareto import hypervolume
from easlurm.population import (
    MemberMeta, after_adam, member_file, preferences, read_member, slot_mode, write_member,
)
from easlurm.store import RunDir, sha256_file
from easlurm.tensor_files import torch_bytes

REPO = Path(__file__).resolve().parents[1]
CYCLE = 1  # not 0, so zero-padded paths and the C+1 arithmetic are exercised


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 64×64 and one 96×64 crops of skimage's astronaut as a ×4 shard folder (fitness set: 16 px tiles)."""
    import skimage.data

    from easlurm.data.shards import build_shards

    img = skimage.data.astronaut()
    src = tmp_path_factory.mktemp("hr")
    Image.fromarray(img[100:164, 180:244]).save(src / "a_face.png")
    Image.fromarray(img[300:364, 60:124]).save(src / "b_suit.png")
    Image.fromarray(img[20:84, 300:396]).save(src / "c_sky.png")
    out = tmp_path_factory.mktemp("data") / "shards"
    build_shards(src, out, scale=4)
    return out


def make_run(root: Path, shards: Path, *overrides: str, n: int = 3) -> RunDir:
    """A run dir with config.yaml and finished cycle-CYCLE members (random G and D, distinct optimizer states),
    written as the member stage writes them."""
    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        "data.demo=false", f"data.train={shards}", "model.num_feat=8", "model.num_block=1",
        f"population.size={n}", "ea.generations=2", "ea.eval_batch=3", "ea.p_mutation=0.5",
        "ea.mutation_rate=0.1", "data.fitness_images=2", "data.fitness_max_tiles=3", "data.fitness_tile=16",
        "discriminator.num_feat=4", f"ea.neighbourhood={min(n, 3)}", *overrides])
    run = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    write_config(cfg, root, argv=["test"])
    prefs = preferences(n)
    for i in range(n):
        torch.manual_seed(100 + i)  # fixed, independent of the run seed: the seed test changes only the EA's draws
        g = factory.build_generator(cfg)
        d = factory.build_discriminator(cfg)
        optim = {"g": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.full((3,), float(i))}},
                       "param_groups": [{"lr": 1e-4, "params": [0]}]},
                 "d": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.full((2,), 10.0 + i)}},
                       "param_groups": [{"lr": 1e-4, "params": [0]}]}}
        files = {"G.pt": torch_bytes(g.state_dict()), "D.pt": torch_bytes(d.state_dict()),
                 "optim.pt": torch_bytes(optim)}
        # A slot that is not Adam-trained keeps its start entry through the phase (easlurm.population.after_adam).
        folder, kind = after_adam(cfg, run, CYCLE, i)
        meta = MemberMeta(kind=kind, cycle=CYCLE, slot=i, preference=prefs[i], mode=slot_mode(cfg, i),
                          origin="test", iteration=30, iters_target=30, sample_index=120, done=True)
        write_member(folder, meta, files)
    return run


def output_files(run: RunDir) -> dict[str, bytes]:
    """Every byte the EA job writes for the next cycle and its records (not the generation checkpoints), except
    done.json's ``attempts`` (when and where the phase ran: differs from run to run by design)."""
    out = {}
    for root in (run.cycle(CYCLE + 1) / "start", run.ea(CYCLE)):
        for p in sorted(root.rglob("*")):
            if p.is_file() and "progress" not in p.parts and not p.name.startswith(".lease"):
                out[run.rel(p)] = p.read_bytes()
    done = f"cycles/{CYCLE:03d}/ea/done.json"
    if done in out:
        out[done] = json.dumps({k: v for k, v in json.loads(out[done]).items() if k != "attempts"}).encode()
    return out


def mtimes(run: RunDir) -> dict[str, int]:
    return {k: (run.root / k).stat().st_mtime_ns for k in output_files(run)}


def lineage(run: RunDir) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run.ea(CYCLE) / "lineage.jsonl").read_text().splitlines()]


def record(run: RunDir) -> dict[str, Any]:
    return json.loads((run.ea(CYCLE) / "fitness.json").read_text())


def start(run: RunDir, j: int) -> MemberMeta:
    meta = read_member(run.start(CYCLE + 1, j))
    assert meta is not None
    return meta


def genome_sha(run: RunDir, j: int) -> str:
    return member_file(run.start(CYCLE + 1, j), start(run, j), "G.pt").sha256


@pytest.fixture(scope="module")
def moead_pair(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, RunDir]:
    a = make_run(tmp_path_factory.mktemp("run_a"), shards, "run.seed=5")
    b = make_run(tmp_path_factory.mktemp("run_b"), shards, "run.seed=5")
    run_ea(a.root, CYCLE)
    run_ea(b.root, CYCLE)
    return a, b


def test_same_seed_gives_identical_bytes_and_other_seed_differs(moead_pair, shards, tmp_path):
    a, b = moead_pair
    fa, fb = output_files(a), output_files(b)
    assert fa == fb
    c = make_run(tmp_path / "run_c", shards, "run.seed=6")
    run_ea(c.root, CYCLE)
    fc = output_files(c)
    assert fc["cycles/001/ea/lineage.jsonl"] != fa["cycles/001/ea/lineage.jsonl"]
    assert [genome_sha(c, j) for j in range(3)] != [genome_sha(a, j) for j in range(3)]
    # The inputs and the fitness set are the same, so the starting objectives are too.
    assert record(c)["initial"] == record(a)["initial"]


def test_start_entries_hold_new_genomes_once_and_reference_everything_else(moead_pair):
    run, _ = moead_pair
    rec = record(run)
    rows = {r["id"]: r for r in lineage(run)}
    written = []
    for j in range(3):
        folder = run.start(CYCLE + 1, j)
        meta = start(run, j)
        src = read_member(run.member(CYCLE, j))
        assert meta.kind == "start" and meta.cycle == CYCLE + 1 and meta.slot == j and meta.complete
        assert meta.preference == src.preference and meta.mode == "trained" and meta.reset_g_optimizer
        assert list(meta.ea_objectives) == rec["final"][j]  # what the EA measured, not a trained member's
        # Each slot keeps its discriminator and its optimizer states: references to cycle C's files, not copies.
        for name in ("D.pt", "optim.pt"):
            assert member_file(folder, meta, name).path == run.member(CYCLE, j) / name
            assert not (folder / name).exists()
        g = member_file(folder, meta, "G.pt")
        if meta.origin.startswith("carried:"):  # a genome that came through unchanged: its parent's file
            assert g.path == run.member(CYCLE, j) / "G.pt" and meta.origin == f"carried:{run.rel(g.path)}"
        else:
            cid = meta.origin.removeprefix("ea:")
            assert j in rows[cid]["final_slots"] and rows[cid]["checkpoint"] == run.rel(g.path)
            assert g.path.parent.parent == run.cycle(CYCLE + 1) / "start"
        if (folder / "G.pt").exists():
            written.append(sha256_file(folder / "G.pt"))
    # This seed exercises children and references (otherwise the checks above would prove little) …
    origins = [start(run, j).origin.split(":")[0] for j in range(3)]
    assert "ea" in origins
    # … and every new genome is written once, however many slots hold it.
    assert len(written) == len(set(written)) == len({genome_sha(run, j) for j in range(3)
                                                     if start(run, j).origin.startswith("ea:")})


def test_lineage_rows_resolve_to_intact_files(moead_pair):
    run, _ = moead_pair
    rows = lineage(run)
    assert [(r["generation"], r["slot"]) for r in rows] == [(g, i) for g in range(2) for i in range(3)]
    assert {o["op"] for r in rows for o in r["operators"]} >= {"sbx", "mutation"}
    assert any(r["accepted_into"] for r in rows) and any("checkpoint" in r for r in rows)
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        assert list(r) == sorted(r)
        assert r["cycle"] == CYCLE and r["id"] == f"c{CYCLE}-g{r['generation']}-s{r['slot']}"
        ops = [o["op"] for o in r["operators"]]
        assert ops == ["copy"] or set(ops) <= {"sbx", "mutation"}
        assert len(r["parents"]) == (2 if "sbx" in ops else 1)
        for p in r["parents"]:
            if "child" in p:
                assert p["child"] in seen, f"{r['id']}: parent {p['child']} is not an earlier row"
            else:
                assert p["checkpoint"] == f"cycles/{CYCLE:03d}/members/{int(p['checkpoint'][-7:-5]):02d}/G.pt"
                assert sha256_file(run.root / p["checkpoint"]) == p["sha256"]
        if "checkpoint" in r:
            assert r["checkpoint"].startswith(f"cycles/{CYCLE + 1:03d}/start/")
            assert sha256_file(run.root / r["checkpoint"]) == r["checkpoint_sha256"]
        seen[r["id"]] = r
    rec = record(run)
    assert rec["hypervolume"][-1] == pytest.approx(hypervolume(np.array(rec["final"]), rec["hypervolume_ref"]))
    assert rec["hypervolume_ref"] == pytest.approx((1.1 * np.array(rec["initial"]).max(axis=0)).tolist())
    assert len(rec["fitness_set"]["tiles"]) == 6 and len(rec["fitness_set"]["source_sha256"]) == 2
    assert (run.ea(CYCLE) / "front.png").read_bytes().startswith(b"\x89PNG")


def test_distinct_genome_counts_are_recorded(moead_pair):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = moead_pair
    rec = record(run)
    done = EADone.read(run.ea(CYCLE) / "done.json")
    distinct = len({genome_sha(run, j) for j in range(3)})
    assert len(rec["distinct_genomes"]) == 2 and rec["distinct_genomes"][-1] == distinct == done.distinct_final
    acc = EventAccumulator(str(run.tb / "ea"), size_guidance={"scalars": 0})
    acc.Reload()
    got = acc.Scalars("ea/distinct_genomes")
    assert [e.step for e in got] == [CYCLE * 2 + 1, CYCLE * 2 + 2]
    assert [int(e.value) for e in got] == rec["distinct_genomes"]


def test_done_json_is_written_last_and_a_finished_phase_is_skipped(moead_pair):
    run, _ = moead_pair
    times = mtimes(run)
    done_key = f"cycles/{CYCLE:03d}/ea/done.json"
    assert max(times.values()) == times[done_key]
    done = EADone.read(run.root / done_key)
    assert done is not None and done.cycle == CYCLE and sorted(done.starts) == ["00", "01", "02"]
    assert done.starts["01"] == sha256_file(run.start(CYCLE + 1, 1) / "meta.json")
    assert stage_done(run.root, "ea", cycle=CYCLE) and not (run.ea(CYCLE) / "progress").exists()
    assert run_ea(run.root, CYCLE) == done
    assert mtimes(run) == times  # nothing rewritten


def test_interrupted_outputs_are_rewritten_byte_identical(moead_pair, tmp_path):
    src, _ = moead_pair
    run = RunDir(tmp_path / "copy")
    shutil.copytree(src.root, run.root)  # references are relative: a copied run stays intact
    before = output_files(run)
    assert stage_done(run.root, "ea", cycle=CYCLE)
    # A kill before the commit point: done.json never written, one start entry missing, one half-written.
    (run.ea(CYCLE) / "done.json").unlink()
    shutil.rmtree(run.start(CYCLE + 1, 2))
    (run.start(CYCLE + 1, 1) / ".staging").mkdir()
    (run.start(CYCLE + 1, 1) / ".staging" / "G.pt").write_bytes(b"half")
    assert not stage_done(run.root, "ea", cycle=CYCLE)
    run_ea(run.root, CYCLE)
    assert output_files(run) == before and stage_done(run.root, "ea", cycle=CYCLE)


class _StopAfterGeneration(logging.Handler):
    """Sends this process SIGUSR2 when the job logs the end of a generation: a real signal at a fixed point."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            os.kill(os.getpid(), signal.SIGUSR2)


def test_ea_resumes_at_its_next_generation_after_being_stopped(shards, tmp_path, monkeypatch):
    over = ("run.seed=5", "ea.generations=3", "ea.checkpoint_every=1")
    straight = make_run(tmp_path / "straight", shards, *over)
    stopped = make_run(tmp_path / "stopped", shards, *over)
    full = run_ea(straight.root, CYCLE)

    logger = logging.getLogger("easlurm.evo")
    handler = _StopAfterGeneration(f"cycle {CYCLE} generation 2/3")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        with pytest.raises(SystemExit) as exc:
            run_ea(stopped.root, CYCLE)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert exc.value.code == 128 + signal.SIGUSR2
    assert stage_progress(stopped.root, "ea", cycle=CYCLE) == 2 and not stage_done(stopped.root, "ea", cycle=CYCLE)
    assert not stopped.cycle(CYCLE + 1).exists()  # the start entries are written after the last generation

    calls: list[int] = []
    real_call = objectives_mod.Objectives.__call__

    def counting(self, genome):
        calls.append(1)
        return real_call(self, genome)

    monkeypatch.setattr(objectives_mod.Objectives, "__call__", counting)
    resumed = run_ea(stopped.root, CYCLE)
    assert output_files(stopped) == output_files(straight)  # byte-identical to the uninterrupted phase
    assert dataclasses.replace(resumed, attempts=[]) == dataclasses.replace(full, attempts=[])
    assert [(a["first"], a["last"]) for a in resumed.attempts] == [(0, 2), (2, 3)]  # two processes, by generation
    # Only the last generation's children were evaluated again: not the population, not generations 0-1.
    last = [r for r in lineage(straight) if r["generation"] == 2 and r["operators"] != [{"op": "copy"}]]
    assert len(calls) == len(last) < full.evaluations - 3
    assert not (stopped.ea(CYCLE) / "progress").exists()


@pytest.mark.parametrize("selection,n", [("nsga2", 3), ("nsga2", 2), ("moead", 3), ("moead", 2)])
def test_frozen_slot_is_never_replaced(selection, n, shards, tmp_path):
    run = make_run(tmp_path / "run", shards, f"ea.selection={selection}", "population.member0=frozen",
                   "ea.reset_adam=false", "ea.generations=3", n=n)
    run_ea(run.root, CYCLE)
    meta0 = start(run, 0)
    assert meta0.mode == "frozen" and meta0.origin == f"carried:cycles/{CYCLE:03d}/start/00/G.pt"
    assert member_file(run.start(CYCLE + 1, 0), meta0, "G.pt").path == run.start(CYCLE, 0) / "G.pt"
    rows = lineage(run)
    assert len(rows) == 3 * n and all(0 not in r["accepted_into"] for r in rows)
    rec = record(run)
    assert rec["final"][0] == rec["initial"][0]
    assert all(not start(run, j).reset_g_optimizer for j in range(n))  # ea.reset_adam: false
    if selection == "nsga2":
        final = np.array(rec["final"])
        assert np.all(np.diff(final[1:, 0]) >= 0), "nsga2 survivors go to slots 1.. by ascending f1"
    # Every final objective is a parent's or a finite child's: nothing invented.
    known = {tuple(f) for f in rec["initial"]} | {tuple(r["objectives"]) for r in rows if r["objectives"]}
    assert all(tuple(f) in known for f in rec["final"])


def test_identity_selection_passes_the_population_through(shards, tmp_path):
    run = make_run(tmp_path / "run", shards, "ea.selection=identity")
    done = run_ea(run.root, CYCLE)
    assert lineage(run) == []
    rec = record(run)
    assert rec["final"] == rec["initial"] and rec["hypervolume"] == [] and done.evaluations == 3
    for j in range(3):
        meta = start(run, j)
        assert meta.origin == f"carried:cycles/{CYCLE:03d}/members/{j:02d}/G.pt"
        assert member_file(run.start(CYCLE + 1, j), meta, "G.pt").path == run.member(CYCLE, j) / "G.pt"
        assert sorted(p.name for p in run.start(CYCLE + 1, j).iterdir()) == ["meta.json"]
    assert done.distinct_final == 3 and done.hypervolume_final == done.hypervolume_initial


@pytest.mark.parametrize("cap", [None, 1])
def test_max_replacements_caps_moead_replacements(cap, shards, tmp_path):
    over = ["run.seed=3", "ea.generations=3", "ea.p_crossover=1", "ea.p_mutation=0", "population.size=4"]
    run = make_run(tmp_path / "run", shards, *over, *([f"ea.max_replacements={cap}"] if cap else []), n=4)
    run_ea(run.root, CYCLE)
    most = max(len(r["accepted_into"]) for r in lineage(run))
    if cap is None:
        assert most >= 2  # without a cap (the reference) one child takes several slots here …
    else:
        assert most == cap  # … with it, no child takes more than ea.max_replacements


def test_non_finite_children_are_rejected(shards, tmp_path):
    run = make_run(tmp_path / "run", shards, "ea.p_crossover=0", "ea.p_mutation=1", "ea.mutation_rate=1",
                   "ea.mutation_sigma=1e30")
    run_ea(run.root, CYCLE)
    rows = lineage(run)
    assert rows and all(r["objectives"] is None and "non-finite" in r["rejected"] for r in rows)
    assert all(r["accepted_into"] == [] for r in rows)
    for j in range(3):
        assert start(run, j).origin == f"carried:cycles/{CYCLE:03d}/members/{j:02d}/G.pt"
    rec = record(run)
    assert rec["final"] == rec["initial"] and rec["rejected"] == [3, 3]


def test_missing_or_unfinished_member_is_named_with_the_stage_that_writes_it(shards, tmp_path, capsys):
    run = make_run(tmp_path / "run", shards)
    folder = run.member(CYCLE, 1)
    meta = read_member(folder)
    write_member(folder, MemberMeta(**{**meta.to_dict(), "done": False, "iteration": 12,
                                       "preference": meta.preference}))
    with pytest.raises(CheckpointError, match=rf"^{folder}: not complete \(written by the Adam phase of cycle "
                                              rf"{CYCLE}; iteration 12 of 30\)$"):
        run_ea(run.root, CYCLE)
    shutil.rmtree(folder)
    with pytest.raises(CheckpointError, match=rf"^{folder}: not found \(written by the Adam phase of cycle {CYCLE}\)$"):
        run_ea(run.root, CYCLE)
    assert runner_main([str(run.root), f"ea/{CYCLE:03d}", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("easlurm: error: ") and "members/01: not found" in err[0]
    assert not (run.ea(CYCLE) / "done.json").exists() and not run.cycle(CYCLE + 1).exists()
    with pytest.raises(ConfigError, match=r"cycle 3: the run's EA phases are cycles 0\.\.2"):
        run_ea(run.root, 3)


def test_nsga2_copy_children_never_duplicate_a_genome():
    """With crossover and mutation off every child is a copy of its parent: NSGA-II must keep the population as
    it was (a copy competing in the pool could take a second slot and duplicate a genome)."""
    ea = load_config(None, ["data.train=x", "ea.selection=nsga2", "ea.p_crossover=0", "ea.p_mutation=0",
                            "ea.generations=3"]).ea
    genomes = [{"w": torch.full((2, 2), float(k))} for k in range(4)]
    F = np.array([[0.1, 0.9], [0.2, 0.5], [0.3, 0.4], [0.9, 0.1]])
    refs = [{"checkpoint": f"m{k}", "sha256": str(k)} for k in range(4)]
    st = EAState.initial(genomes, F, refs)

    def never(genome):
        raise AssertionError("copies are not re-evaluated")

    evolve(st, np.array(preferences(4)), ea, cycle=0, run_seed=0, evaluate=never)
    assert [float(g["w"][0, 0]) for g in st.genomes] == [0.0, 1.0, 2.0, 3.0]
    assert all(row["accepted_into"] == [] for row in st.rows) and st.generation == 3
    assert st.distinct == [4, 4, 4] and evolve_mod.distinct_genomes(st.refs) == 4
