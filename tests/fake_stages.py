"""Stage functions for executor tests: tiny, file-based, importable by ``module:function`` references."""
from __future__ import annotations

import os
import time
from pathlib import Path

from easlurm.errors import EaslurmError


def marker_done(run_dir: str, index: int, out: str) -> bool:
    return (Path(out) / f"{index}.end").exists()


def no_progress(run_dir: str, index: int, out: str) -> int:
    return 0


def fail_with_message(run_dir: str, index: int, out: str) -> None:
    raise EaslurmError(f"cycles/000/start/{index:02d}: not found (written by the init stage)")


def write_marker(run_dir: str, index: int, out: str) -> None:
    time.sleep(0.2)
    (Path(out) / f"{index}.end").write_text(str(os.getpid()))
