"""bench/paper_claim.py: hypervolume in the (−PSNR, LPIPS) plane, equal generator budgets, and arms that really
differ in the way the benchmark claims.

The hypervolume cases are computed by hand as unions of axis-aligned boxes in the PSNR–LPIPS plane. The arm checks
run the quick config end to end once, in-process and micro-sized (debug executor, 3 members, 2 iterations per Adam
phase, one EA generation), and read everything back from the run directories the product wrote.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def _load_bench() -> ModuleType:
    # As ``python bench/paper_claim.py`` runs it: bench/ on sys.path for its sibling modules (_claim_*, _common).
    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("paper_claim", REPO / "bench" / "paper_claim.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paper_claim"] = mod
    spec.loader.exec_module(mod)
    return mod


pc = _load_bench()

# ---------------------------------------------------------------------------------------------------------------
# Hypervolume, (PSNR dB, LPIPS) points; the reference is a (−PSNR, LPIPS) pair.

REF = (-25.0, 0.3)  # PSNR 25 dB, LPIPS 0.3
A, B = (30.0, 0.2), (28.0, 0.1)


def test_single_point_is_one_box() -> None:
    # 30 − 25 dB wide, 0.3 − 0.2 LPIPS tall.
    assert pc.front_hypervolume([A], REF) == pytest.approx(5 * 0.1)
    assert pc.front_hypervolume([B], REF) == pytest.approx(3 * 0.2)


def test_two_front_points_union_of_boxes() -> None:
    # box A 0.5 + box B 0.6 − overlap (25..28 dB × 0.2..0.3) 0.3 = 0.8
    assert pc.front_hypervolume([A, B], REF) == pytest.approx(0.8)
    assert pc.front_hypervolume([B, A], REF) == pytest.approx(0.8)


def test_dominated_and_duplicate_points_add_nothing() -> None:
    dominated = (27.0, 0.25)  # lower PSNR and higher LPIPS than A
    assert pc.front_hypervolume([A, B, dominated, A], REF) == pytest.approx(0.8)


def test_points_beyond_or_on_the_reference_add_nothing() -> None:
    too_blurry = (24.0, 0.05)     # PSNR below the reference's 25 dB
    too_lpips = (31.0, 0.35)      # LPIPS above the reference's 0.3
    on_edge = (25.0, 0.01)        # PSNR exactly at the reference: not strictly better
    assert pc.front_hypervolume([too_blurry, too_lpips, on_edge], REF) == 0.0
    assert pc.front_hypervolume([A, B, too_blurry, too_lpips, on_edge], REF) == pytest.approx(0.8)


def test_higher_psnr_counts_as_better() -> None:
    # The plane is (−PSNR, LPIPS): moving A to higher PSNR must grow the area (by 1 dB × 0.1).
    assert pc.front_hypervolume([(31.0, 0.2)], REF) == pytest.approx(pc.front_hypervolume([A], REF) + 0.1)


def test_shared_reference_rule_and_comparable_arms() -> None:
    arm_x = [(30.0, 0.2), (28.0, 0.1)]
    arm_y = [(26.0, 0.4)]
    ref = pc.shared_reference(arm_x + arm_y)
    # worst −PSNR −26, span 4 dB → −26 + 0.4; worst LPIPS 0.4, span 0.3 → 0.4 + 0.03
    assert ref == pytest.approx((-25.6, 0.43))
    # The worst model still counts: its box is the margin (0.4 dB × 0.03).
    assert pc.front_hypervolume(arm_y, ref) == pytest.approx(0.4 * 0.03)
    # arm_x by hand with that reference: (30−25.6)(0.43−0.2) + (28−25.6)(0.2−0.1)
    assert pc.front_hypervolume(arm_x, ref) == pytest.approx(4.4 * 0.23 + 2.4 * 0.1)
    assert pc.shared_reference([(27.0, 0.2), (27.0, 0.2)])[0] == pytest.approx(-27.0, abs=1e-5)


def test_shared_reference_refuses_non_finite() -> None:
    with pytest.raises(pc.BenchError, match="non-finite"):
        pc.shared_reference([(30.0, float("nan"))])


# ---------------------------------------------------------------------------------------------------------------
# Arms and budgets from the configs


@pytest.mark.parametrize("config", [pc.CONFIG_FULL, pc.CONFIG_QUICK], ids=["full", "quick"])
def test_bench_configs_give_every_arm_the_same_budget(config: Path, tmp_path: Path) -> None:
    from easlurm.config import load_config, to_dict

    raw = yaml.safe_load(config.read_text())
    # Adam phases: one per cycle plus the final phase (adam.final_phase defaults to the reference's true).
    expected = raw["population"]["size"] * (raw["run"]["cycles"] + 1) * raw["adam"]["iters_per_cycle"]
    cfgs = {arm.name: load_config(config, pc.arm_overrides(arm, 0, tmp_path / "G.pt", tmp_path)) for arm in pc.ARMS}
    assert {name: pc.planned_updates(c) for name, c in cfgs.items()} == {a.name: expected for a in pc.ARMS}
    assert {(c.ea.selection, c.adam.mix) for c in cfgs.values()} == {
        ("moead", "normalised"), ("nsga2", "normalised"), ("identity", "normalised"), ("identity", "weighted_sum")}
    # Apart from the arm keys, every arm runs the very same config.
    flat = [to_dict(c) for c in cfgs.values()]
    for d in flat:
        d["ea"].pop("selection")
        d["adam"].pop("mix")
    assert all(d == flat[0] for d in flat)


def test_planned_updates_leave_out_an_untrained_member0(tmp_path: Path) -> None:
    from easlurm.config import load_config

    arm = pc.ARM_BY_NAME["ea_moead"]
    cfg = load_config(pc.CONFIG_FULL, pc.arm_overrides(arm, 0, tmp_path / "G.pt", tmp_path,
                                                       ["population.member0=frozen"]))
    assert pc.planned_updates(cfg) == (cfg.population.size - 1) * (cfg.run.cycles + 1) * cfg.adam.iters_per_cycle


def test_user_overrides_cannot_merge_the_arms(tmp_path: Path) -> None:
    with pytest.raises(pc.BenchError, match="define the arms"):
        pc.arm_overrides(pc.ARMS[0], 0, tmp_path / "G.pt", tmp_path, ["adam.mix=weighted_sum"])


def test_cli_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert pc.main(["--max-parallel", "0"]) == 2
    assert "--max-parallel" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# The quick config end to end, micro-sized (in-process, debug executor)

MICRO = (
    "model.num_feat=8", "model.num_block=1", "discriminator.num_feat=4", "adam.batch_size=2",
    "adam.iters_per_cycle=2", "adam.checkpoint_every=2", "adam.log_every=1", "adam.image_every=2",
    "pretrain.iters=2", "pretrain.batch_size=2", "pretrain.checkpoint_every=2", "ea.generations=1",
    "data.fitness_images=1", "data.fitness_max_tiles=2", "fusion.iters=2", "fusion.checkpoint_every=2",
    "fusion.att_channels=4", "fusion.average_images=2",
)
N, PHASES, ITERS = 3, 2, 2   # quick config: 3 members, 1 cycle + the final Adam phase; MICRO: 2 iterations


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> tuple[Path, Any, Any]:
    from PIL import Image

    from easlurm.data.samples import sample_image

    root = tmp_path_factory.mktemp("paper_claim")
    sets = root / "mini"
    sets.mkdir()
    # Two small held-out crops keep the evaluation fast; same pipeline as the full val set.
    Image.fromarray(sample_image("astronaut")[100:164, 100:196]).save(sets / "astronaut.png")
    Image.fromarray(sample_image("coffee")[50:114, 200:264]).save(sets / "coffee.png")
    torch.set_num_threads(1)
    pretrains, results = pc.run_benchmark(pc.CONFIG_QUICK, [0], root / "work", executor="debug",
                                          demo_dir=demo_shards, overrides=[*MICRO, f"eval.sets={{mini: {sets}}}"],
                                          echo=lambda _: None)
    return root, pretrains, results


def _run(results: Any, name: str) -> Any:
    from easlurm.store import RunDir

    return RunDir(next(r.run_dir for r in results if r.arm.name == name))


def _g_sha(folder: Path) -> str:
    from easlurm.population import member_file, read_member

    meta = read_member(folder)
    assert meta is not None
    return member_file(folder, meta, "G.pt").sha256


def test_every_arm_records_the_same_generator_updates(micro_run: tuple[Path, Any, Any]) -> None:
    from easlurm.population import read_member

    _, _, results = micro_run
    assert [r.arm.name for r in results] == [a.name for a in pc.ARMS]
    assert {(r.planned, r.recorded) for r in results} == {(N * PHASES * ITERS,) * 2}
    for r in results:
        for c in range(PHASES):
            for i in range(N):
                meta = read_member(_run(results, r.arm.name).member(c, i))
                assert meta is not None and meta.done and meta.iteration == ITERS


def test_arms_share_the_seed_pretrained_start(micro_run: tuple[Path, Any, Any]) -> None:
    from easlurm.population import load_member_file, read_member

    root, pretrains, results = micro_run
    start = torch.load(pretrains[0].generator, weights_only=True)
    assert pretrains[0].generator == root / "work" / "seed0" / "pretrain_run" / "pretrain" / "G.pt"
    for r in results:
        folder = _run(results, r.arm.name).start(0, 0)
        meta = read_member(folder)
        assert meta is not None and meta.origin.startswith(f"pretrained:{pretrains[0].generator}")
        g = load_member_file(folder, meta, "G.pt")
        assert g.keys() == start.keys() and all(torch.equal(g[k], start[k]) for k in g)


def test_identity_arms_create_no_ea_children(micro_run: tuple[Path, Any, Any]) -> None:
    from easlurm.population import read_member
    from easlurm.store import read_json

    _, _, results = micro_run
    for name in ("adam_only", "weighted_sum"):
        run = _run(results, name)
        assert pc.lineage_children(run, 0) == 0
        assert read_json(run.ea(0) / "fitness.json")["selection"] == "identity"
        for j in range(N):  # every slot carries its own trained generator into the next cycle
            start = read_member(run.start(1, j))
            assert start is not None and start.origin == f"carried:cycles/000/members/{j:02d}/G.pt"
            assert start.reset_g_optimizer  # generator moments reset, as after a real EA phase
            assert _g_sha(run.start(1, j)) == _g_sha(run.member(0, j))
    for r in results:
        assert r.ea_stats["children"] == ([0] if not r.arm.evolves else [N])  # ea.generations=1: N children
    for name in ("ea_moead", "ea_nsga2"):
        rows = [json.loads(line) for line in (_run(results, name).ea(0) / "lineage.jsonl").read_text().splitlines()]
        assert len(rows) == N and all(row["id"].startswith("c0-g0-") for row in rows)


def test_only_the_gradient_mix_separates_weighted_sum_from_adam_only(micro_run: tuple[Path, Any, Any]) -> None:
    from easlurm.config import load_run_config

    _, _, results = micro_run
    assert load_run_config(_run(results, "weighted_sum").root).adam.mix == "weighted_sum"
    assert {load_run_config(_run(results, n).root).adam.mix for n in ("ea_moead", "ea_nsga2", "adam_only")} == {
        "normalised"}
    # Cycle 0's Adam phase comes before any EA phase: arms with the same mix train byte-identical members from the
    # same start, data and seeds, so a difference there can only come from adam.mix.
    for i in range(N):
        same = {_g_sha(_run(results, n).member(0, i)) for n in ("ea_moead", "ea_nsga2", "adam_only")}
        assert len(same) == 1
        assert _g_sha(_run(results, "weighted_sum").member(0, i)) not in same
        assert _g_sha(_run(results, "weighted_sum").start(0, i)) == _g_sha(_run(results, "adam_only").start(0, i))


def test_results_count_bicubic_once_and_hypervolumes_match(micro_run: tuple[Path, Any, Any], tmp_path: Path) -> None:
    _, pretrains, results = micro_run
    for r in results:  # the product's evaluation: a bicubic row, every final member and the fused model
        assert [row["model"] for row in r.rows] == ["bicubic", *(f"member_{i}" for i in range(N)), "fused"]
    meta = {"quick": True, "command": "pytest", "config": "configs/bench/paper_claim_quick.yaml",
            "machine": "test", "max_parallel": 1, "omp": "1", "torch": torch.__version__, "perceptual_net": "vgg16",
            "wall_s": 1.0, "date": "today", "scale": 4, "num_feat": 8, "num_block": 1, "pretrain_iters": 2,
            "population": N, "prefs": "1, 0.5, 0", "cycles": 1, "phases": "2 + 2", "generations": 1,
            "fusion_iters": 2, "batch": 2, "patch": 32, "lr": 1e-4}
    data = pc.write_results(pretrains, results, tmp_path, "pc_test", meta)
    assert data["updates_equal"]
    for suffix in (".md", ".csv", "_summary.csv", ".png"):
        assert (tmp_path / f"pc_test{suffix}").stat().st_size > 0
    md = (tmp_path / "pc_test.md").read_text()
    assert "QUICK SMOKE RUN" in md and "**equal**" in md
    rows = list(csv.DictReader(open(tmp_path / "pc_test.csv")))
    assert [r["model"] for r in rows if r["arm"] == "reference"] == ["pretrained", "bicubic"]
    assert sum(r["model"] == "fused" for r in rows) == len(pc.ARMS)
    # Recompute one arm's hypervolume from the csv with the recorded reference point.
    summ = list(csv.DictReader(open(tmp_path / "pc_test_summary.csv")))
    ref = (float(summ[0]["ref_neg_psnr"]), float(summ[0]["ref_lpips"]))
    pts = [(float(r["psnr"]), float(r["lpips"])) for r in rows if r["arm"] == "ea_moead" and r["model"] != "fused"]
    hv = next(float(s["hv_members"]) for s in summ if s["arm"] == "ea_moead")
    assert pc.front_hypervolume(pts, ref) == pytest.approx(hv, abs=2e-6)
    arm_pts = np.array([(float(r["psnr"]), float(r["lpips"])) for r in rows if r["arm"] != "reference"])
    assert np.all(-arm_pts[:, 0] < ref[0]) and np.all(arm_pts[:, 1] < ref[1])  # every arm model inside the ref
    assert {s["ea_children"] for s in summ if s["arm"] in ("adam_only", "weighted_sum")} == {"0"}


def test_meta_describes_the_arms_config(micro_run: tuple[Path, Any, Any]) -> None:
    import argparse

    _, _, results = micro_run
    args = argparse.Namespace(quick=True, seeds=None, max_parallel=1)
    meta = pc._meta(args, pc.CONFIG_QUICK, 1, results, 1.0)
    assert (meta["num_feat"], meta["num_block"], meta["population"]) == (8, 1, N)  # MICRO's model, quick's size
    assert meta["command"] == "python bench/paper_claim.py --quick"
    assert meta["config"] == "configs/bench/paper_claim_quick.yaml"


def test_disagreeing_bicubic_rows_are_refused(micro_run: tuple[Path, Any, Any]) -> None:
    import dataclasses

    _, pretrains, results = micro_run
    bad = [dict(row, psnr=row["psnr"] + 1.0) if row["model"] == "bicubic" else row for row in results[1].rows]
    with pytest.raises(pc.BenchError, match="bicubic rows"):
        pc.collect(pretrains, [results[0], dataclasses.replace(results[1], rows=bad), *results[2:]])


def test_rerun_resumes_without_work(micro_run: tuple[Path, Any, Any], demo_shards: Path) -> None:
    root, _, results = micro_run
    sets = root / "mini"
    said: list[str] = []
    _, again = pc.run_benchmark(pc.CONFIG_QUICK, [0], root / "work", executor="debug", demo_dir=demo_shards,
                                overrides=[*MICRO, f"eval.sets={{mini: {sets}}}"], echo=said.append)
    assert not any(r.worked for r in again)
    assert not any("[debug]" in line for line in said)  # no stage ran again
    assert [r.rows for r in again] == [r.rows for r in results]
