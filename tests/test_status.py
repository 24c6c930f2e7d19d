"""``python -m easlurm.status`` on a finished run: stage table, cost report, barrier cost, objectives, JSON."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from easlurm.config import load_run_config
from easlurm.orchestrate.plan import build_plan
from easlurm.orchestrate.slurm_text import parse_sacct
from easlurm.population import is_adam_trained
from easlurm.status import collect, main as status_main
from easlurm.store import RunDir, atomic_write_json, read_json
from easlurm.timings import task_times
from hpc_runs import finished_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    return finished_run(tmp_path_factory, demo_shards)


@pytest.fixture
def copy(run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run (run-relative references keep it valid) for tests that edit records."""
    dest = tmp_path / "run"
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("lineage", ".lease"))
    return dest


def test_status_shows_wall_time_gpu_hours_and_barrier_cost(run: Path, capsys):
    assert status_main([str(run)]) == 0
    text = capsys.readouterr().out
    cfg = load_run_config(run)
    keys = [s.key for s in build_plan(cfg, RunDir(run))]
    header = next(line for line in text.splitlines() if line.startswith("stage"))
    assert all(col in header for col in ("wall", "task-h", "GPU-h", "queue"))
    for key in keys:
        row = next(line for line in text.splitlines() if line.startswith(key + " "))
        fields = row.split()
        assert fields[1] == "COMPLETED", row
        assert fields[-4].count(":") == 2, row  # a wall time h:mm:ss for every stage
    assert "barrier cost per cycle" in text
    barrier = text.split("barrier cost per cycle")[1].splitlines()[1:4]
    assert [line.split(":")[0] for line in barrier] == ["  cycle 0", "  cycle 1", "  cycle 2"]
    assert all(line.split()[2].count(":") == 2 for line in barrier)  # a duration for every cycle

    s = collect(run, slurm=False)
    assert s["complete"] and s["executor"] == "debug"
    for st in s["stages"]:
        assert st["wall_s"] is not None and st["wall_s"] >= 0, st["stage"]
        assert st["gpu_h"] == 0.0  # the debug executor ran on this machine's CPU
    trained = [st for st in s["stages"] if st["kind"] in ("adam", "fuse")]
    assert all(st["task_s"] > 0 for st in trained)
    for c in s["members"]:
        ends = [m["finished_at"] for m in c["members"] if m["mode"] == "trained"]
        assert c["barrier_s"] == pytest.approx(max(ends) - min(ends))
    # Members ran one after another (debug executor): the barrier is at least the time the later ones took.
    assert s["members"][1]["barrier_s"] > 0


def test_gpu_hours_are_task_time_times_the_stage_gpus(copy: Path):
    rec = read_json(copy / "run.json")
    rec["executor"] = "slurm"  # as if the jobs had run on Slurm with executor.slurm.<kind>.gpus each
    atomic_write_json(copy / "run.json", rec)
    s = collect(copy, slurm=False)
    cfg = load_run_config(copy)
    for st in s["stages"]:
        gpus = getattr(cfg.executor.slurm, st["kind"]).gpus
        assert st["gpus_per_task"] == gpus
        assert st["gpu_h"] == pytest.approx(st["task_s"] * gpus / 3600)
    assert s["totals"]["gpu_h"] > 0


def test_status_json_parses_and_labels_objectives(run: Path, capsys):
    assert status_main([str(run), "--json", "--no-slurm"]) == 0
    s = json.loads(capsys.readouterr().out)
    cfg = load_run_config(run)
    assert [st["stage"] for st in s["stages"]] == [x.key for x in build_plan(cfg, RunDir(run))]
    assert [c["cycle"] for c in s["members"]] == [0, 1, 2]
    # Start-entry objectives are the EA's (cycles/1/start/J/meta.json), trained objectives the next EA's reading
    # of the trained member (cycles/1/ea/fitness.json "initial") — never one shown as the other.
    fit = read_json(run / "cycles" / "001" / "ea" / "fitness.json")
    for m in s["members"][1]["members"]:
        start = read_json(run / "cycles" / "001" / "start" / f"{m['slot']:02d}" / "meta.json")
        assert m["objectives_start"] == start["ea_objectives"]
        assert m["objectives_trained"] == fit["initial"][m["slot"]]
    assert all(m["objectives_trained"] is None for m in s["members"][2]["members"])  # no EA after the final phase
    assert s["members"][0]["members"][0]["mode"] == "ea_only" and s["members"][0]["members"][0]["target"] == 0


def test_recorded_attempts_are_preferred_to_file_times(copy: Path):
    """Once the stages write ``attempts`` into their records (see easlurm.timings), status uses them."""
    folder = copy / "cycles" / "001" / "members" / "01"
    meta = read_json(folder / "meta.json")
    meta["attempts"] = [{"started": 1000.0, "loop_started": 1010.0, "updated": 1070.0, "first": 0, "last": 2},
                        {"started": 2000.0, "loop_started": 2005.0, "updated": 2125.0, "first": 2, "last": 6}]
    atomic_write_json(folder / "meta.json", meta)
    cfg = load_run_config(copy)
    times = {(t.stage, t.index): t for t in task_times(cfg, RunDir(copy), build_plan(cfg, RunDir(copy)))}
    t = times[("adam/001", 1)]
    assert t.source == "record" and t.busy_s == pytest.approx(70 + 125) and t.units == 6
    assert times[("adam/001", 2)].source == "record"  # the stage's own attempts, as written by the run


def test_every_stage_is_timed_from_its_own_record_and_a_record_without_attempts_from_nothing(copy: Path):
    """Times come from the stages' records only: every task of a finished run has its attempts (the init stage and
    the evaluation included); a record that lacks them (an older run) shows no times rather than guessed ones."""
    cfg = load_run_config(copy)
    plan = build_plan(cfg, RunDir(copy))
    times = task_times(cfg, RunDir(copy), plan)
    assert {t.source for t in times} == {"record"} and all(t.done_at is not None for t in times)
    ea = next(t for t in times if t.stage == "ea/001")
    assert ea.units == cfg.ea.generations and ea.spans[0].loop_start >= ea.spans[0].start
    folder = copy / "cycles" / "001" / "members" / "01"
    meta = read_json(folder / "meta.json")
    meta.pop("attempts", None)
    atomic_write_json(folder / "meta.json", meta)
    t = next(t for t in task_times(cfg, RunDir(copy), plan) if (t.stage, t.index) == ("adam/001", 1))
    assert t.source == "none" and t.spans == [] and t.start is None and t.done_at is None


def test_queue_wait_counts_from_submission_or_the_previous_stage_end(copy: Path):
    s0 = collect(copy, slurm=False)
    assert all(st["queue_wait_s"] is None and st["jobs"] == [] for st in s0["stages"])  # nothing was submitted
    ea0 = next(st for st in s0["stages"] if st["stage"] == "ea/000")
    early = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ea0["start"] - 100))  # queued behind ea/000
    cfg = load_run_config(copy)
    trained = [i for i in range(cfg.population.size) if is_adam_trained(cfg, i)]
    assert 0 < len(trained) < cfg.population.size  # member0 is an EA-only slot: no task, no job
    atomic_write_json(copy / "state.json", {"submissions": [
        {"time": early, "stage": "adam/001", "tasks": {f"900_{i}": i for i in trained},
         "dependency": ["899"]}], "cancelled": []})
    s = collect(copy, slurm=False)
    adam1 = next(st for st in s["stages"] if st["stage"] == "adam/001")
    assert adam1["jobs"] == [f"900_{i}" for i in trained] and adam1["tasks"] == len(trained)
    # It waited for its dependency (ea/000) first, which is not queue wait: the wait counts from ea/000's end, to
    # the start of the member that started last (the debug executor runs them one after another).
    starts = [t.start for t in task_times(cfg, RunDir(copy), build_plan(cfg, RunDir(copy)))
              if t.stage == "adam/001"]
    assert adam1["queue_wait_s"] == pytest.approx(max(starts) - ea0["end"])


def test_sacct_rows_give_gpu_hours_and_queue_wait():
    text = ("123_0|2026-01-01T10:00:00|2026-01-01T10:00:00|2026-01-01T10:05:00|2026-01-01T11:05:00|3600|"
            "billing=8,cpu=8,gres/gpu=1,mem=48G,node=1|REQUEUED\n"
            "123_0|2026-01-01T11:05:00|2026-01-01T11:06:00|2026-01-01T11:10:00|2026-01-01T11:40:00|1800|"
            "cpu=8,gres/gpu=1,mem=48G,node=1|COMPLETED\n"
            "124|2026-01-01T10:00:00|Unknown|Unknown|Unknown|0||PENDING\n"
            "125|2026-01-01T10:00:00|2026-01-01T10:00:00|2026-01-01T10:00:30|2026-01-01T10:10:30|600|"
            "cpu=4,gres/gpu=2,gres/gpu:a100=2,mem=16G|COMPLETED\n")
    u = parse_sacct(text)
    assert u["123_0"] == {"elapsed_s": 5400.0, "gpu_s": 5400.0, "queue_s": 300.0 + 240.0, "runs": 2}
    assert u["124"]["runs"] == 0 and u["124"]["gpu_s"] == 0.0
    assert u["125"]["gpu_s"] == 1200.0 and u["125"]["queue_s"] == 30.0
