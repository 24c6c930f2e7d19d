"""A stage kind for executor tests: tiny and file-based — proof that a new kind is one module plus one registry
entry (or, as here, stages built from it directly)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from easlurm.errors import EaslurmError
from easlurm.orchestrate.plan import Stage, Task
from easlurm.stages.kind import StageKind, TaskSpec


def marker_done(cfg: Any, run: Any, index: int, out: str) -> bool:
    return (Path(out) / f"{index}.end").exists()


def fail_with_message(run_dir: str, index: int, out: str) -> None:
    raise EaslurmError(f"cycles/000/start/{index:02d}: not found (written by the init stage)")


def write_marker(run_dir: str, index: int, out: str) -> None:
    time.sleep(0.2)
    (Path(out) / f"{index}.end").write_text(str(os.getpid()))


def marker_kind(name: str, n: int, out: Path, entry: str = "fake_stages:write_marker", array: bool = True
                ) -> StageKind:
    """A kind of ``n`` tasks; task i is done when ``out/i.end`` exists (``write_marker`` writes it)."""
    return StageKind(name=name, summary="writes a marker file per task", entry=entry, is_done=marker_done,
                     tasks=lambda cfg, cycle: [TaskSpec(f"member {i:02d}", (("index", i), ("out", str(out))))
                                               for i in range(n)], array=array)


def marker_stage(key: str, n: int, out: Path, cfg: Any, run: Any, entry: str = "fake_stages:write_marker",
                 cycle: int | None = 0) -> Stage:
    kind = marker_kind(key.split("/")[0], n, out, entry)
    return Stage(key, kind, cycle, [Task(kind, spec.args, spec.label, cfg, run) for spec in kind.tasks(cfg, cycle)])
