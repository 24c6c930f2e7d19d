"""``python -m easlurm.lineage``: the final population's ancestry, checked against the EA's lineage.jsonl."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from easlurm.config import load_run_config
from easlurm.lineage import build_lineage, main as lineage_main, primary_line, summarise, write_lineage
from easlurm.store import RunDir
from hpc_runs import finished_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    return finished_run(tmp_path_factory, demo_shards)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _meta(run: Path, c: int, kind: str, j: int) -> dict:
    return json.loads((run / "cycles" / f"{c:03d}" / kind / f"{j:02d}" / "meta.json").read_text())


def _real_g(run: Path, c: int, kind: str, j: int) -> str:
    """Run-relative path of the file a member's G.pt really is (following its reference)."""
    folder = run / "cycles" / f"{c:03d}" / kind / f"{j:02d}"
    rel = _meta(run, c, kind, j).get("refs", {}).get("G.pt")
    return str((folder / rel).resolve().relative_to(run.resolve())) if rel else str(
        (folder / "G.pt").relative_to(run))


def _after_adam(run: Path, c: int) -> dict[str, int]:
    """Real G path → slot of cycle c's population after its Adam phase: a trained slot's members entry, the
    ea_only slot 0's start entry (nothing trains it; the toy run is RRDB-like)."""
    return {_real_g(run, c, "members" if k else "start", k): k for k in range(3)}


def _expected_line(run: Path, slot: int, last: int) -> list[tuple[int, int]]:
    """(cycle, slot) of the members on final member ``slot``'s primary line, newest first — read straight from
    the start entries' origins and lineage.jsonl (first parents), independently of easlurm.lineage."""
    out = []
    c, j = last, slot
    while True:
        out.append((c, j))
        origin = _meta(run, c, "start", j)["origin"]
        kind, _, rest = origin.partition(":")
        if c == 0:
            assert kind in ("pretrain", "pretrained")
            return out
        members = _after_adam(run, c - 1)
        if kind == "carried":
            c, j = c - 1, members[rest]
            continue
        assert kind == "ea"
        rows = {r["id"]: r for r in _jsonl(run / "cycles" / f"{c - 1:03d}" / "ea" / "lineage.jsonl")}
        assert j in rows[rest]["final_slots"]  # the EA recorded that this child went into slot j
        ref = rows[rest]["parents"][0]
        while "child" in ref:
            ref = rows[ref["child"]]["parents"][0]
        c, j = c - 1, members[ref["checkpoint"]]


def test_lineage_writes_picture_summary_and_tensorboard(run: Path, capsys):
    assert lineage_main([str(run)]) == 0
    out = capsys.readouterr().out
    png = run / "lineage" / "lineage.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [line for line in out.splitlines() if line.startswith("member ")]
    assert [line.split(":")[0] for line in lines] == ["member 00", "member 01", "member 02"]
    assert all("line survived" in line and " crossover" in line and " mutation" in line for line in lines)
    assert (run / "lineage" / "summary.txt").read_text().strip() == "\n".join(lines)
    events = sorted((run / "tb" / "lineage").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 1000
    first = png.read_bytes()
    write_lineage(run)  # byte-stable, and the TensorBoard folder keeps only the latest picture
    assert png.read_bytes() == first
    assert len(sorted((run / "tb" / "lineage").glob("events.out.tfevents.*"))) == 1


def test_ancestry_matches_lineage_jsonl(run: Path):
    cfg = load_run_config(run)
    lin = build_lineage(cfg, RunDir(run))
    last = cfg.run.cycles
    assert lin.final == [f"member {last}/{j:02d}" for j in range(3)]
    rows = summarise(lin)
    for j in range(3):
        line = primary_line(lin, lin.final[j])
        got = [(lin.nodes[x].cycle, lin.nodes[x].slot) for x in line if lin.nodes[x].kind == "member"]
        assert got == _expected_line(run, j, last)
        assert rows[j]["slots_by_cycle"] == [s for _, s in reversed(got)]
        survived = next((k for k, (_, s) in enumerate(got) if s != j), len(got))
        assert rows[j]["survived_cycles"] == survived
    # Every EA child in the ancestry is a row of its phase's lineage.jsonl with the same parents and operators.
    ids = lin.ancestors(lin.final)
    children = [lin.nodes[x] for x in sorted(ids) if lin.nodes[x].kind == "child"]
    assert children, "the toy run's final population descends from EA children"
    for node in children:
        row = next(r for r in _jsonl(run / "cycles" / f"{node.cycle:03d}" / "ea" / "lineage.jsonl")
                   if r["id"] == node.id)
        assert node.operators == row["operators"] and node.objectives == row["objectives"]
        members = {path: f"member {node.cycle}/{k:02d}" for path, k in _after_adam(run, node.cycle).items()}
        assert node.parents == [p["child"] if "child" in p else members[p["checkpoint"]] for p in row["parents"]]
    # Crossover counts are those of the SBX operators on the primary line, by partner slot.
    for j in range(3):
        sbx = [op["partner"] for x in primary_line(lin, lin.final[j]) for op in lin.nodes[x].operators
               if op["op"] == "sbx"]
        assert rows[j]["crossovers"] == len(sbx)
        assert sum(rows[j]["crossover_partners"].values()) == len(sbx)


def test_lineage_names_a_missing_record(run: Path, tmp_path: Path, capsys):
    broken = tmp_path / "run"
    shutil.copytree(run, broken, ignore=shutil.ignore_patterns("lineage", ".lease"))
    (broken / "cycles" / "001" / "ea" / "lineage.jsonl").unlink()
    assert lineage_main([str(broken)]) == 2
    err = capsys.readouterr().err
    assert "cycles/001/ea/lineage.jsonl: not found" in err
    assert not (broken / "lineage").exists()  # nothing half-written
