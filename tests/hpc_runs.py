"""One finished tiny run shared by the bill, status and lineage tests (built once per test session).

Structure of configs/rrdb.yaml at toy size: an RRDBNet generator, member 0 ``ea_only``, a shorter first Adam phase
and a final Adam phase after the last EA phase; 3 members, 2 cycles, 2 EA generations. Launched through
``python -m easlurm.launch`` with the debug executor, so ``run.json`` and the launch's own output (which prints the
bill's summary) exist like in a real run; the launch output is kept in ``launch-output.txt`` beside the run.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from conftest import REPO, TINY

#: The shared run's overrides on top of configs/tiny.yaml and TINY (32 growth channels, as published: spandrel's
#: ESRGAN loader, which the export test uses, assumes them).
RRDB_LIKE = ("model.arch=rrdbnet", "model.num_feat=8", "model.num_block=1", "model.num_grow_ch=32",
             "population.member0=ea_only", "run.cycles=2", "adam.first_phase_iters=3", "adam.final_phase=true",
             "adam.final_phase_iters=6", "executor.slurm.adam.gpus=1", "executor.slurm.ea.gpus=1",
             "executor.slurm.fuse.gpus=1", "executor.slurm.eval.gpus=1", "executor.slurm.pretrain.gpus=1")


def finished_run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    """The shared finished run directory (launched on first use; later calls return it)."""
    from easlurm.launch import main

    root = tmp_path_factory.getbasetemp() / "hpc-shared"
    run = root / "runs" / "rrdb-like"
    if (run / "eval" / "results.md").is_file():
        return run
    out = io.StringIO()
    argv = ["--config", str(REPO / "configs" / "tiny.yaml"), "--run-dir", str(run), "--executor", "debug"]
    for o in (f"data.demo_dir={demo_shards}", f"run.root={root / 'runs'}", "run.name=rrdb-like", *TINY,
              *RRDB_LIKE):
        argv += ["--set", o]
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    (root / "launch-output.txt").write_text(out.getvalue(), encoding="utf-8")
    assert rc == 0, out.getvalue()[-3000:]
    return run


def file_bytes(folder: Path, skip: tuple[str, ...] = ()) -> int:
    """Bytes of the regular files under ``folder`` (directories themselves not counted), skipping paths whose
    parts include a name in ``skip``."""
    return sum(p.stat().st_size for p in sorted(folder.rglob("*"))
               if p.is_file() and not p.is_symlink() and not set(p.relative_to(folder).parts) & set(skip))
