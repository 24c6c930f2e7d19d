"""The security audit's proofs of concept (../shared/reviews/security-audit.md N1-N3, N5, N7), each replayed against
the run directory: a neighbour with write access, a stale or paused process, or an odd file must not make easlurm
write outside the run, follow a link it did not make, run a config it did not record, or commit after losing its
lease. Each of these failed on the code before the trust-model change."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from easlurm.checkpoints import (
    checkpoint_intact, commit_checkpoint, file_ref, read_checkpoint_meta, read_ref, recover_checkpoint_dir,
)
from easlurm.errors import CheckpointError, ConfigError
from easlurm.leases import LEASE_NAME, LeaseLost, _read, _take_over, acquire
from easlurm.population import read_member
from easlurm.store import RunDir, atomic_write_json
from easlurm.tensor_files import load_verified, torch_bytes

REPO = Path(__file__).resolve().parents[1]


def _run_root(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.config.write_text("{}\n")
    return run


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    for name, text in (("id_ed25519", "key"), ("notes.txt", "notes"), ("thesis.tex", "thesis")):
        (victim / name).write_text(text)
    return victim


# ----------------------------------------------------------------------------------------------------------------
# N1: a group member who can write the run directory


@pytest.mark.parametrize("victim_has_meta", [False, True])
def test_a_staging_symlink_is_refused_not_followed(tmp_path, victim_has_meta):
    run = _run_root(tmp_path)
    folder = run.member(2, 1)
    commit_checkpoint(folder, {"G.pt": b"mine"}, {"kind": "member"})
    victim = _victim(tmp_path)
    if victim_has_meta:
        (victim / "meta.json").write_text(json.dumps({"kind": "evil", "sha256": {}}))
    before = {p.name: p.read_text() for p in victim.iterdir()}
    (folder / ".staging").symlink_to(victim)
    with pytest.raises(CheckpointError, match=r"\.staging: not a folder .*refusing to recover through it"):
        read_member(folder, recover=True)  # the first call of an Adam task
    with pytest.raises(CheckpointError, match=r"\.staging"):
        commit_checkpoint(folder, {"G.pt": b"new"}, {"kind": "member"})
    assert {p.name: p.read_text() for p in victim.iterdir()} == before  # nothing deleted, nothing moved
    assert read_checkpoint_meta(folder)["kind"] == "member" and (folder / "G.pt").read_bytes() == b"mine"


def test_roll_forward_moves_only_the_files_the_staged_meta_lists(tmp_path):
    run = _run_root(tmp_path)
    folder = run.member(0, 0)
    commit_checkpoint(folder, {"G.pt": b"old"}, {"iteration": 1})
    staging = folder / ".staging"
    staging.mkdir()
    (staging / "G.pt").write_bytes(b"new")
    (staging / "config.yaml").write_text("planted")  # not listed: must not be moved into the folder
    atomic_write_json(staging / "meta.json", {"iteration": 2, "sha256": {"G.pt": "0" * 64}})
    recover_checkpoint_dir(folder)
    assert (folder / "G.pt").read_bytes() == b"new" and not (folder / "config.yaml").exists()
    assert not staging.exists()


def test_a_swapped_temp_file_cannot_redirect_a_write(tmp_path):
    """The PoC's attacker replaces every ``.state.json.*.tmp`` it sees with a link to a victim file while the owner
    writes ``state.json`` 200 times: the victim is never written and ``state.json`` is never a link."""
    folder = tmp_path / "run"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    stop = threading.Event()
    swaps = []

    def attacker() -> None:
        while not stop.is_set():
            for name in os.listdir(folder):
                if name.startswith(".state.json.") and name.endswith(".tmp"):
                    try:
                        os.unlink(folder / name)
                        os.symlink(victim, folder / name)
                        swaps.append(name)
                    except OSError:
                        pass

    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    refused = 0
    try:
        for i in range(200):
            try:
                atomic_write_json(folder / "state.json", {"i": i})
            except CheckpointError as exc:
                assert "was replaced while it was written" in str(exc)
                refused += 1
    finally:
        stop.set()
        thread.join()
    assert victim.read_text() == "precious"
    state = folder / "state.json"
    assert not state.is_symlink()
    if state.exists():
        assert set(json.loads(state.read_text())) == {"i"}
    assert refused <= len(swaps)


def _launched(tmp_path: Path, demo_shards: Path, *extra: str) -> RunDir:
    from easlurm.launch import prepare_run

    _, run = prepare_run(str(REPO / "configs" / "tiny.yaml"), str(tmp_path / "run"), None,
                         [f"data.demo_dir={demo_shards}", *extra], None, ["test"], echo=lambda m: None)
    return run


def test_resume_refuses_a_swapped_config_unless_told_and_records_who_accepted(tmp_path, demo_shards):
    from easlurm.launch import prepare_run
    from easlurm.run_record import read, verify_config

    run = _launched(tmp_path, demo_shards)
    rec = read(run)["config"]
    assert rec["uid"] == os.getuid() and len(rec["sha256"]) == 64
    text = run.config.read_text()
    swapped = text.replace("binary: apptainer", "binary: /tmp/evil-apptainer")
    assert swapped != text
    run.config.write_text(swapped)  # what a group member's rename would do
    with pytest.raises(ConfigError, match=r"config\.yaml: it changed since it was recorded in run\.json .*"
                                          r"--accept-config-change"):
        prepare_run(None, None, str(run.root), [], None, ["test"], echo=lambda m: None)
    with pytest.raises(ConfigError, match=r"not the config recorded in .*run\.json"):
        verify_config(run)  # and no task starts from it either
    notes: list[str] = []
    cfg, _ = prepare_run(None, None, str(run.root), [], None, ["test"], echo=notes.append,
                         accept_config_change=True)
    assert cfg.container.binary == "/tmp/evil-apptainer" and any("accepted" in n for n in notes)
    change = read(run)["config_changes"][-1]
    assert change["uid"] == os.getuid() and change["from"] == rec["sha256"] and change["to"] != rec["sha256"]
    assert change["time"] and change["by"]
    verify_config(run)  # adopted: tasks run again
    prepare_run(None, None, str(run.root), [], None, ["test"], echo=lambda m: None)  # and resumes need no flag


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give the file to another user")
def test_resume_refuses_a_config_owned_by_someone_else(tmp_path, demo_shards):
    from easlurm.launch import prepare_run

    run = _launched(tmp_path, demo_shards)
    os.chown(run.config, 4242, -1)
    with pytest.raises(ConfigError, match=r"config\.yaml: it belongs to .*\(uid 4242\), not to you"):
        prepare_run(None, None, str(run.root), [], None, ["test"], echo=lambda m: None)


# ----------------------------------------------------------------------------------------------------------------
# N2: references in meta.json


def _referencing(run: RunDir, rel: str) -> Path:
    folder = run.start(2, 1)
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"kind": "start", "sha256": {"G.pt": "0" * 64},
                                                  "size": {"G.pt": 5}, "refs": {"G.pt": rel}}))
    return folder


@pytest.mark.parametrize("how", ["relative", "absolute", "through-a-link"])
def test_a_reference_out_of_the_run_is_refused(tmp_path, how):
    run = _run_root(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "D.pt").write_bytes(torch_bytes({"w": torch.ones(2)}))
    if how == "relative":
        rel = "../../../../../outside/D.pt"
    elif how == "absolute":
        rel = str(outside / "D.pt")
    else:
        (run.root / "cycles" / "001").mkdir(parents=True)
        (run.root / "cycles" / "001" / "members").symlink_to(outside)
        rel = "../../../001/members/D.pt"
    folder = _referencing(run, rel)
    meta = read_checkpoint_meta(folder)
    with pytest.raises(CheckpointError, match=r"reference 'G\.pt' .*(leads outside the run directory|must be a "
                                              r"path relative)"):
        file_ref(folder, "G.pt", meta)
    with pytest.raises(CheckpointError):
        load_verified(folder, "G.pt")
    assert not checkpoint_intact(folder, meta) and not checkpoint_intact(folder, meta, full=True)


def test_a_fifo_reference_neither_blocks_nor_passes(tmp_path):
    run = _run_root(tmp_path)
    os.mkfifo(run.root / "pipe")
    folder = _referencing(run, "../../../../pipe")
    meta = read_checkpoint_meta(folder)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append((checkpoint_intact(folder, meta, full=True),
                                                           _error(lambda: load_verified(folder, "G.pt")))),
                              daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "a FIFO blocked the reader"
    intact, error = result[0]
    assert intact is False and isinstance(error, CheckpointError)


def _error(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
    return None


def test_a_wrong_size_is_refused_before_the_file_is_read(tmp_path):
    run = _run_root(tmp_path)
    big = run.root / "cycles" / "big.pt"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as fh:
        fh.truncate(400 << 20)  # sparse: 400 MiB that cost no disk
    folder = _referencing(run, "../../../big.pt")
    ref = file_ref(folder, "G.pt", read_checkpoint_meta(folder))
    with pytest.raises(CheckpointError, match=r"big\.pt: 419430400 bytes, but 5 were recorded"):
        read_ref(ref)
    with pytest.raises(CheckpointError, match=r"more than the 1000-byte limit"):
        read_ref(type(ref)(ref.path, ref.sha256, None), limit=1000)


def test_a_meta_json_with_wrong_types_is_one_error_naming_it(tmp_path):
    run = _run_root(tmp_path)
    folder = run.member(0, 0)
    folder.mkdir(parents=True)
    for bad, match in (({"sha256": "abc"}, r"'sha256' must map file names"),
                       ({"sha256": {"G.pt": 5}}, r"sha256\['G\.pt'\] has an unusable value"),
                       ({"refs": ["G.pt"]}, r"'refs' must map file names"),
                       ({"sha256": {"../x": "0" * 64}}, r"'\.\./x' is not a plain file name"),
                       ([], r"expected a JSON object")):
        (folder / "meta.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=r"meta\.json: " + match):
            read_checkpoint_meta(folder)
    (folder / "meta.json").write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match=r"meta\.json: not valid JSON \(RecursionError"):
        read_checkpoint_meta(folder)


# ----------------------------------------------------------------------------------------------------------------
# N3: leases


def test_a_paused_holder_that_lost_its_lease_commits_nothing(tmp_path):
    """The holder passes its checks, is paused (Slurm suspend) past its lease, another process takes over and
    commits; the holder resumes and tries to commit: refused right before the commit point, nothing renamed."""
    folder = tmp_path / "member"
    a = acquire(folder, "member 01", ttl=1.0)
    a.check()
    a._stop.set()  # paused: its renewal thread no longer runs
    a._thread.join()
    time.sleep(1.5)  # silent for longer than the ttl
    b = acquire(folder, "member 01 (retry)", ttl=1.0)
    assert b.fence == a.fence + 1
    commit_checkpoint(folder, {"G.pt": b"from b"}, {"by": "b"}, fence=b.check)
    with pytest.raises(LeaseLost, match=r"member 01: lease .* \(fence 1\) was taken over"):
        commit_checkpoint(folder, {"G.pt": b"from a"}, {"by": "a"}, fence=a.check)
    assert read_checkpoint_meta(folder)["by"] == "b" and (folder / "G.pt").read_bytes() == b"from b"
    assert not (folder / ".staging").exists()
    b.release()


def test_two_contenders_cannot_both_take_an_empty_stale_lease(tmp_path):
    """Driven step by step as in the PoC: both judge the same empty, stale record stale; A moves it away and
    creates its own (still empty); B's takeover must then put A's back, not replace it."""
    path = tmp_path / LEASE_NAME
    path.write_bytes(b"")
    old = time.time() - 3600
    os.utime(path, (old, old))
    seen_a, seen_b = _read(path), _read(path)
    assert seen_a.holder == {} and seen_b.holder == {}
    _take_over(path, seen_a)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # A's fresh lease, not yet written
    os.close(fd)
    a_inode = path.stat().st_ino
    _take_over(path, seen_b)
    assert path.stat().st_ino == a_inode  # B put it back: it was not the record B judged stale
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEASE_NAME]


def test_a_lease_file_that_is_a_link_is_never_followed(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text(json.dumps({"host": "x", "pid": 1, "token": "t"}))
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / LEASE_NAME).symlink_to(victim)
    lease = acquire(folder, "stage", ttl=30)
    assert not (folder / LEASE_NAME).is_symlink() and victim.read_text().startswith('{"host": "x"')
    lease.release()


# ----------------------------------------------------------------------------------------------------------------
# N5: a run directory reached through a link


def test_a_symlinked_run_dir_with_a_newline_never_reaches_a_script(tmp_path):
    evil = tmp_path / "evil\ntouch INJ3 #"
    evil.mkdir()
    (tmp_path / "link").symlink_to(evil)
    res = subprocess.run([sys.executable, "-m", "easlurm.launch", "--config", str(REPO / "configs" / "tiny.yaml"),
                          "--run-dir", str(tmp_path / "link"), "--executor", "slurm", "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "--run-dir (with links resolved)" in res.stderr and "control characters" in \
        res.stderr
    assert "#SBATCH" not in res.stdout and not (tmp_path / "INJ3").exists()


def test_a_rendered_script_never_holds_a_control_character(tmp_path):
    from easlurm.config import load_config
    from easlurm.orchestrate.plan import build_plan
    from easlurm.orchestrate.sbatch import Submission, render

    run = RunDir(tmp_path / "bad\nrun")  # as if every earlier check had been bypassed
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["executor.kind=slurm"])
    stage = build_plan(cfg, run)[0]
    with pytest.raises(ConfigError, match=r"sbatch script of stage .*: line \d+ holds a control character"):
        render(cfg, run, Submission(stage, [0]))



def test_data_max_pixels_caps_the_evaluation_images_before_they_are_decoded(tmp_path):
    import numpy as np
    from PIL import Image

    from easlurm.config import load_config
    from easlurm.errors import DataError
    from easlurm.evaluate import check_test_sets

    folder = tmp_path / "set"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(folder / "a.png")
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"eval.sets={{big: {folder}}}", "data.max_pixels=1999"])
    (test_set,) = check_test_sets(cfg)
    with pytest.raises(DataError, match=r"a\.png: image is 50x40 = 2000 px, more than the 1999 px allowed"):
        next(test_set.images(4))
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"eval.sets={{big: {folder}}}", "data.max_pixels=2000"])
    (test_set,) = check_test_sets(cfg)
    assert next(test_set.images(4))[1].shape == (40, 48, 3)
    with pytest.raises(ConfigError, match=r"data\.max_pixels: must be <= 89478485"):
        load_config(REPO / "configs" / "tiny.yaml", ["data.max_pixels=100000000"])
