"""Atomic files and the checkpoint journal: a reader never sees half a checkpoint and never breaks a writer."""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from easlurm.errors import CheckpointError
from easlurm.store import (
    atomic_write_json, commit_checkpoint, load_checkpoint, load_verified, read_checkpoint_meta,
    recover_checkpoint_dir, torch_bytes, verify_checkpoint_dir,
)


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
    atomic_write_json(staging / "meta.json", {"iteration": 2, "sha256": {"G.pt": "x"}})
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
