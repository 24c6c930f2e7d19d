"""bench/paper_claim.py: hypervolume in the (−PSNR, LPIPS) plane, equal generator budgets, the identity carry.

The hypervolume cases are computed by hand as unions of axis-aligned boxes in the PSNR–LPIPS plane. The budget
checks run the whole benchmark once, in-process and micro-sized (debug executor, 2 members, 2 iterations), and read
the update counts back from the members' meta.json files.
"""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def _load_bench() -> ModuleType:
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
# Budgets from the configs


@pytest.mark.parametrize("config", [pc.CONFIG_FULL, pc.CONFIG_QUICK], ids=["full", "quick"])
def test_planned_updates_equal_for_every_arm(config: Path, tmp_path: Path) -> None:
    from easlurm.config import load_config

    raw = yaml.safe_load(config.read_text())
    expected = raw["population"]["size"] * raw["run"]["cycles"] * raw["adam"]["iters_per_cycle"]
    fake_g = tmp_path / "G.pt"
    counts = {arm.name: pc.planned_updates(load_config(config, pc.arm_overrides(arm, 0, fake_g, tmp_path)), arm)
              for arm in pc.ARMS}
    assert set(counts.values()) == {expected}, counts


def test_planned_updates_leave_out_a_frozen_member(tmp_path: Path) -> None:
    from easlurm.config import load_config

    arm = pc.ARM_BY_NAME["ea_moead"]
    cfg = load_config(pc.CONFIG_FULL, pc.arm_overrides(arm, 0, tmp_path / "G.pt", tmp_path,
                                                       ["population.freeze_first=true"]))
    assert pc.planned_updates(cfg, arm) == (cfg.population.size - 1) * cfg.run.cycles * cfg.adam.iters_per_cycle


# ---------------------------------------------------------------------------------------------------------------
# One micro run of the whole benchmark (in-process)

MICRO = (
    "model.num_feat=8", "model.num_block=1", "discriminator.num_feat=4", "adam.batch_size=2",
    "adam.iters_per_cycle=2", "adam.checkpoint_every=2", "adam.log_every=1", "adam.image_every=2",
    "pretrain.iters=2", "pretrain.batch_size=2", "pretrain.checkpoint_every=2", "population.size=2",
    "run.cycles=2", "ea.generations=1", "ea.neighbourhood=2", "data.fitness_images=1", "data.fitness_max_tiles=2", "fusion.iters=2",
    "fusion.checkpoint_every=2", "fusion.att_channels=4", "data.val_images=1",
)


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> tuple[Path, list]:
    from PIL import Image

    from easlurm.data.samples import sample_image

    root = tmp_path_factory.mktemp("paper_claim")
    sets = root / "mini"
    sets.mkdir()
    # Two small held-out crops keep the evaluation fast; same pipeline as the full val set.
    Image.fromarray(sample_image("astronaut")[100:164, 100:196]).save(sets / "astronaut.png")
    Image.fromarray(sample_image("coffee")[50:114, 200:264]).save(sets / "coffee.png")
    torch.set_num_threads(1)
    results = pc.run_benchmark(pc.CONFIG_QUICK, [0], root / "work", executor="debug", demo_dir=demo_shards,
                               overrides=[*MICRO, f"eval.sets={{mini: {sets}}}"], echo=lambda _: None)
    return root, results


def test_every_arm_records_the_same_generator_updates(micro_run: tuple[Path, list]) -> None:
    from easlurm.store import RunDir, read_checkpoint_meta

    _, results = micro_run
    assert [r.arm.name for r in results] == [a.name for a in pc.ARMS]
    assert {r.planned for r in results} == {2 * 2 * 2}  # members × cycles × iterations (MICRO)
    assert {r.recorded for r in results} == {8}
    for r in results:
        assert pc.recorded_updates(r.run_dir, r.arm) == 8
        if r.arm.is_population:  # every member of every cycle ran its full Adam phase
            run = RunDir(r.run_dir)
            iters = [read_checkpoint_meta(run.member(c, i))["iteration"] for c in range(2) for i in range(2)]
            assert iters == [2, 2, 2, 2]
    esrgan = read_checkpoint_meta(results[-1].run_dir / "esrgan")
    assert esrgan["updates"] == 8 and esrgan["weights"]["l1"] == 0.01


def test_arms_share_the_seed_pretrained_start(micro_run: tuple[Path, list]) -> None:
    from easlurm import factory
    from easlurm.config import load_run_config
    from easlurm.store import RunDir, read_checkpoint_meta

    root, results = micro_run
    start = torch.load(root / "work" / "seed0" / "pretrain_run" / "pretrain" / "G.pt", weights_only=True)
    for r in results:
        if r.arm.is_population:
            meta = read_checkpoint_meta(RunDir(r.run_dir).member(0, 0))
            assert meta["origin"].startswith("pretrained:") and meta["origin"].endswith("pretrain/G.pt")
    # The ESRGAN arm scored its start too: the pretrained row equals scoring the start state again.
    rows = {row["model"]: row for row in pc._read_rows(results[-1].run_dir / "eval" / "results.csv")}
    assert {"esrgan", "pretrained", "bicubic"} <= set(rows)
    cfg = load_run_config(results[-1].run_dir)
    g = factory.build_generator(cfg)
    g.load_state_dict(start)
    again = pc.score_models(cfg, [("start", g)])[0]
    assert again.psnr == pytest.approx(rows["pretrained"]["psnr"], abs=1e-4)
    assert again.lpips == pytest.approx(rows["pretrained"]["lpips"], abs=1e-6)


def test_identity_carry_copies_members_and_resets_generator_moments(micro_run: tuple[Path, list]) -> None:
    from easlurm.store import RunDir, load_verified, read_checkpoint_meta, read_json

    _, results = micro_run
    run = RunDir(next(r.run_dir for r in results if r.arm.name == "adam_only"))
    for c in (0, 1):
        assert read_json(run.ea(c) / "done.json")["kind"] == "identity"
        assert not (run.ea(c) / "lineage.jsonl").exists()  # the real EA job never ran
    for i in range(2):
        # Cycle 1 was trained in place after the first carry; the last carry (1 → 2) is still untouched.
        trained, carried = read_checkpoint_meta(run.member(1, i)), read_checkpoint_meta(run.member(2, i))
        assert carried["origin"] == f"cycles/001/members/{i:02d}"
        assert carried["sha256"]["G.pt"] == trained["sha256"]["G.pt"]
        assert carried["sha256"]["D.pt"] == trained["sha256"]["D.pt"]
        assert carried["preference"] == trained["preference"] and carried["iteration"] == 0
        optim = load_verified(run.member(2, i), "optim.pt", carried)
        old = load_verified(run.member(1, i), "optim.pt", trained)
        assert optim["g"] is None and old["g"] is not None  # generator moments reset, as after a real EA phase
        assert torch.equal(optim["d"]["state"][0]["exp_avg"], old["d"]["state"][0]["exp_avg"])


def test_ea_arms_ran_the_real_ea_job(micro_run: tuple[Path, list]) -> None:
    from easlurm.store import RunDir, read_json

    _, results = micro_run
    for r in results[:2]:
        fitness = read_json(RunDir(r.run_dir).ea(0) / "fitness.json")
        assert fitness["selection"] == r.arm.name.split("_")[1]
        assert r.ea_stats["children_per_phase"] == 2 and len(r.ea_stats["accepted"]) == 2


def test_score_models_matches_easlurm_evaluate(micro_run: tuple[Path, list]) -> None:
    from easlurm.config import load_run_config
    from easlurm.evaluate import final_models
    from easlurm.store import RunDir

    _, results = micro_run
    arm = results[0]
    cfg = load_run_config(arm.run_dir)
    entry = final_models(cfg, RunDir(arm.run_dir))[0]
    mine = pc.score_models(cfg, [(entry.label, entry.model)])[0]
    theirs = next(r for r in arm.rows if r["model"] == entry.label)
    assert mine.psnr == pytest.approx(theirs["psnr"], abs=1e-4)
    assert mine.ssim == pytest.approx(theirs["ssim"], abs=1e-6)
    assert mine.lpips == pytest.approx(theirs["lpips"], abs=1e-6)


def test_results_files_and_hypervolumes(micro_run: tuple[Path, list], tmp_path: Path) -> None:
    _, results = micro_run
    meta = {"quick": True, "command": "pytest", "config": "configs/bench/paper_claim_quick.yaml",
            "machine": "test", "max_parallel": 1, "omp": "1", "perceptual_net": "vgg16", "wall_s": 1.0,
            "date": "today", "scale": 4, "num_feat": 8, "num_block": 1, "pretrain_iters": 2, "population": 2,
            "prefs": "1, 0", "cycles": 2, "iters": 2, "generations": 1, "fusion_iters": 2, "batch": 2,
            "patch": 32, "lr": 1e-4}
    data = pc.write_results(results, tmp_path, "pc_test", meta)
    assert data["updates_equal"]
    for suffix in (".md", ".csv", "_summary.csv", ".png"):
        assert (tmp_path / f"pc_test{suffix}").stat().st_size > 0
    md = (tmp_path / "pc_test.md").read_text()
    assert "QUICK SMOKE RUN" in md and "**equal**" in md
    # Recompute one arm's hypervolume from the csv with the recorded reference point.
    rows = list(csv.DictReader(open(tmp_path / "pc_test.csv")))
    summ = list(csv.DictReader(open(tmp_path / "pc_test_summary.csv")))
    ref = (float(summ[0]["ref_neg_psnr"]), float(summ[0]["ref_lpips"]))
    pts = [(float(r["psnr"]), float(r["lpips"])) for r in rows if r["arm"] == "ea_moead" and r["model"] != "fused"]
    hv = next(float(s["hv_members"]) for s in summ if s["arm"] == "ea_moead")
    assert pc.front_hypervolume(pts, ref) == pytest.approx(hv, abs=2e-6)
    arm_pts = np.array([(float(r["psnr"]), float(r["lpips"])) for r in rows if r["arm"] != "reference"])
    assert np.all(-arm_pts[:, 0] < ref[0]) and np.all(arm_pts[:, 1] < ref[1])  # every arm model inside the ref
