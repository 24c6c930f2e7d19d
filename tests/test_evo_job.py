"""The EA-phase job (easlurm.evo.job / python -m easlurm.evo) on tiny networks and real photo crops."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from easlurm import factory
from easlurm.config import load_config, load_run_config, write_config
from easlurm.errors import CheckpointError
from easlurm.evo.__main__ import main as evo_main
from easlurm.evo.job import run_ea
from easlurm.evo.pareto import hypervolume
from easlurm.store import (
    RunDir, commit_checkpoint, load_checkpoint, read_checkpoint_meta, sha256_file, torch_bytes,
)

CYCLE = 1  # not 0, so zero-padded paths and the C+1 arithmetic are exercised


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from threads, and on a shared machine spinning threads cost 10×."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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
    """A run dir with config.yaml and finished cycle-CYCLE members (random G and D, distinct optimizer states)."""
    cfg = load_config("configs/tiny.yaml", [
        "data.demo=false", f"data.train={shards}", "model.num_feat=8", "model.num_block=1",
        f"population.size={n}", "ea.generations=2", "ea.eval_batch=3", "ea.p_mutation=0.5",
        "ea.mutation_rate=0.1", "data.fitness_images=2", "data.fitness_max_tiles=3", "data.fitness_tile=16",
        "discriminator.num_feat=4", f"ea.neighbourhood={min(n, 3)}", *overrides])
    run = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    write_config(cfg, root, argv=["test"])
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
        meta = {"kind": "member", "cycle": CYCLE, "slot": i, "preference": [1 - i / (n - 1), i / (n - 1)],
                "iteration": 30, "sample_index": 120, "iters_target": 30, "frozen": False, "origin": "test",
                "done": True}
        commit_checkpoint(run.member(CYCLE, i), files, meta)
    return run


def output_files(run: RunDir, n: int = 3) -> dict[str, bytes]:
    """Every byte the EA job must reproduce: C+1 member files, lineage, fitness record, plot."""
    out = {}
    for j in range(n):
        folder = run.member(CYCLE + 1, j)
        for name in ("G.pt", "D.pt", "optim.pt", "meta.json"):
            out[f"{j}/{name}"] = (folder / name).read_bytes()
    for name in ("lineage.jsonl", "fitness.json", "front.png", "done.json"):
        out[name] = (run.ea(CYCLE) / name).read_bytes()
    return out


def assert_same_genome(a: Path, b: Path) -> None:
    ga, gb = load_checkpoint(a), load_checkpoint(b)
    assert list(ga) == list(gb)
    assert all(torch.equal(ga[k], gb[k]) for k in ga)


def lineage(run: RunDir) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run.ea(CYCLE) / "lineage.jsonl").read_text().splitlines()]


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
    assert fc["lineage.jsonl"] != fa["lineage.jsonl"]
    assert any(fc[f"{j}/G.pt"] != fa[f"{j}/G.pt"] for j in range(3))
    # The inputs and the fitness set are the same, so the starting objectives are too.
    assert json.loads(fc["fitness.json"])["initial"] == json.loads(fa["fitness.json"])["initial"]


def test_lineage_resolves_and_outputs_are_consistent(moead_pair):
    run, _ = moead_pair
    rows = lineage(run)
    assert [(r["generation"], r["slot"]) for r in rows] == [(g, i) for g in range(2) for i in range(3)]
    # This seed exercises both operators and some replacements (otherwise the checks below would prove little).
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
                assert p["checkpoint"].startswith(f"cycles/{CYCLE:03d}/members/")
                assert sha256_file(run.root / p["checkpoint"]) == p["sha256"]
        if "checkpoint" in r:
            path = run.root / r["checkpoint"]
            assert r["checkpoint"].startswith(f"cycles/{CYCLE + 1:03d}/members/")
            assert sha256_file(path) == r["checkpoint_sha256"]
        seen[r["id"]] = r
    # C+1 members: meta describes a fresh Adam phase; origin is a lineage row with a checkpoint, or a cycle-C member.
    record = json.loads((run.ea(CYCLE) / "fitness.json").read_text())
    for j in range(3):
        folder = run.member(CYCLE + 1, j)
        meta = read_checkpoint_meta(folder)
        assert meta["cycle"] == CYCLE + 1 and meta["slot"] == j and meta["done"] is False
        assert meta["iteration"] == 0 and meta["preference"] == [1 - j / 2, j / 2]
        assert meta["objectives"] == record["final"][j]
        if meta["origin"] in seen:
            assert j in seen[meta["origin"]]["final_slots"]
            assert seen[meta["origin"]]["objectives"] == meta["objectives"]
        else:
            assert meta["origin"].startswith(f"cycles/{CYCLE:03d}/members/")
        # Each slot keeps its discriminator and its D optimizer state; G moments are reset (ea.reset_adam).
        assert (folder / "D.pt").read_bytes() == (run.member(CYCLE, j) / "D.pt").read_bytes()
        optim = load_checkpoint(folder / "optim.pt")
        assert optim["g"] is None
        assert torch.equal(optim["d"]["state"][0]["exp_avg"], torch.full((2,), 10.0 + j))
    # The recorded hypervolume is that of the final objectives, against the documented reference point.
    assert record["hypervolume"][-1] == pytest.approx(hypervolume(np.array(record["final"]), record["hypervolume_ref"]))
    assert record["hypervolume_ref"] == pytest.approx((1.1 * np.array(record["initial"]).max(axis=0)).tolist())
    assert len(record["fitness_set"]["tiles"]) == 6 and len(record["fitness_set"]["source_sha256"]) == 2
    assert (run.ea(CYCLE) / "front.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (run.tb / "ea").iterdir())


def test_idempotent_rerun_and_resume_after_a_kill(moead_pair):
    run, _ = moead_pair
    before = output_files(run)
    done = run.ea(CYCLE) / "done.json"
    mtime = done.stat().st_mtime_ns
    assert run_ea(run.root, CYCLE)["skipped"] is True
    assert done.stat().st_mtime_ns == mtime
    # A kill halfway: done.json never written, one C+1 member missing, another one's G.pt corrupted.
    done.unlink()
    for name in sorted(p.name for p in run.member(CYCLE + 1, 2).iterdir()):
        (run.member(CYCLE + 1, 2) / name).unlink()
    (run.member(CYCLE + 1, 1) / "G.pt").write_bytes(b"half")
    assert run_ea(run.root, CYCLE)["skipped"] is False
    assert output_files(run) == before
    # A C+1 member already advanced by the next Adam phase does not make the finished EA phase redo itself.
    meta = read_checkpoint_meta(run.member(CYCLE + 1, 0))
    commit_checkpoint(run.member(CYCLE + 1, 0), {}, {**meta, "iteration": 5})
    assert run_ea(run.root, CYCLE)["skipped"] is True


@pytest.mark.parametrize("selection,n", [("nsga2", 3), ("nsga2", 2), ("moead", 2)])
def test_freeze_first_keeps_slot0_and_each_slot_keeps_its_d(selection, n, shards, tmp_path):
    run = make_run(tmp_path / "run", shards, f"ea.selection={selection}", "population.freeze_first=true",
                   "ea.reset_adam=false", "ea.generations=3", n=n)
    run_ea(run.root, CYCLE)
    new0, old0 = run.member(CYCLE + 1, 0), run.member(CYCLE, 0)
    assert_same_genome(new0 / "G.pt", old0 / "G.pt")
    meta0 = read_checkpoint_meta(new0)
    assert meta0["frozen"] is True and meta0["origin"] == f"cycles/{CYCLE:03d}/members/00"
    rows = lineage(run)
    assert all(0 not in r["accepted_into"] for r in rows)
    assert len(rows) == 3 * n
    for j in range(n):
        assert (run.member(CYCLE + 1, j) / "D.pt").read_bytes() == (run.member(CYCLE, j) / "D.pt").read_bytes()
        optim = load_checkpoint(run.member(CYCLE + 1, j) / "optim.pt")
        assert torch.equal(optim["g"]["state"][0]["exp_avg"], torch.full((3,), float(j)))  # reset_adam: false
    record = json.loads((run.ea(CYCLE) / "fitness.json").read_text())
    final = np.array(record["final"])
    if selection == "nsga2":
        assert np.all(np.diff(final[1:, 0]) >= 0), "nsga2 survivors go to slots 1.. by ascending f1"
    # Every final objective is a parent's or a finite child's: nothing invented.
    known = {tuple(f) for f in record["initial"]} | {tuple(r["objectives"]) for r in rows if r["objectives"]}
    assert all(tuple(f) in known for f in record["final"])


def test_non_finite_children_are_rejected(shards, tmp_path):
    run = make_run(tmp_path / "run", shards, "ea.p_crossover=0", "ea.p_mutation=1", "ea.mutation_rate=1",
                   "ea.mutation_sigma=1e30")
    run_ea(run.root, CYCLE)
    rows = lineage(run)
    assert rows and all(r["objectives"] is None and "non-finite" in r["rejected"] for r in rows)
    assert all(r["accepted_into"] == [] for r in rows)
    for j in range(3):
        assert_same_genome(run.member(CYCLE + 1, j) / "G.pt", run.member(CYCLE, j) / "G.pt")
    record = json.loads((run.ea(CYCLE) / "fitness.json").read_text())
    assert record["final"] == record["initial"] and record["rejected"] == [3, 3]


def test_missing_or_unfinished_member_is_named(shards, tmp_path, capsys):
    run = make_run(tmp_path / "run", shards)
    folder = run.member(CYCLE, 1)
    meta = read_checkpoint_meta(folder)
    commit_checkpoint(folder, {}, {**meta, "done": False, "iteration": 12})
    with pytest.raises(CheckpointError, match=r"members/01.*not done"):
        run_ea(run.root, CYCLE)
    for name in sorted(p.name for p in folder.iterdir()):
        (folder / name).unlink()
    with pytest.raises(CheckpointError, match=r"members/01.*not found"):
        run_ea(run.root, CYCLE)
    assert evo_main(["--run", str(run.root), "--cycle", str(CYCLE)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "members/01" in err[0] and err[0].startswith("easlurm.evo: error:")
    assert not (run.ea(CYCLE) / "done.json").exists()
    assert not run.member(CYCLE + 1, 0).exists()
    assert load_run_config(run.root).population.size == 3


def test_nsga2_copy_children_never_duplicate_a_genome(tmp_path):
    """With crossover and mutation off every child is a copy of its parent: NSGA-II must keep the population as
    it was (a copy competing in the pool could take a second slot and duplicate a genome)."""
    import numpy as np

    from easlurm.config import load_config
    from easlurm.evo.job import evolve

    ea = load_config(None, ["data.train=x", "ea.selection=nsga2", "ea.p_crossover=0", "ea.p_mutation=0",
                            "ea.generations=3"]).ea
    genomes = [{"w": torch.full((2, 2), float(k))} for k in range(4)]
    F = np.array([[0.1, 0.9], [0.2, 0.5], [0.3, 0.4], [0.9, 0.1]])
    refs = [{"checkpoint": f"m{k}"} for k in range(4)]
    weights = np.array([[1, 0], [2 / 3, 1 / 3], [1 / 3, 2 / 3], [0, 1]], dtype=float)
    res = evolve(list(genomes), F.copy(), list(refs), weights, ea, cycle=0, run_seed=0, freeze_first=False,
                 evaluate=lambda g: (_ for _ in ()).throw(AssertionError("copies are not re-evaluated")))
    assert [float(g["w"][0, 0]) for g in res.genomes] == [0.0, 1.0, 2.0, 3.0]
    assert all(row["accepted_into"] == [] for row in res.rows)
