"""The plan of a run: its stages in order, the processes of each stage, and how to tell a stage is finished.

    [pretrain] → adam/000 (array of N) → ea/000 → adam/001 → ea/001 → … → fuse → eval

Every task is a stage CLI (``python -m easlurm.train …``), so any stage can also be run by hand. Whether a task is
done is read from the run directory only — the files are the truth; job ids in ``state.json`` are bookkeeping — so
"resume" is simply "run whatever is not done".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..store import RunDir, read_checkpoint_meta, read_json, verify_checkpoint_dir
from ..errors import CheckpointError

STAGE_KINDS = ("pretrain", "adam", "ea", "fuse", "eval")


@dataclass(frozen=True)
class Task:
    """One process: ``python -m <module> <args…>``; ``label`` names it in logs and reports (e.g. member 02)."""
    module: str
    args: tuple[str, ...]
    label: str

    def argv(self, python: str = "python") -> list[str]:
        return [python, "-m", self.module, *self.args]


@dataclass
class Stage:
    """A group of tasks that may run at once (an Adam phase is a Slurm array); stages run strictly in order."""
    key: str                      # "pretrain", "adam/003", "ea/003", "fuse", "eval"
    kind: str                     # one of STAGE_KINDS (selects executor.slurm.<kind> resources)
    cycle: int | None
    tasks: list[Task] = field(default_factory=list)

    @property
    def is_array(self) -> bool:
        return self.kind == "adam"


def build_plan(cfg: Config, run: RunDir) -> list[Stage]:
    """All stages of the run described by ``cfg`` (done or not)."""
    r = str(run.root)
    stages: list[Stage] = []
    if not cfg.model.pretrained:
        stages.append(Stage("pretrain", "pretrain", None, [Task("easlurm.train", ("--run", r, "--pretrain"),
                                                                "pretrain")]))
    for c in range(cfg.run.cycles):
        stages.append(Stage(f"adam/{c:03d}", "adam", c, [
            Task("easlurm.train", ("--run", r, "--cycle", str(c), "--member", str(i)), f"member {i:02d}")
            for i in range(cfg.population.size)]))
        stages.append(Stage(f"ea/{c:03d}", "ea", c, [Task("easlurm.evo", ("--run", r, "--cycle", str(c)),
                                                          f"ea cycle {c}")]))
    stages.append(Stage("fuse", "fuse", None, [Task("easlurm.fuse", ("--run", r), "fusion")]))
    stages.append(Stage("eval", "eval", None, [Task("easlurm.evaluate", ("--run", r), "evaluation")]))
    return stages


# ----------------------------------------------------------------------------------------------------------------
# Completion checks (cheap: meta flags and checksums of small files; big checkpoints are verified by the jobs)


def _meta_done(folder: Path) -> bool:
    try:
        meta = read_checkpoint_meta(folder)
    except CheckpointError:
        return False
    return bool(meta and (meta.get("done") or meta.get("frozen")))


def _ea_done(run: RunDir, c: int) -> bool:
    done = run.ea(c) / "done.json"
    if not done.is_file():
        return False
    try:
        read_json(done)
    except CheckpointError:
        return False
    return True


def task_done(stage: Stage, index: int, run: RunDir) -> bool:
    """Whether task ``index`` of ``stage`` has finished, judged from the run directory alone."""
    if stage.kind == "pretrain":
        return _meta_done(run.pretrain)
    if stage.kind == "adam":
        assert stage.cycle is not None
        return _meta_done(run.member(stage.cycle, index))
    if stage.kind == "ea":
        assert stage.cycle is not None
        return _ea_done(run, stage.cycle)
    if stage.kind == "fuse":
        return (run.fusion / "fused.pt").is_file() and _meta_done(run.fusion)
    if stage.kind == "eval":
        return (run.eval / "results.csv").is_file() and (run.eval / "results.md").is_file()
    raise ValueError(f"unknown stage kind {stage.kind!r}")


def stage_done(stage: Stage, run: RunDir) -> bool:
    return all(task_done(stage, i, run) for i in range(len(stage.tasks)))


def pending_stages(plan: list[Stage], run: RunDir) -> list[Stage]:
    """The stages still to run, in order (everything from the first unfinished stage on, minus finished ones)."""
    return [s for s in plan if not stage_done(s, run)]


def member_verified(run: RunDir, c: int, i: int) -> bool:
    """Stronger check used by ``status``: the member's files all match their recorded sha256."""
    return verify_checkpoint_dir(run.member(c, i))
