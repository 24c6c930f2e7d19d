"""A stage kind added from outside easlurm: after fusion, write ``RUN/export/manifest.json`` (the fused model's
sha256 and the final members'). One module; the test registers it with one line."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from easlurm.records import StageRecord
from easlurm.stages.kind import StageKind, StageResources, TaskSpec
from easlurm.store import RunDir, atomic_write_json


@dataclass(kw_only=True)
class ExportRecord(StageRecord):
    KINDS: ClassVar[tuple[str, ...]] = ("export",)
    kind: str = "export"
    fused_sha256: str = ""


def _path(run: RunDir) -> Path:
    return run.root / "export" / "manifest.json"


def export(run_dir: str, device: str | None = None) -> ExportRecord:
    """The job: read the fusion record, write the manifest (a record with its attempt)."""
    from easlurm.config import load_run_config
    from easlurm.stages.fuse import read_record

    run = RunDir(run_dir)
    fused = read_record(load_run_config(run.root), run)
    assert fused is not None and fused.done
    t = time.time()
    rec = ExportRecord(iteration=1, iters_target=1, done=True, fused_sha256=fused.files["sha256"]["fused.pt"],
                       attempts=[{"started": t, "loop_started": t, "updated": t, "first": 0, "last": 1}])
    atomic_write_json(_path(run), rec.to_dict())
    return rec


def is_done(cfg: Any, run: RunDir) -> bool:
    return _path(run).is_file() and json.loads(_path(run).read_text())["done"]


KIND = StageKind(
    name="export",
    summary="writes the fused model's manifest",
    entry="plugins.export_stage:export",
    tasks=lambda cfg, cycle: [TaskSpec("export")],
    is_done=is_done,
    resources=StageResources(time_min=15, gpus=0, cpus=1, mem_gb=2),
    record=lambda cfg, run: ExportRecord.read(_path(run)),
)
