"""How long before its time limit each stage kind is warned (``#SBATCH --signal=B:USR2@LEAD``).

The warning is acted on after the stage's current unit of work (an iteration, an EA generation) and then costs one
checkpoint commit, and slurmctld sends due signals only every ~30 s; so a stage kind's lead is 45 s + 2 × (one unit
+ one commit), rounded up to 10 s, at least 60 s, at most a third of its time limit — unless
``executor.slurm.<kind>.signal_lead_s`` sets it. A unit's time is the run's own measurement once it has one
(:func:`easlurm.timings.measured_rates`), else the kind's conservative default; a commit's bytes are what the kind
commits (:attr:`easlurm.stages.kind.StageKind.commits`) at the sizes of the configured networks
(:func:`easlurm.footprint.checkpoint_sizes`), written at a conservative 100 MB/s and hashed at 500 MB/s. A kind that
does not checkpoint when warned gets 60 s.

The launcher computes the leads once (:func:`signal_leads`) and hands them to the Slurm executor and the script
renderer, which compute nothing. On a host without torch the networks cannot be sized: each file a commit writes is
then assumed to be :data:`UNSIZED_FILE_BYTES`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from . import stages as registry

if TYPE_CHECKING:
    from .config import Config
    from .stages.kind import StageKind
    from .store import RunDir

_WRITE_BPS = 100e6
_HASH_BPS = 500e6
#: Bytes assumed for one checkpoint file when the networks cannot be built here (a GiB: more than RRDB's optimizer
#: state).
UNSIZED_FILE_BYTES = 1 << 30


def commit_bytes(cfg: Config, kind: StageKind, sizes: dict[str, int] | None) -> int:
    """Bytes of one checkpoint commit of ``kind`` (``sizes``: :func:`easlurm.footprint.checkpoint_sizes`, or None
    when unknown)."""
    return sum(count * (sizes[name] if sizes is not None else UNSIZED_FILE_BYTES)
               for name, count in kind.commits(cfg).items())


def signal_lead(cfg: Config, kind: StageKind, sizes: dict[str, int] | None, unit_s: float | None = None) -> int:
    """Seconds of warning for stage ``kind`` (see the module docstring); ``unit_s``: its measured seconds per unit."""
    res = cfg.executor.slurm.resources(kind.name)
    if res.signal_lead_s is not None:
        return res.signal_lead_s
    if kind.unit_s_default is None:
        return 60
    commit = commit_bytes(cfg, kind, sizes)
    unit = unit_s if unit_s is not None and unit_s > 0 else kind.unit_s_default
    lead = 45 + 2 * (unit + commit / _WRITE_BPS + commit / _HASH_BPS)
    lead = max(60, int(math.ceil(lead / 10) * 10))
    return min(lead, max(60, res.time_min * 60 // 3))


def signal_leads(cfg: Config, run: RunDir | None = None) -> dict[str, int]:
    """The lead of every registered stage kind, with ``run``'s own step times where it measured them."""
    from .footprint import checkpoint_sizes

    try:
        sizes: dict[str, int] | None = checkpoint_sizes(cfg)
    except ImportError:  # no torch on this host (a login node): assume large files
        sizes = None
    measured: dict[str, float] = {}
    if run is not None and run.config.is_file():
        try:
            from .orchestrate.plan import build_plan
            from .timings import measured_rates

            rates = measured_rates(cfg, run, build_plan(cfg, run))
            measured = {k: r.seconds_per_unit for k, r in rates.stages.items()}
        except Exception:  # noqa: BLE001 - unreadable records: the defaults stand, a lead must never stop a launch
            measured = {}
    return {k.name: signal_lead(cfg, k, sizes, measured.get(k.name)) for k in registry.KINDS}


__all__ = ["UNSIZED_FILE_BYTES", "commit_bytes", "signal_lead", "signal_leads"]
