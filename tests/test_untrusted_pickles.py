"""The unpinned numpy unpickler, bounded in memory (security audit N8): memory proportional to the file.
Memory is measured in child processes as the growth of their peak RSS (VmHWM, reset before the load).
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from easlurm.numpy_unpickle import UnsafePickleError
from easlurm.numpy_unpickle import load as load_numpy

from child_rss import child

# ----------------------------------------------------------------------------------------------------------------
# N8: the unpinned numpy unpickler, bounded in memory


def test_a_9_byte_pickle_cannot_make_the_unpickler_allocate(tmp_path: Path) -> None:
    # LONG_BINPUT 2**25: the C unpickler sizes its memo array by the index (512 MiB; 2**31 - 1 asks for 32 GiB).
    for index in (2 ** 25, 2 ** 31 - 1, 2 ** 32 - 1):
        poc = b"\x80\x02Nr" + struct.pack("<I", index) + b"."
        assert len(poc) == 9
        f = tmp_path / f"memo-{index}.pkl"
        f.write_bytes(poc)
        res = child("from easlurm.numpy_unpickle import load\nSTART\n"
                     "print(repr(load(open(sys.argv[1], 'rb'), sys.argv[1])), f'{GROWTH():.1f}')\n", str(f))
        assert res.returncode == 0, res.stderr
        value, grew = res.stdout.split()
        assert value == "None" and float(grew) < 20, res.stdout


class _SharedBuffer:
    """Pickles as numpy ``_frombuffer(buf, uint8, shape, 'C')``; many of them name one memoized ``buf``."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        from numpy._core.numeric import _frombuffer  # what numpy's own protocol-5 pickles name

        return _frombuffer, (self.buf, np.dtype("u1"), (len(self.buf),), "C")


def test_arrays_cannot_hold_more_bytes_than_the_pickle(tmp_path: Path) -> None:
    buf = bytes(range(256)) * 4096  # 1 MiB, written once and named by 100 arrays
    data = pickle.dumps([_SharedBuffer(buf) for _ in range(100)], protocol=5)
    assert len(data) < 2 * len(buf)
    with pytest.raises(UnsafePickleError, match=r"^x\.pkl: refusing arrays of more bytes than the \d+-byte pickle"):
        load_numpy(open(_write(tmp_path / "x.pkl", data), "rb"), "x.pkl")
    one = load_numpy(open(_write(tmp_path / "one.pkl", pickle.dumps([_SharedBuffer(buf)], protocol=5)), "rb"), "1")
    assert one[0].tobytes() == buf and one[0].flags.writeable


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
