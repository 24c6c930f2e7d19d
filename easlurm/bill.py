"""The bill of a run before it runs: jobs, GPU-hours, expected time and disk (``python -m easlurm.bill``).

    easlurm bill --config configs/rrdb.yaml [--site FILE] [--set key=value ...] [--rates RUN_DIR|rates.json] [--keep K]
    easlurm bill RUN_DIR [--json] [--save-rates rates.json]

:func:`make_bill` is a pure function of the config, optional measured step rates
(:class:`~easlurm.timings.Rates`) and optional partition limits:

* **jobs and GPU-hours requested** per stage kind: tasks × time limit × GPUs of ``executor.slurm.<kind>``
  (from :func:`easlurm.orchestrate.plan.build_plan`, one row per registered stage kind, :mod:`easlurm.stages`);
* **expected time and GPU-hours** where a rate is known — measured in an earlier run of the same configuration
  (:func:`find_rates`: the run itself, other runs under ``run.root``, or ``--rates``), each stage kind's rate used
  only when the config values it depends on agree (:func:`easlurm.timings.rate_key`); wall time is the chain's
  compute time (queue waits not included), an Adam phase running ``array_parallelism`` members at once;
* **disk** (:mod:`easlurm.footprint`): checkpoint sizes of the configured G and D (built on the meta device);
  per cycle (EA's new genomes, trained members' G + D + optimizer + RNG state, EA records, TensorBoard) and for the
  whole run, without and with pruning (``python -m easlurm.prune`` keeps the last K cycles' D/optimizer/RNG state
  and every G);
* **warnings**: a time limit below a stage's expected time (the task is then checkpointed at the pre-timeout
  signal and requeued, waiting in the queue again), a memory/time/GPU request above what the partition offers
  (asked from ``sinfo`` when Slurm answers; silent without Slurm).
Sizes are binary (KiB, MiB, GiB, as ``du -h`` prints them).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import stages as registry
from .config import Config, load_config, load_run_config
from .errors import EaslurmError
from .footprint import DEFAULT_KEEP, Disk, disk_bill
from .leads import signal_leads
from .reference_rates import reference_rates
from .run_record import recorded_executor
from .stages.kind import StageResources
from .store import RunDir, read_json
from .timings import Rates, measured_rates, rate_key

__all__ = ["PartitionLimits", "StageBill", "Bill", "make_bill", "find_rates", "run_rates", "parse_sinfo",
           "partition_limits", "format_bill", "render", "format_bytes", "main"]

@dataclass(frozen=True)
class PartitionLimits:
    """What a partition offers: the largest node memory (GiB), its time limit (min, None = infinite) and the most
    GPUs on one node (None when sinfo does not say)."""
    name: str
    max_mem_gb: float | None
    max_time_min: int | None
    gpus_per_node: int | None


@dataclass(frozen=True)
class StageBill:
    """One stage kind: ``stages`` × up to ``tasks_per_stage`` tasks; requested and expected costs."""
    kind: str
    stages: int
    tasks: int
    time_min: int
    gpus: int
    cpus: int
    mem_gb: int
    gpu_h_requested: float
    cpu_h_requested: float
    expected_task_s: float | None = None      # the longest task
    expected_wall_s: float | None = None      # all stages of this kind, one after another
    expected_gpu_h: float | None = None


@dataclass
class Bill:
    executor: str
    stages: list[StageBill]
    disk: Disk | None
    warnings: list[str] = field(default_factory=list)
    rates_source: str | None = None
    unmeasured: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        return sum(s.tasks for s in self.stages)

    @property
    def gpu_h_requested(self) -> float:
        return sum(s.gpu_h_requested for s in self.stages)

    @property
    def expected_gpu_h(self) -> float | None:
        known = [s.expected_gpu_h for s in self.stages if s.expected_gpu_h is not None]
        return sum(known) if known else None

    @property
    def expected_wall_s(self) -> float | None:
        known = [s.expected_wall_s for s in self.stages if s.expected_wall_s is not None]
        return sum(known) if known else None

    def to_dict(self) -> dict[str, Any]:
        return {"executor": self.executor, "jobs": self.jobs, "gpu_h_requested": self.gpu_h_requested,
                "expected_gpu_h": self.expected_gpu_h, "expected_wall_s": self.expected_wall_s,
                "stages": [vars(s) for s in self.stages],
                "disk": {**vars(self.disk), "cycle_total": self.disk.cycle_total} if self.disk else None,
                "warnings": self.warnings, "rates_source": self.rates_source, "unmeasured": self.unmeasured}


# ----------------------------------------------------------------------------------------------------------------
# The bill


def _parallel(cfg: Config) -> int:
    k = cfg.executor.kind
    return cfg.executor.slurm.array_parallelism if k == "slurm" else (cfg.executor.local.max_parallel
                                                                      if k == "local" else 1)


def make_bill(cfg: Config, rates: Rates | None = None, limits: PartitionLimits | None = None,
              keep: int = DEFAULT_KEEP, leads: Mapping[str, int] | None = None) -> Bill:
    """The bill of a run of ``cfg`` (pure apart from building G and D on the meta device for the disk, which is
    left out where torch is not installed; see module docstring). ``leads``: the warning leads (default: computed
    from the config)."""
    from .orchestrate.plan import build_plan

    plan = build_plan(cfg, RunDir(cfg.run.root))  # paths only: nothing is read or created
    slurm = cfg.executor.kind == "slurm"
    usable = {k: r for k, r in rates.stages.items() if rates.key.get(k) == rate_key(cfg, k)} if rates else {}
    sources = [rates.source] if rates is not None and usable else []
    # Where no run measured a stage, the GPU check's figure for a matching configuration (the card named).
    reference = reference_rates(cfg, {k.name for k in registry.KINDS} - set(usable))
    if reference is not None:
        usable.update(reference[0].stages)
        sources.append(reference[0].source)
    leads = leads if leads is not None else signal_leads(cfg)
    lines: list[StageBill] = []
    warnings: list[str] = []
    for kind in registry.KINDS:
        stages = [s for s in plan if s.kind.name == kind.name]
        if not stages:
            continue
        res = cfg.executor.slurm.resources(kind.name)
        # Only tasks with work get a job (an Adam phase queues none for a slot that is not Adam-trained).
        tasks = sum(1 for s in stages for t in s.tasks if kind.busy(cfg, t.arguments))
        hours = res.time_min / 60
        line = StageBill(kind.name, len(stages), tasks, res.time_min, res.gpus, res.cpus, res.mem_gb,
                         tasks * hours * res.gpus, tasks * hours * res.cpus)
        rate = usable.get(kind.name)
        if rate is not None:
            longest = wall = busy = 0.0
            for s in stages:
                working = [t for t in s.tasks if kind.busy(cfg, t.arguments)]
                task_s = rate.startup_s + kind.units(cfg, s.cycle) * rate.seconds_per_unit
                longest = max(longest, task_s)
                wall += math.ceil(len(working) / _parallel(cfg)) * task_s if working else 0.0
                busy += len(working) * task_s
            line = dataclasses.replace(line, expected_task_s=longest, expected_wall_s=wall,
                                       expected_gpu_h=busy * res.gpus / 3600)
            limit_s = res.time_min * 60 - leads.get(kind.name, 60)
            if slurm and longest > limit_s:
                requeues = math.ceil(longest / max(limit_s, 1)) - 1
                warnings.append(f"{kind.name}: a task is expected to take {_hms(longest)} but its time limit is "
                                f"{_hms(res.time_min * 60)} (executor.slurm.{kind.name}.time_min={res.time_min}): it "
                                f"will be checkpointed at the pre-timeout signal and requeued ~{requeues} time(s), "
                                f"queueing again each time")
        lines.append(line)
        if slurm and limits is not None:
            warnings += _limit_warnings(kind.name, res, limits)
    unmeasured = [line.kind for line in lines if line.expected_task_s is None]
    try:
        disk: Disk | None = disk_bill(cfg, keep)
    except ImportError:  # the networks are sized with torch; a login node may not have it
        disk = None
    return Bill(cfg.executor.kind, lines, disk, warnings, "; ".join(sources) or None, unmeasured)


def _limit_warnings(kind: str, res: StageResources, limits: PartitionLimits) -> list[str]:
    where = f"partition {limits.name}"
    out = []
    if limits.max_mem_gb is not None and res.mem_gb > limits.max_mem_gb:
        out.append(f"{kind}: executor.slurm.{kind}.mem_gb={res.mem_gb} exceeds the largest node of {where} "
                   f"({limits.max_mem_gb:.0f} GiB): the job can never start")
    if limits.max_time_min is not None and res.time_min > limits.max_time_min:
        out.append(f"{kind}: executor.slurm.{kind}.time_min={res.time_min} exceeds the time limit of {where} "
                   f"({limits.max_time_min} min)")
    if limits.gpus_per_node is not None and res.gpus > limits.gpus_per_node:
        out.append(f"{kind}: executor.slurm.{kind}.gpus={res.gpus} exceeds the GPUs per node of {where} "
                   f"({limits.gpus_per_node})")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Rates from earlier runs


def run_rates(run: RunDir, cfg: Config | None = None) -> Rates:
    """The step rates a run measured (its finished tasks' recorded attempts)."""
    from .orchestrate.plan import build_plan

    cfg = cfg or load_run_config(run.root)
    return measured_rates(cfg, run, build_plan(cfg, run))


def _read_rates(path: Path) -> Rates:
    if path.is_dir():
        return run_rates(RunDir(path))
    return Rates.from_dict(read_json(path), str(path))


def find_rates(cfg: Config, run: RunDir | None = None, extra: Sequence[Path] = (), limit: int = 5
               ) -> Rates | None:
    """Rates for ``cfg``: from ``extra`` (run directories or rates files), the run itself and the newest ``limit``
    runs under ``run.root`` whose config agrees on each kind's :func:`~easlurm.timings.rate_key`. Per kind the
    first source that measured it wins."""
    candidates: list[Path] = list(extra)
    if run is not None and run.config.is_file():
        candidates.append(run.root)
    roots = {Path(cfg.run.root).resolve()} | ({run.root.parent} if run is not None else set())
    others = sorted({p.parent.resolve() for r in roots if r.is_dir() for p in r.glob("*/config.yaml")},
                    key=lambda p: (p / "config.yaml").stat().st_mtime, reverse=True)
    wanted = {k.name: rate_key(cfg, k.name) for k in registry.KINDS}
    found = 0
    for other in others:
        if found >= limit or other in candidates:
            continue
        try:
            ocfg = load_run_config(other)
        except EaslurmError:
            continue
        if any(rate_key(ocfg, k) == wanted[k] for k in wanted):
            candidates.append(other)
            found += 1
    stages: dict[str, Any] = {}
    key: dict[str, Any] = {}
    sources: list[str] = []
    for cand in candidates:
        try:
            r = _read_rates(cand)
        except EaslurmError:
            continue
        took = [k for k, v in r.stages.items() if k not in stages and r.key.get(k) == wanted.get(k)]
        for k in took:
            stages[k], key[k] = r.stages[k], r.key[k]
        if took:
            sources.append(f"{r.source} ({', '.join(took)})")
    return Rates(stages, key, "; ".join(sources)) if stages else None


# ----------------------------------------------------------------------------------------------------------------
# Partition limits (sinfo)


def _minutes(text: str) -> int | None:
    """A Slurm time limit (``mm``, ``mm:ss``, ``hh:mm:ss``, ``d-hh[:mm[:ss]]``) → minutes (seconds round up);
    ``infinite`` or anything unreadable → None."""
    t = text.strip()
    try:
        if "-" in t:
            days, rest = t.split("-", 1)
            h, m, sec = ([int(p) for p in rest.split(":")] + [0, 0])[:3]
            d = int(days)
        else:
            parts = [int(p) for p in t.split(":")]
            d = 0
            h, m, sec = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    except (ValueError, KeyError):
        return None
    return d * 1440 + h * 60 + m + (1 if sec else 0)


def parse_sinfo(text: str, partition: str | None) -> PartitionLimits | None:
    """Limits of ``partition`` (None → the default one, marked ``*``) from ``sinfo -h -o '%P|%m|%l|%G'`` output."""
    best: PartitionLimits | None = None
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4:
            continue
        name, mem, limit, gres = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        if (partition is None and not default) or (partition is not None and name != partition):
            continue
        try:
            mem_gb: float | None = float(mem.rstrip("+")) / 1024
        except ValueError:
            mem_gb = None
        gpus = None
        for g in gres.split(","):
            parts = g.split("(")[0].split(":")
            if parts[0] == "gpu" and parts[-1].isdigit():
                gpus = max(gpus or 0, int(parts[-1]))
        cur = PartitionLimits(name, mem_gb, _minutes(limit), gpus)
        if best is None:
            best = cur
        else:  # one line per node configuration: the partition offers the best of them
            best = PartitionLimits(name, max(filter(None, [best.max_mem_gb, mem_gb]), default=None),
                                   best.max_time_min, max(filter(None, [best.gpus_per_node, gpus]), default=None))
    return best


def partition_limits(partition: str | None, timeout_s: float = 10.0) -> PartitionLimits | None:
    """What ``sinfo`` says about ``partition``; None when Slurm is not there or does not answer."""
    argv = ["sinfo", "-h", "-o", "%P|%m|%l|%G"] + (["-p", partition] if partition else [])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_sinfo(proc.stdout, partition) if proc.returncode == 0 else None


# ----------------------------------------------------------------------------------------------------------------
# Text


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_bill(b: Bill, short: bool = False) -> str:
    d = b.disk
    exp = (f"; expected {b.expected_gpu_h:,.1f} GPU-h, {_hms(b.expected_wall_s or 0)} of compute wall time"
           if b.expected_gpu_h is not None else "; expected time: no measured rates for this config")
    missing = [s.kind for s in b.stages if s.expected_task_s is None and s.gpus > 0 and s.tasks > 0]
    if b.expected_gpu_h is not None and missing:
        exp += f" without {', '.join(missing)} (no rate)"
    if b.expected_gpu_h is not None and b.rates_source and "reference " in b.rates_source:
        exp += " (rates of a reference card: see below)"
    head = f"# bill: {b.jobs} jobs, {b.gpu_h_requested:,.1f} GPU-h requested{exp}"
    disk = (f"# disk: {format_bytes(d.cycle_total)} per cycle, {format_bytes(d.total)} for the run "
            f"({format_bytes(d.total_pruned)} pruned to the last {d.keep} cycles)" if d is not None else
            "# disk: not sized here (the networks are sized with torch, which this host does not have)")
    if short:
        return "\n".join([head, disk] + [f"# warning: {w}" for w in b.warnings])
    out = [head, f"#   {'stage':<9}{'jobs':>6}{'limit':>10}{'GPUs':>5}{'mem':>6}{'GPU-h req':>11}"
                 f"{'task (exp)':>12}{'wall (exp)':>12}{'GPU-h (exp)':>12}"]
    for s in b.stages:
        e = (lambda v, f: "-" if v is None else f(v))  # noqa: E731
        out.append(f"#   {s.kind:<9}{s.tasks:>6}{_hms(s.time_min * 60):>10}{s.gpus:>5}{s.mem_gb:>4}G"
                   f"{s.gpu_h_requested:>11,.1f}{e(s.expected_task_s, _hms):>12}{e(s.expected_wall_s, _hms):>12}"
                   f"{e(s.expected_gpu_h, lambda v: f'{v:,.1f}'):>12}")
    if b.executor != "slurm":
        out.append(f"#   ({b.executor} executor: time limits and GPU-h requested apply only on Slurm)")
    if b.rates_source:
        out.append(f"#   rates measured in: {b.rates_source}"
                   + (f"; not measured: {', '.join(b.unmeasured)}" if b.unmeasured else ""))
    out += _disk_lines(d) if d is not None else [disk]
    out += [f"# warning: {w}" for w in b.warnings]
    return "\n".join(out)


def _disk_lines(d: Disk) -> list[str]:
    f = d.files
    return [
        f"# disk: one member checkpoint is {format_bytes(f['G.pt'] + f['D.pt'] + f['optim.pt'])} (G "
        f"{format_bytes(f['G.pt'])}, D {format_bytes(f['D.pt'])}, optimizer state {format_bytes(f['optim.pt'])})"
        f" + RNG state {format_bytes(f['rng.pt'])}",
        f"#   per cycle {format_bytes(d.cycle_total)}: " + ", ".join(
            f"{k} {format_bytes(v)}" for k, v in d.per_cycle.items()),
        "#   once: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in d.once.items()),
        f"#   whole run ({d.adam_phases} Adam phases): {format_bytes(d.total)}; pruned to the last {d.keep} "
        f"cycles (python -m easlurm.prune): {format_bytes(d.total_pruned)} (frees "
        f"{format_bytes(d.prunable_per_cycle)} per older cycle); an EA phase holds up to "
        f"{format_bytes(d.ea_progress_peak)} more while it runs",
    ]


def render(cfg: Config, run: RunDir, *, short: bool = False, leads: Mapping[str, int] | None = None) -> str:
    """The bill as ``#`` comment lines for ``launch --dry-run`` (``short``: the summary a real launch prints).
    Rates come from :func:`find_rates`, partition limits from ``sinfo`` (Slurm executor only). Never raises an
    error: a bill that cannot be made says why in one line."""
    try:
        limits = partition_limits(cfg.executor.slurm.partition) if cfg.executor.kind == "slurm" else None
        rates = find_rates(cfg, run)
        text = format_bill(make_bill(cfg, rates, limits, leads=leads), short)
        if not short and cfg.adam.members_per_task > 1:  # what k buys: the same run with one member per task
            one = dataclasses.replace(cfg, adam=dataclasses.replace(cfg.adam, members_per_task=1))
            head = format_bill(make_bill(one, find_rates(one, run), limits), short=True).splitlines()[0]
            text += "\n" + head.replace("# bill:", "# with adam.members_per_task=1 instead:", 1)
        return text
    except Exception as exc:  # noqa: BLE001 - the bill informs; it must never stop a launch or a dry run
        return f"# bill: not available ({type(exc).__name__}: {exc})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easlurm.bill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="an existing run directory (its config; its own measurements as rates)")
    ap.add_argument("--run", dest="run_flag", help=argparse.SUPPRESS)  # the earlier spelling
    ap.add_argument("--config", help="a YAML config, instead of RUN")
    ap.add_argument("--site", metavar="FILE", help="site profile on top of --config (default: $EASLURM_SITE)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--rates", action="append", default=[], metavar="RUN_DIR|FILE",
                    help="measured rates: a finished run of the same config or a rates JSON (repeatable)")
    ap.add_argument("--keep", type=int, default=DEFAULT_KEEP, help="cycles pruning keeps (default %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the bill as JSON")
    ap.add_argument("--save-rates", metavar="FILE", help="with --run: write its measured rates to FILE")
    args = ap.parse_args(argv)
    args.run = args.run or args.run_flag
    if bool(args.run) == bool(args.config):
        ap.error("give exactly one of RUN or --config FILE")
    try:
        if args.run:
            run = RunDir(args.run)
            cfg = load_run_config(run.root)
            cfg.executor.kind = recorded_executor(run) or cfg.executor.kind  # type: ignore[assignment]
        else:
            from .site import read_site, site_path

            where = site_path(args.site)
            cfg = load_config(args.config, args.overrides, site=read_site(where) if where is not None else None)
            run = RunDir(Path(cfg.run.root) / f"{cfg.run.name}-BILL")
        if args.save_rates:
            from .store import atomic_write_json

            atomic_write_json(args.save_rates, run_rates(run, cfg).to_dict())
        rates = find_rates(cfg, run, [Path(p) for p in args.rates])
        limits = partition_limits(cfg.executor.slurm.partition) if cfg.executor.kind == "slurm" else None
        b = make_bill(cfg, rates, limits, max(1, args.keep))
    except EaslurmError as exc:
        print(f"easlurm.bill: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(b.to_dict(), indent=2, sort_keys=True) if args.json else format_bill(b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
