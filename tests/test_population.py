"""The population's records (easlurm.population): the member meta.json, slot roles, phase lengths, final members."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from easlurm.config import load_config
from easlurm.errors import CheckpointError
from easlurm.population import (
    MEMBER_SCHEMA, MemberMeta, adam_cycles, final_folder, final_members, is_adam_trained, is_replaceable,
    load_member_file, member_complete, member_file, phase_iters, preferences, read_member, require_member,
    slot_mode, write_member,
)
from easlurm.checkpoints import commit_checkpoint
from easlurm.store import RunDir
from easlurm.tensor_files import torch_bytes


def _cfg(*overrides: str):
    return load_config(None, ["data.train=x", "population.size=3", "run.cycles=2", *overrides])


def _meta(**kw) -> MemberMeta:
    base = dict(kind="member", cycle=1, slot=2, preference=(0.0, 1.0), mode="trained", origin="ea:c0-g3-s2",
                iteration=7, iters_target=9, sample_index=28, done=False, ea_objectives=(0.125, 0.5),
                reset_g_optimizer=False, trained_from="cycles/001/start/02")
    return MemberMeta(**{**base, **kw})


def test_member_record_round_trips_through_meta_json(tmp_path):
    import torch

    meta = _meta()
    assert MemberMeta.from_dict(json.loads(json.dumps(meta.to_dict())), "x") == meta
    on_disk = write_member(tmp_path, meta, {"G.pt": torch_bytes({"w": torch.ones(2)}), "D.pt": b"d"})
    again = read_member(tmp_path)
    assert again == on_disk and again.files == on_disk.files
    assert again.preference == (0.0, 1.0) and again.ea_objectives == (0.125, 0.5) and again.schema == MEMBER_SCHEMA
    assert set(again.files["sha256"]) == {"G.pt", "D.pt"} and again.files["size"]["D.pt"] == 1
    assert torch.equal(load_member_file(tmp_path, again, "G.pt")["w"], torch.ones(2))
    raw = json.loads((tmp_path / "meta.json").read_text())
    assert raw["kind"] == "member" and raw["preference"] == [0.0, 1.0] and "files" not in raw
    assert read_member(tmp_path / "nothing") is None


@pytest.mark.parametrize("change,message", [
    ({"schema": 99}, r"member record schema 99, this easlurm reads 1 \(a run made by another easlurm version\)"),
    ({"kind": "trained"}, r"not a start or member record \(kind 'trained'\)"),
    ({"preference": [1.0]}, r"preference must be \[w_dist, w_perc\], got \[1\.0\]"),
    ({"cycle": None}, r"member record lacks cycle"),
])
def test_a_bad_member_record_is_one_error_naming_the_file(tmp_path, change, message):
    raw = _meta().to_dict() | change
    raw = {k: v for k, v in raw.items() if v is not None or k not in change}
    commit_checkpoint(tmp_path, {}, raw)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'meta.json'}: {message}$"):
        read_member(tmp_path)


def test_completion_and_required_files(tmp_path):
    start, member = tmp_path / "start", tmp_path / "member"
    write_member(start, _meta(kind="start", iteration=0, iters_target=0), {"G.pt": b"g", "D.pt": b"d"})
    write_member(member, _meta(), {"G.pt": b"g"})
    assert member_complete(start, "start") and not member_complete(start, "member")
    assert not member_complete(member, "member")  # iteration 7 of 9
    with pytest.raises(CheckpointError, match=rf"^{member}: not complete \(written by X; iteration 7 of 9\)$"):
        require_member(member, "member", ("G.pt",), "written by X")
    write_member(member, _meta(iteration=9, done=True))
    assert member_complete(member, "member")
    with pytest.raises(CheckpointError, match=rf"^{member / 'meta.json'}: lists no D\.pt$"):
        require_member(member, "member", ("G.pt", "D.pt"), "written by X")
    (start / "D.pt").write_bytes(b"longer")  # a replaced file: the size check catches it
    assert not member_complete(start, "start")
    with pytest.raises(CheckpointError, match=rf"^{start}: a file it lists is missing or has the wrong size"):
        require_member(start, "start", ("G.pt",), "written by X")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'none'}: not found \(written by X\)$"):
        require_member(tmp_path / "none", "start", ("G.pt",), "written by X")


def test_a_member_referencing_its_start_entry(tmp_path):
    """How a slot that is not Adam-trained finishes: its members folder references the start entry's files."""
    rd = RunDir(tmp_path)
    rd.config.write_text("{}\n")  # the run's root: references stay below it
    start = write_member(rd.start(0, 0), _meta(kind="start", cycle=0, slot=0), {"G.pt": b"g", "D.pt": b"d"})
    refs = {n: member_file(rd.start(0, 0), start, n) for n in ("G.pt", "D.pt")}
    member = write_member(rd.member(0, 0), _meta(cycle=0, slot=0, done=True), refs=refs)
    assert member.files["refs"] == {"G.pt": "../../start/00/G.pt", "D.pt": "../../start/00/D.pt"}
    assert member_file(rd.member(0, 0), member, "G.pt").path == rd.start(0, 0) / "G.pt"
    assert member_complete(rd.member(0, 0), "member")
    (rd.start(0, 0) / "G.pt").unlink()
    assert not member_complete(rd.member(0, 0), "member")


def test_slot_roles_preferences_and_phase_lengths():
    assert preferences(3) == [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)] and preferences(1) == [(1.0, 0.0)]
    for mode, trained, replaceable in (("trained", True, True), ("ea_only", False, True), ("frozen", False, False)):
        cfg = _cfg(f"population.member0={mode}")
        assert (slot_mode(cfg, 0), is_adam_trained(cfg, 0), is_replaceable(cfg, 0)) == (mode, trained, replaceable)
        assert (slot_mode(cfg, 1), is_adam_trained(cfg, 2), is_replaceable(cfg, 2)) == ("trained", True, True)
    cfg = _cfg("adam.iters_per_cycle=10", "adam.first_phase_iters=9", "adam.final_phase_iters=11")
    assert adam_cycles(cfg) == [0, 1, 2] and [phase_iters(cfg, c) for c in adam_cycles(cfg)] == [9, 10, 11]
    cfg = _cfg("adam.iters_per_cycle=10", "adam.final_phase=false")
    assert adam_cycles(cfg) == [0, 1] and [phase_iters(cfg, c) for c in range(3)] == [10, 10, 10]


@pytest.mark.parametrize("final_phase", [True, False])
def test_final_members_with_and_without_the_final_phase(tmp_path, final_phase):
    cfg = _cfg(f"adam.final_phase={str(final_phase).lower()}")
    rd = RunDir(tmp_path)
    rd.config.write_text("{}\n")  # the run's root: references stay below it
    kind = "member" if final_phase else "start"
    hint = ("written by the final Adam phase, cycle 2" if final_phase else "written by the EA phase of cycle 1")
    for i in range(3):
        folder = final_folder(cfg, rd, i)
        assert folder == (rd.member(2, i) if final_phase else rd.start(2, i))
        if i == 1:
            continue
        write_member(folder, _meta(kind=kind, cycle=2, slot=i, done=True), {"G.pt": bytes([i])})
    with pytest.raises(CheckpointError, match=rf"^{final_folder(cfg, rd, 1)}: not found \({hint}\)$"):
        final_members(cfg, rd)
    write_member(final_folder(cfg, rd, 1), _meta(kind=kind, cycle=2, slot=1, done=True), {"G.pt": b"\x01"})
    got = final_members(cfg, rd)
    assert [f for f, _ in got] == [final_folder(cfg, rd, i) for i in range(3)]
    assert [m.slot for _, m in got] == [0, 1, 2] and all(m.kind == kind for _, m in got)
    # The other layout's folders are not read: they would be another stage's outputs.
    other = rd.start(2, 0) if final_phase else rd.member(2, 0)
    assert not Path(other).exists()
