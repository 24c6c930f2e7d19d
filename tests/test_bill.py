"""The bill (easlurm.bill, easlurm.footprint): GPU-hours requested, disk against a real shrunk run, warnings."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from easlurm.bill import (
    PartitionLimits, find_rates, format_bill, main as bill_main, make_bill, parse_sinfo, run_rates,
)
from easlurm.config import load_config, load_run_config
from easlurm.footprint import EA_RECORDS, MEMBERS, NEW_GENOMES, TENSORBOARD, checkpoint_sizes
from easlurm.orchestrate.plan import build_plan, to_run
from easlurm.reference_rates import LIMIT_MARGIN, REFERENCES, reference_rates
from easlurm.store import RunDir
from easlurm.timings import Rates, StageRate, rate_key
from hpc_runs import file_bytes, finished_run

REPO = Path(__file__).resolve().parents[1]
RRDB = REPO / "configs" / "rrdb.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    return finished_run(tmp_path_factory, demo_shards)


def test_rrdb_bill_states_gpu_hours_requested():
    cfg = load_config(RRDB)
    b = make_bill(cfg)
    # 23 Adam phases × 4 trained members × 4 h + 22 EA phases × 3 h + fusion 14 h + evaluation 2 h, one GPU each;
    # member 0 is ea_only (no job: nothing to train), the init stage asks for no GPU and model.pretrained skips
    # pretraining.
    assert b.gpu_h_requested == pytest.approx(23 * 4 * 4 + 22 * 3 + 14 + 2) == pytest.approx(450)
    plan = build_plan(cfg, RunDir(cfg.run.root))
    assert b.jobs == sum(len(to_run(s)) for s in plan) == 117
    by_kind = {s.kind: s for s in b.stages}
    assert by_kind["adam"].tasks == 92 and by_kind["adam"].gpu_h_requested == pytest.approx(368)
    text = format_bill(b)
    assert "117 jobs, 450.0 GPU-h requested" in text
    # Nothing measured for this config in a run: the GPU check's reference rates, the card named.
    assert "(rates of a reference card: see below)" in text and "rates measured in: reference NVIDIA H200" in text
    assert by_kind["adam"].expected_gpu_h == pytest.approx(4 * (11925 + 22 * 13250) * 0.2113 / 3600)
    assert by_kind["init"].expected_gpu_h is None and b.warnings == []  # the limits hold the expected times
    # Checkpoint sizes from the real architecture: 16.7 M generator parameters in float32 (+ framing).
    sizes = checkpoint_sizes(cfg)
    assert sizes["G parameters"] == 16_697_987
    assert 4 * sizes["G parameters"] < sizes["G.pt"] < 4 * sizes["G parameters"] * 1.01
    # Adam state: exp_avg + exp_avg_sq of G and D, 2 × 4 bytes per parameter.
    params = sizes["G parameters"] + sizes["D parameters"]
    assert 8 * params < sizes["optim.pt"] < 8 * params * 1.01
    assert b.disk.total_pruned < b.disk.total


def _files(folder: Path, name: str) -> list[Path]:
    return sorted(p for p in folder.rglob(name) if p.is_file())


def test_disk_per_cycle_matches_what_a_shrunk_run_writes(run: Path):
    cfg = load_run_config(run)
    d = make_bill(cfg).disk
    # Each checkpoint file, estimated from parameter counts on the meta device, against the real files.
    for name in ("G.pt", "D.pt", "optim.pt", "rng.pt"):
        real = (run / "cycles" / "001" / "members" / "01" / name).stat().st_size
        assert d.files[name] == pytest.approx(real, rel=0.02), name
    fusion = run / "fusion"
    assert d.files["fusion attention.pt"] == pytest.approx((fusion / "attention.pt").stat().st_size, rel=0.02)
    assert d.files["fusion optim.pt"] == pytest.approx((fusion / "optim.pt").stat().st_size, rel=0.02)
    # A middle cycle's folder holds the EA's new start entries, the trained members and the EA's records. The bill
    # counts every start entry as a new genome (an upper bound: a carried genome is a reference, and how many are
    # carried depends on the EA's choices), so compare with the genomes this run's EA really wrote.
    measured = file_bytes(run / "cycles" / "001")
    new = len(list((run / "cycles" / "001" / "start").glob("*/G.pt")))
    assert d.per_cycle[NEW_GENOMES] >= new * d.files["G.pt"]
    estimate = new * d.files["G.pt"] + d.per_cycle[MEMBERS] + d.per_cycle[EA_RECORDS]
    assert estimate == pytest.approx(measured, rel=0.10)
    # The whole run directory, TensorBoard included (the lineage tool's own outputs are not part of a run).
    whole = file_bytes(run, skip=("lineage",))
    assert d.total == pytest.approx(whole, rel=0.10)
    assert d.per_cycle[TENSORBOARD] > 0


def test_pruning_frees_the_older_cycles_discriminator_and_optimizer_state():
    cfg = load_config(RRDB)
    d1, d3 = make_bill(cfg, keep=1).disk, make_bill(cfg, keep=3).disk
    s = checkpoint_sizes(cfg)
    trained = 4  # member 0 is ea_only in configs/rrdb.yaml
    assert d1.prunable_per_cycle == trained * (s["D.pt"] + s["optim.pt"] + s["rng.pt"])
    assert d1.total - d1.total_pruned == (23 - 1) * d1.prunable_per_cycle
    assert d3.total_pruned - d1.total_pruned == 2 * d1.prunable_per_cycle


def _rates(cfg, **per_kind: float) -> Rates:
    units = {"adam": "iteration", "ea": "generation", "fuse": "iteration", "eval": "task", "init": "task"}
    return Rates({k: StageRate(v, units[k], 60.0, 1) for k, v in per_kind.items()},
                 {k: rate_key(cfg, k) for k in per_kind}, "test rates")


def test_warns_when_a_time_limit_is_below_the_expected_time():
    cfg = load_config(RRDB)
    slow = make_bill(cfg, _rates(cfg, adam=7.0, ea=30.0))
    # 13,250 iterations × 7 s + 60 s start-up = 25.8 h > 4 h limit (less the 180 s signal lead).
    adam = [w for w in slow.warnings if w.startswith("adam:")]
    assert len(adam) == 1 and "time limit is 4:00:00" in adam[0] and "requeued ~6 time" in adam[0]
    assert not [w for w in slow.warnings if w.startswith("ea:")]  # 200 generations × 30 s = 1.7 h < 3 h
    by_kind = {s.kind: s for s in slow.stages}
    assert by_kind["adam"].expected_task_s == pytest.approx(60 + 13250 * 7.0)
    # 4 trained members per phase, phases of 11,925 (first), 13,250 (×21) and 13,250 (final) iterations.
    iters = 11925 + 21 * 13250 + 13250
    assert by_kind["adam"].expected_gpu_h == pytest.approx(4 * (23 * 60 + iters * 7.0) / 3600)
    assert "warning: adam:" in format_bill(slow)
    fast = make_bill(cfg, _rates(cfg, adam=0.5))
    assert not [w for w in fast.warnings if w.startswith("adam:")]
    # A rate measured for another configuration is not used (nor the reference, measured at batch 16).
    other = load_config(RRDB, ["adam.batch_size=32"])
    assert next(s for s in make_bill(other, _rates(cfg, adam=7.0)).stages if s.kind == "adam").expected_gpu_h is None


@pytest.mark.parametrize("name", ["rrdb", "srresnet"])
def test_paper_configs_time_limits_are_sized_from_the_reference_rates(name):
    """Where the GPU check measured a stage of a paper config, its time limit is LIMIT_MARGIN × the expected
    longest task, rounded up to the hour (short enough to backfill; a short limit costs a requeue, not work)."""
    b = make_bill(load_config(REPO / "configs" / f"{name}.yaml"))
    sized = [s for s in b.stages if s.expected_task_s is not None]
    assert [s.kind for s in sized] == (["adam", "ea", "fuse"] if name == "rrdb" else ["adam"])
    for s in sized:
        assert s.time_min == math.ceil(LIMIT_MARGIN * s.expected_task_s / 3600) * 60, s.kind


def test_reference_rates_apply_only_where_the_measured_configuration_matches():
    cfg = load_config(RRDB)
    rates, used = reference_rates(cfg)
    assert set(rates.stages) == {"adam", "ea", "fuse"} and all(r.card == "NVIDIA H200" for r in used)
    assert all(rates.key[k] == rate_key(cfg, k) for k in rates.stages)
    for override, gone in (("adam.bf16=true", "adam"), ("adam.members_per_task=2", "adam"), ("population.size=6", "ea"),
                           ("data.fitness_images=8", "ea"), ("model.num_block=12", "fuse")):
        found = reference_rates(load_config(RRDB, [override]))
        assert found is None or gone not in found[0].stages, override
    assert reference_rates(load_config(REPO / "configs" / "swinir.yaml")) is None  # not measured yet
    # A rate the run measured itself wins over the reference.
    own = make_bill(cfg, _rates(cfg, adam=0.1))
    adam = next(s for s in own.stages if s.kind == "adam")
    assert adam.expected_task_s == pytest.approx(60 + 13250 * 0.1)
    assert own.rates_source.startswith("test rates; reference NVIDIA H200") and "(adam)" not in own.rates_source
    # Every reference names a file of bench/results/ that exists.
    for r in REFERENCES:
        assert (REPO / r.source.split(",")[0]).is_file(), r.source


def test_partition_limits_from_sinfo_and_the_warnings_they_give():
    text = ("cpu|192000|2-00:00:00|(null)\n"
            "gpu*|257000|1-00:00:00|gpu:a100:4(S:0-1)\n"
            "gpu*|514000|1-00:00:00|gpu:a100:8(S:0-3)\n")
    lim = parse_sinfo(text, None)
    assert lim == PartitionLimits("gpu", pytest.approx(514000 / 1024), 1440, 8)
    assert parse_sinfo(text, "cpu") == PartitionLimits("cpu", pytest.approx(187.5), 2880, None)
    assert parse_sinfo("x|infinite|1:30:00|(null)\n", "x") == PartitionLimits("x", None, 90, None)
    assert parse_sinfo(text, "nope") is None
    cfg = load_config(RRDB)
    small = PartitionLimits("small", 32.0, 720, 1)
    warnings = make_bill(cfg, limits=small).warnings
    assert any(w.startswith("adam:") and "mem_gb=48 exceeds" in w and "32 GiB" in w for w in warnings)
    assert any(w.startswith("fuse:") and "time_min=840 exceeds the time limit of partition small" in w
               for w in warnings)
    assert not make_bill(cfg, limits=PartitionLimits("big", 512.0, None, 8)).warnings
    local = load_config(RRDB, ["executor.kind=local"])
    assert not make_bill(local, limits=small).warnings  # no Slurm, no Slurm limits


def test_rates_measured_by_a_finished_run_price_the_next_one(run: Path, capsys):
    cfg = load_run_config(run)
    rates = run_rates(RunDir(run), cfg)
    assert rates.stages["adam"].unit == "iteration" and rates.stages["adam"].seconds_per_unit > 0
    assert rates.stages["ea"].unit == "generation" and rates.stages["ea"].seconds_per_unit > 0
    assert rates.stages["fuse"].seconds_per_unit > 0
    # A new run of the same config under the same run.root finds them by itself.
    found = find_rates(cfg, RunDir(run.parent / "next-run"))
    assert found is not None and found.stages["adam"] == rates.stages["adam"]
    b = make_bill(cfg, found)
    adam = next(s for s in b.stages if s.kind == "adam")
    assert adam.expected_task_s == pytest.approx(rates.stages["adam"].startup_s
                                                 + cfg.adam.iters_per_cycle * rates.stages["adam"].seconds_per_unit)
    # … but not for a config that trains with another batch size.
    bigger = load_run_config(run)
    bigger.adam.batch_size = 4
    other = find_rates(bigger, RunDir(run.parent / "other-run"))
    assert other is None or "adam" not in other.stages
    # The rates round-trip through a file and the CLI.
    saved = run.parent.parent / "rates.json"
    assert bill_main(["--run", str(run), "--save-rates", str(saved), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["jobs"] == 12 and out["expected_gpu_h"] is not None
    assert json.loads(saved.read_text())["stages"]["adam"]["unit"] == "iteration"
    assert bill_main(["--config", str(RRDB), "--rates", str(saved)]) == 0
    assert "450.0 GPU-h requested" in capsys.readouterr().out


def test_launch_prints_the_bill(run: Path):
    from easlurm.launch import main as launch_main

    launched = (run.parent.parent / "launch-output.txt").read_text()
    head = launched.split("[debug]")[0]
    assert "# bill: 12 jobs" in head and "# disk:" in head  # the summary, before the first task ran
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert launch_main(["--resume", str(run), "--dry-run"]) == 0
    text = out.getvalue()
    assert "# bill: 12 jobs" in text and "# disk: one member checkpoint is" in text
    assert "rates measured in: run " in text  # its own finished tasks
