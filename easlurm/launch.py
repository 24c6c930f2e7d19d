"""``python -m easlurm.launch``: create (or resume) a run directory and run its plan.

    python -m easlurm.launch --config configs/rrdb.yaml [--run-dir D] [--executor slurm|local|debug]
                             [--set key=value ...] [--dry-run] [--detach]
    python -m easlurm.launch --resume D [--executor ...] [--set executor.key=value ...] [--detach]
                             [--accept-config-change]

A run directory holds the resolved config and ``run.json`` (how it was launched, the executor included, the
config's sha256 and owner, the shard manifests' sha256); relaunching it with ``--resume D`` runs only the stages
whose outputs are missing or fail verification, with the executor the run was launched with unless ``--executor``
says otherwise. Every input is checked before anything is submitted. One launcher at a time follows a run: a
second one refuses and names the first's host and pid; a dead launcher's lock is taken over.
"""
from __future__ import annotations

import argparse
import sys
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from .config import Config, load_config, load_run_config, to_dict, write_config
from .errors import ConfigError, EaslurmError
from .inputs import check_inputs, missing_inputs, shard_digests
from .run_record import (
    EXECUTORS, check_config, record_config, record_inputs, record_launch, recorded_executor, recorded_inputs,
    verify_inputs,
)
from .site import SITE_ENV, Site, read_site, site_path
from .store import RunDir, apply_group_umask

if TYPE_CHECKING:
    from .orchestrate.base import Executor

Echo = Callable[[str], None]


def _check_path(text: str, what: str) -> None:
    bad = [c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    if bad:
        raise ConfigError(f"{what}: {text!r} contains control characters; they would break the job scripts")


def prepare_run(config: str | None, run_dir: str | None, resume: str | None, overrides: Sequence[str],
                executor: str | None, argv: Sequence[str], echo: Echo = print, write: bool = True,
                site: Site | None = None, accept_config_change: bool = False) -> tuple[Config, RunDir]:
    """Create or reopen the run directory; return its config (with the executor the run uses and ``site``'s
    settings on top) and layout.

    Before anything is written or submitted: every input the plan reads is checked (one error lists all that are
    missing, :func:`easlurm.inputs.check_inputs`); on ``--resume`` the run's ``config.yaml`` must be the recorded
    one and yours (:func:`easlurm.run_record.check_config`, unless ``accept_config_change``) and its shard folders
    the ones it was launched on. ``write=False`` (the dry run) creates nothing.
    """
    if resume:
        _check_path(resume, "--resume")
        run = RunDir(resume)
        _check_path(str(run.root), "--resume (with links resolved)")
        if not run.config.is_file():
            raise ConfigError(f"--resume {run.root}: no config.yaml there (not a run directory)")
        note = check_config(run, accept_config_change, write=write)
        if note:
            echo(note)
        kept = [o for o in overrides if o.startswith("executor.")]
        if config or len(kept) != len(overrides):
            echo("note: --resume uses the run's own config.yaml; --config/--set are ignored except "
                 "executor.* overrides")
        cfg = load_config(run.config, kept, site=site)
        if site is not None and cfg.container.image and "://" not in cfg.container.image:
            cfg.container.image = str(Path(cfg.container.image).resolve())
        kind = executor or recorded_executor(run) or cfg.executor.kind
        if executor is None and recorded_executor(run) and recorded_executor(run) != cfg.executor.kind:
            echo(f"note: resuming with the executor the run was launched with ({kind}); pass --executor to change")
        if write:
            check_inputs(cfg)
            verify_inputs(run)
            if not recorded_inputs(run):  # a run launched before inputs were recorded
                record_inputs(run, shard_digests(cfg))
    else:
        if not config:
            raise ConfigError("--config is required (or --resume RUN_DIR)")
        cfg = load_config(config, overrides, site=site)
        name = f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}" if write else f"{cfg.run.name}-DRYRUN"
        root = Path(run_dir) if run_dir else Path(cfg.run.root) / name
        _check_path(str(root.absolute()), "--run-dir")
        run = RunDir(root)
        _check_path(str(run.root), "--run-dir (with links resolved)")
        if write:
            from .data.resolve import resolve_data

            cfg = resolve_data(cfg, echo)
            if run.config.is_file():
                existing = load_run_config(run.root)
                if to_dict(existing) != to_dict(cfg):
                    raise ConfigError(f"--run-dir {run.root}: holds a run with a different config; resume it with "
                                      f"--resume {run.root} or choose another directory")
                note = check_config(run, accept_config_change)
                if note:
                    echo(note)
                echo(f"{run.root} exists with the same config: resuming")
            else:
                from .store import make_run_dir

                apply_group_umask(cfg.run.group_shared)
                make_run_dir(run.root, cfg.run.group_shared)
                write_config(cfg, run.root, argv=argv)
                record_config(run)
                record_inputs(run, shard_digests(cfg))
        kind = executor or recorded_executor(run) or cfg.executor.kind
    if write:
        apply_group_umask(cfg.run.group_shared)
    cfg.executor.kind = kind  # type: ignore[assignment]  # validated: one of EXECUTORS
    return cfg, run


def make_executor(cfg: Config, run: RunDir, echo: Echo, resuming: bool = False,
                  leads: Mapping[str, int] | None = None) -> Executor:
    """The executor for ``cfg.executor.kind`` (``leads``: the Slurm warning leads,
    :func:`easlurm.leads.signal_leads`)."""
    from .orchestrate.local import DebugExecutor, LocalExecutor
    from .orchestrate.slurm import SlurmExecutor

    kind = cfg.executor.kind
    if kind == "local":
        return LocalExecutor(cfg, run, echo)
    if kind == "debug":
        return DebugExecutor(cfg, run, echo)
    return SlurmExecutor(cfg, run, echo, resuming=resuming, leads=leads)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m easlurm.launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (configs/rrdb.yaml, configs/srresnet.yaml, configs/tiny.yaml)")
    ap.add_argument("--run-dir", help="run directory (default: run.root/<run.name>-<timestamp>)")
    ap.add_argument("--resume", metavar="RUN_DIR", help="continue an existing run directory")
    ap.add_argument("--executor", choices=EXECUTORS, help="override the executor (default: the run's own)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set adam.lr=2e-4 (repeatable)")
    ap.add_argument("--site", metavar="FILE", help=f"site profile: executor and container settings of the cluster "
                                                   f"(default: ${SITE_ENV}; see configs/sites/example.yaml)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the job scripts; submit nothing")
    ap.add_argument("--detach", action="store_true", help="slurm: exit after submitting the whole chain")
    ap.add_argument("--accept-config-change", action="store_true",
                    help="--resume a run whose config.yaml changed since launch or is not yours (after checking it: "
                         "a config names the programs its jobs run); recorded in run.json with who and when")
    ap.add_argument("--preflight", action="store_true",
                    help="run the config's whole plan here in minutes on the demo photos, structure kept and sizes "
                         "shrunk (a run dir given with --run-dir holds it; default: a temporary folder)")
    args = ap.parse_args(argv)
    echo = print
    try:
        if args.preflight:
            if not args.config or args.resume:
                raise ConfigError("--preflight needs --config (it proves a config, not a run)")
            from .preflight import run_preflight

            run_preflight(load_config(args.config, args.overrides), args.run_dir, echo)
            return 0
        from .bill import render as render_bill
        from .leads import signal_leads
        from .orchestrate.plan import build_plan, pending_stages

        where = site_path(args.site)
        site = read_site(where) if where is not None else None
        cfg, run = prepare_run(args.config, args.run_dir, args.resume, args.overrides, args.executor,
                               ["python", "-m", "easlurm.launch", *argv], echo, write=not args.dry_run, site=site,
                               accept_config_change=args.accept_config_change)
        plan = build_plan(cfg, run)
        leads = signal_leads(cfg, run) if cfg.executor.kind == "slurm" else None
        executor = make_executor(cfg, run, echo, resuming=bool(args.resume), leads=leads)
        if args.dry_run:
            todo = pending_stages(plan) if run.config.is_file() else plan  # a new run: everything
            if site is not None:
                echo(_site_lines(site))
            echo(executor.describe(todo).rstrip())
            echo(render_bill(cfg, run, leads=leads))
            missing = missing_inputs(cfg, jobs_see_host=cfg.container.image is None)
            if missing:
                echo("# missing inputs (a launch refuses until they exist):\n" + "\n".join(f"#   {m}" for m in missing))
            echo(f"# dry run: nothing was submitted or written (executor {cfg.executor.kind})")
            return 0
        from .leases import held

        with held(run.root / ".launcher", "launcher", cfg.executor.lease_s):
            record_launch(run, cfg.executor.kind, ["python", "-m", "easlurm.launch", *argv],
                          site=site.describe() if site is not None else None)
            if site is not None:
                echo(_site_lines(site))
            echo(f"run directory: {run.root}  (executor: {cfg.executor.kind})")
            echo(render_bill(cfg, run, short=True, leads=leads))
            t0 = time.monotonic()
            executor.run(plan, detach=args.detach)
        if args.detach:
            return 0
        echo(f"finished in {time.monotonic() - t0:.0f} s")
        _print_results(run, echo)
    except EaslurmError as exc:
        print(f"easlurm.launch: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _site_lines(site: Site) -> str:
    """``# site: FILE (sha256 …) sets`` and one ``#   key = value`` line per value it sets."""
    return "\n".join([f"# site: {site.path} (sha256 {site.sha256[:12]}) sets"]
                     + [f"#   {k} = {v}" for k, v in site.values().items()])


def _print_results(run: RunDir, echo: Echo) -> None:
    md = run.eval / "results.md"
    if md.is_file():
        echo("")
        echo(md.read_text(encoding="utf-8").rstrip())
        echo("")
        echo(f"Pareto plot: {run.eval / 'pareto.png'}")
    echo(f"TensorBoard: tensorboard --logdir {run.tb}")


if __name__ == "__main__":
    sys.exit(main())
