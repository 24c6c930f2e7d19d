"""Atomic files and the checkpoint journal: a reader never sees half a checkpoint and never breaks a writer."""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from easlurm.errors import CheckpointError
from easlurm.checkpoints import commit_checkpoint, read_checkpoint_meta, recover_checkpoint_dir, verify_checkpoint_dir
from easlurm.store import atomic_write_json
from easlurm.tensor_files import load_checkpoint, load_verified, torch_bytes


def test_atomic_write_leaves_no_temp_and_is_group_readable(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [1.5]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1.5], "b": 1}
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["a.json"]
    mode = stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode)
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_failed_write_keeps_the_old_file(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "a.json", {"v": object()})
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["a.json"]


def test_commit_verify_and_checksum_mismatch(tmp_path):
    meta = commit_checkpoint(tmp_path, {"G.pt": torch_bytes({"w": torch.ones(2)})}, {"iteration": 3})
    assert meta["iteration"] == 3 and set(meta["sha256"]) == {"G.pt"} and verify_checkpoint_dir(tmp_path)
    assert torch.equal(load_verified(tmp_path, "G.pt")["w"], torch.ones(2))
    (tmp_path / "G.pt").write_bytes(torch_bytes({"w": torch.zeros(2)}))
    assert not verify_checkpoint_dir(tmp_path)
    with pytest.raises(CheckpointError, match=r"G\.pt: sha256 mismatch"):
        load_verified(tmp_path, "G.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_interrupted_commit_rolls_forward_only_for_the_owner(tmp_path):
    commit_checkpoint(tmp_path, {"G.pt": b"old"}, {"iteration": 1})
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / "G.pt").write_bytes(b"new")  # a writer in the middle of staging: no meta.json there yet
    assert read_checkpoint_meta(tmp_path)["iteration"] == 1
    assert (staging / "G.pt").exists()  # a plain reader must not touch another process's staging folder
    # Committed (staged meta written) but killed before the renames: the owner rolls it forward.
    atomic_write_json(staging / "meta.json", {"iteration": 2, "sha256": {"G.pt": "0" * 64}})
    assert read_checkpoint_meta(tmp_path, recover=True)["iteration"] == 2
    assert (tmp_path / "G.pt").read_bytes() == b"new" and not staging.exists()
    # An uncommitted staging folder is discarded by the owner.
    staging.mkdir()
    (staging / "G.pt").write_bytes(b"half")
    recover_checkpoint_dir(tmp_path)
    assert not staging.exists() and (tmp_path / "G.pt").read_bytes() == b"new"


def test_non_tensor_pickles_are_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "x.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match=r"x\.pt: cannot load checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


# ----------------------------------------------------------------------------------------------------------------
# References: a write-once folder may point at another's file instead of copying it.


def _two_folders(tmp_path):
    from easlurm.checkpoints import file_ref

    (tmp_path / "config.yaml").write_text("{}\n")  # the run's root: references stay below it
    a, b = tmp_path / "cycles" / "001" / "members" / "00", tmp_path / "cycles" / "002" / "start" / "00"
    meta_a = commit_checkpoint(a, {"G.pt": torch_bytes({"w": torch.arange(4.0)}), "D.pt": b"d"}, {"done": True})
    meta_b = commit_checkpoint(b, {"rng.pt": torch_bytes({"s": torch.zeros(1)})}, {"kind": "start"},
                               refs={"G.pt": file_ref(a, "G.pt", meta_a)})
    return a, b, meta_a, meta_b


def test_a_reference_is_followed_by_loads_and_intact_checks(tmp_path):
    from easlurm.checkpoints import checkpoint_intact, file_ref

    a, b, meta_a, meta_b = _two_folders(tmp_path)
    assert meta_b["refs"] == {"G.pt": "../../../001/members/00/G.pt"}
    assert meta_b["sha256"]["G.pt"] == meta_a["sha256"]["G.pt"] and meta_b["size"]["G.pt"] == meta_a["size"]["G.pt"]
    assert not (b / "G.pt").exists()  # no copy
    assert file_ref(b, "G.pt", meta_b).path == a / "G.pt"
    assert torch.equal(load_verified(b, "G.pt")["w"], torch.arange(4.0))
    assert checkpoint_intact(b, meta_b) and checkpoint_intact(b, meta_b, full=True) and verify_checkpoint_dir(b)
    # A partial update of b keeps the reference; a name given as a file replaces it.
    meta_b = commit_checkpoint(b, {"rng.pt": b"r2"}, {"kind": "start"})
    assert meta_b["refs"] == {"G.pt": "../../../001/members/00/G.pt"} and verify_checkpoint_dir(b)
    meta_b = commit_checkpoint(b, {"G.pt": b"own"}, {"kind": "start"})
    assert "refs" not in meta_b and (b / "G.pt").read_bytes() == b"own" and verify_checkpoint_dir(b)
    with pytest.raises(ValueError, match=r"\['G.pt'\] given both as file and as reference"):
        commit_checkpoint(b, {"G.pt": b"x"}, {}, refs={"G.pt": file_ref(a, "G.pt", meta_a)})


def test_a_changed_or_missing_reference_target_fails_verification(tmp_path):
    from easlurm.checkpoints import checkpoint_intact

    a, b, _, meta_b = _two_folders(tmp_path)
    (a / "G.pt").write_bytes(torch_bytes({"w": torch.arange(4.0) + 1}))  # same size, other bytes
    assert checkpoint_intact(b, meta_b)  # the cheap size check cannot tell …
    assert not checkpoint_intact(b, meta_b, full=True) and not verify_checkpoint_dir(b)  # … the sha256 can
    with pytest.raises(CheckpointError, match=rf"^{a / 'G.pt'}: sha256 mismatch"):
        load_verified(b, "G.pt")
    (a / "G.pt").unlink()
    assert not checkpoint_intact(b, meta_b)
    with pytest.raises(CheckpointError, match=rf"^{a / 'G.pt'}: checkpoint not found"):
        load_verified(b, "G.pt")
    with pytest.raises(CheckpointError, match=r"optim\.pt: not listed in .*meta\.json"):
        load_verified(b, "optim.pt")


def test_run_directories_are_private_to_the_group_or_shared_with_it(tmp_path):
    from easlurm.store import make_run_dir

    private = make_run_dir(tmp_path / "a")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o750  # never world-readable, whatever the umask
    shared = make_run_dir(tmp_path / "b", group_shared=True)
    # Group members write and new files keep the group; sticky: only an entry's owner may rename or delete it.
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o3770


def test_every_folder_of_a_shared_run_is_sticky_and_its_files_group_writable(tmp_path, monkeypatch):
    import easlurm.store as store
    from easlurm.checkpoints import commit_checkpoint
    from easlurm.leases import held

    monkeypatch.setattr(store, "_SHARED", False)
    monkeypatch.setattr(store, "_UMASK", store._UMASK)
    old = os.umask(0o022)
    try:
        root = store.make_run_dir(tmp_path / "run", group_shared=True)
        store.apply_group_umask(True)
        commit_checkpoint(root / "cycles" / "000" / "members" / "00", {"G.pt": b"g"}, {"done": True})
        store.atomic_write_json(root / "logs" / "errors" / "x.json", {})
        with held(root / "fusion", "test", ttl=60):
            pass
    finally:
        os.umask(old)
    folders = [p for p in root.rglob("*") if p.is_dir()]
    assert {str(p.relative_to(root)) for p in folders} >= {"cycles/000/members/00", "logs/errors", "fusion"}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {oct(0o3770)}
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o660)}
