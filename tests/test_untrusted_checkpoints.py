"""What reaches torch.load (security audit N9, N2): only stored zip records, size and type checked with fstat
before reading, hashed while read, no FIFO waited on, no link followed in a run.
Memory is measured in child processes as the growth of their peak RSS (VmHWM, reset before the load).
"""
from __future__ import annotations

import json
import os
import signal
import struct
import time
from pathlib import Path

import pytest
import torch

from easlurm.errors import CheckpointError
from easlurm.store import sha256_bytes
from easlurm.tensor_files import load_checkpoint, load_verified, torch_bytes

from child_rss import child

# ----------------------------------------------------------------------------------------------------------------
# N9: what reaches torch.load


def test_a_deflated_torch_zip_is_refused_before_torch_inflates_it(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pt"
    make = ("import io, zipfile, torch\nsrc = io.BytesIO(); torch.save({'w': torch.zeros(16 << 20)}, src)\n"
            "with zipfile.ZipFile(src) as zin, zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED, "
            "compresslevel=9) as zout:\n    for i in zin.infolist():\n        zout.writestr(i.filename, "
            "zin.read(i))\n")
    assert child(make, str(bomb)).returncode == 0
    assert bomb.stat().st_size < 100_000  # a 64 MiB tensor inside
    res = child("import torch\nfrom easlurm.tensor_files import load_checkpoint\nSTART\n"
                 "try:\n    load_checkpoint(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
                 "print(f'{GROWTH():.1f}')\n", str(bomb))
    assert f"CheckpointError {bomb}: record " in res.stdout and "is compressed (zip method 8/8)" in res.stdout, res
    assert float(res.stdout.split()[-1]) < 20, res.stdout
    res = child("import torch\nSTART\nt = torch.load(sys.argv[1], weights_only=True)['w']\n"
                 "print(t.numel(), f'{GROWTH():.1f}')\n", str(bomb))
    numel, grew = res.stdout.split()  # what torch.load alone does with it: inflates 64 MiB
    assert numel == str(16 << 20) and float(grew) > 60, res.stdout


def _checkpoint(folder: Path, obj: object) -> dict[str, object]:
    """``folder/G.pt`` with a meta listing its sha256 and size, as a committed checkpoint has."""
    data = torch_bytes(obj)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "G.pt").write_bytes(data)
    meta = {"sha256": {"G.pt": sha256_bytes(data)}, "size": {"G.pt": len(data)}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return meta


def test_size_type_and_links_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    meta = _checkpoint(tmp_path / "a", {"w": torch.arange(3.0)})
    assert torch.equal(load_verified(tmp_path / "a", "G.pt", meta)["w"], torch.arange(3.0))
    # A recorded 600-byte file replaced by a (sparse) 400 MiB one: refused by fstat, not read then hashed.
    big = tmp_path / "a" / "G.pt"
    with open(big, "r+b") as fh:
        fh.truncate(400 << 20)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"^{big}: 419430400 bytes, but \d+ were recorded"):
        load_verified(tmp_path / "a", "G.pt", meta)
    assert time.perf_counter() - t0 < 0.2
    with pytest.raises(CheckpointError, match=rf"^{big}: 419430400 bytes, more than the 1048576-byte limit"):
        load_checkpoint(big, max_bytes=1 << 20)
    # A FIFO is refused at once, never waited on (the alarm fails the test instead of hanging it).
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("blocked on a FIFO"))
    signal.alarm(5)
    try:
        with pytest.raises(CheckpointError, match=rf"^{fifo}: not a regular file"):
            load_checkpoint(fifo)
        with pytest.raises(CheckpointError, match=r"/dev/null: not a regular file"):
            load_checkpoint("/dev/null")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    # A run file that is a symbolic link is refused; a user's weight file given as a link is followed.
    meta = _checkpoint(tmp_path / "b", {"w": torch.ones(2)})
    os.replace(tmp_path / "b" / "G.pt", tmp_path / "elsewhere.pt")
    os.symlink(tmp_path / "elsewhere.pt", tmp_path / "b" / "G.pt")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'b' / 'G.pt'}: is a symbolic link; refusing"):
        load_verified(tmp_path / "b", "G.pt", meta)
    assert torch.equal(load_checkpoint(tmp_path / "b" / "G.pt")["w"], torch.ones(2))


def test_honest_files_still_load_and_a_changed_one_fails_its_hash(tmp_path: Path) -> None:
    meta = _checkpoint(tmp_path, {"w": torch.arange(5.0), "n": 3})
    sha = meta["sha256"]["G.pt"]  # type: ignore[index]
    assert load_checkpoint(tmp_path / "G.pt", sha256=sha, size=meta["size"]["G.pt"])["n"] == 3  # type: ignore[index]
    legacy = tmp_path / "legacy.pt"  # torch's pre-1.6 format (a pickle, not a zip): old released weights use it
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(legacy)["w"], torch.ones(3))
    data = bytearray((tmp_path / "G.pt").read_bytes())
    data[-30] ^= 1
    (tmp_path / "G.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'G.pt'}: sha256 mismatch"):
        load_checkpoint(tmp_path / "G.pt", sha256=sha)
    with pytest.raises(CheckpointError, match=r"checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_zip_records_may_not_overlap(tmp_path: Path) -> None:
    # 20 more central-directory entries naming the same 1 MiB stored record: 21 MiB of records in a 1 MiB file.
    data = torch_bytes({"w": torch.zeros(1 << 18)})
    eocd = data.rfind(b"PK\x05\x06")
    count, cd_size, cd_off = struct.unpack_from("<HII", data, eocd + 10)
    entries, i = [], cd_off
    while i < cd_off + cd_size:
        n, m, k = struct.unpack_from("<HHH", data, i + 28)
        entries.append(data[i:i + 46 + n + m + k])
        i += 46 + n + m + k
    biggest = max(entries, key=lambda e: struct.unpack_from("<I", e, 24)[0])  # by uncompressed size
    tail = bytearray(data[eocd:])
    struct.pack_into("<HHI", tail, 8, count + 20, count + 20, cd_size + 20 * len(biggest))
    evil = tmp_path / "overlap.pt"
    evil.write_bytes(data[:cd_off + cd_size] + biggest * 20 + bytes(tail))
    with pytest.raises(CheckpointError, match=rf"^{evil}: its zip records hold \d+ bytes, more than the file's"):
        load_checkpoint(evil)
