"""``python -m easlurm.launch``: create (or resume) a run directory and run its plan.

    python -m easlurm.launch --config configs/rrdb.yaml [--run-dir D] [--executor slurm|local|debug]
                             [--set key=value ...] [--dry-run] [--detach]
    python -m easlurm.launch --resume D [--executor ...] [--detach]

A run directory holds the resolved config; relaunching the same directory (or ``--resume D``) runs only the stages
whose outputs are missing or fail verification, so nothing finished runs again.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .config import Config, load_config, load_run_config, to_dict, write_config
from .errors import ConfigError, EaslurmError
from .store import RunDir


def _resolve_data(cfg: Config, echo: Callable[[str], None]) -> Config:
    """Absolute data paths (jobs run elsewhere); with ``data.demo``, build the demo shards first if needed."""
    d = cfg.data
    if d.demo and d.train is None:
        from .data.samples import build_samples

        root = Path(d.demo_dir).resolve()
        if not (root / "train" / "manifest.json").is_file() or not (root / "val" / "manifest.json").is_file():
            echo(f"building the demo shards in {root} …")
        build_samples(root, scale=d.scale)
        d.demo_dir = str(root)
        d.train, d.val = str(root / "train"), str(root / "val")
    for name in ("train", "val", "fitness"):
        value = getattr(d, name)
        if value:
            p = Path(value).resolve()
            if not (p / "manifest.json").is_file():
                raise ConfigError(f"data.{name}: {p} is not a shard folder (no manifest.json; build it with "
                                  f"`python -m easlurm.data build`)")
            setattr(d, name, str(p))
    if cfg.model.pretrained:
        p = Path(cfg.model.pretrained).resolve()
        if not p.is_file():
            raise ConfigError(f"model.pretrained: {p} not found")
        cfg.model.pretrained = str(p)
    if cfg.container.image and "://" not in cfg.container.image:
        cfg.container.image = str(Path(cfg.container.image).resolve())
    return cfg


def prepare_run(config: str | None, run_dir: str | None, resume: str | None, overrides: Sequence[str],
                executor: str | None, argv: Sequence[str], echo: Callable[[str], None] = print) -> tuple[Config, RunDir]:
    """Create or reopen the run directory; return its config (executor overridden when asked) and layout."""
    if resume:
        run = RunDir(resume)
        if not run.config.is_file():
            raise ConfigError(f"--resume {run.root}: no config.yaml there (not a run directory)")
        cfg = load_run_config(run.root)
        if config or overrides:
            echo("note: --resume uses the run's own config.yaml; --config/--set are ignored except "
                 "executor.* overrides")
            cfg = load_config(run.config, [o for o in overrides if o.startswith("executor.")])
    else:
        if not config:
            raise ConfigError("--config is required (or --resume RUN_DIR)")
        cfg = load_config(config, overrides)
        cfg = _resolve_data(cfg, echo)
        root = Path(run_dir) if run_dir else Path(cfg.run.root) / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = RunDir(root)
        if run.config.is_file():
            existing = load_run_config(run.root)
            if to_dict(existing) != to_dict(cfg):
                raise ConfigError(f"--run-dir {run.root}: holds a run with a different config; resume it with "
                                  f"--resume {run.root} or choose another directory")
            echo(f"{run.root} exists with the same config: resuming")
        else:
            write_config(cfg, run.root, argv=argv)
    if executor:
        cfg.executor.kind = executor  # type: ignore[assignment]
    return cfg, run


def make_executor(cfg: Config, run: RunDir, echo: Callable[[str], None]) -> object:
    from .orchestrate.local import DebugExecutor, LocalExecutor
    from .orchestrate.slurm import SlurmExecutor

    kind = cfg.executor.kind
    if kind == "local":
        return LocalExecutor(cfg, run, echo)
    if kind == "debug":
        return DebugExecutor(cfg, run, echo)
    return SlurmExecutor(cfg, run, echo)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m easlurm.launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (configs/rrdb.yaml, configs/srresnet.yaml, configs/tiny.yaml)")
    ap.add_argument("--run-dir", help="run directory (default: run.root/<run.name>-<timestamp>)")
    ap.add_argument("--resume", metavar="RUN_DIR", help="continue an existing run directory")
    ap.add_argument("--executor", choices=["slurm", "local", "debug"], help="override executor.kind")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set adam.lr=2e-4 (repeatable)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the sbatch scripts; submit nothing")
    ap.add_argument("--detach", action="store_true", help="slurm: exit after submitting the whole chain")
    args = ap.parse_args(argv)
    echo = print
    try:
        if args.dry_run:
            return _dry_run(args, echo)
        cfg, run = prepare_run(args.config, args.run_dir, args.resume, args.overrides, args.executor,
                               ["python", "-m", "easlurm.launch", *argv], echo)
        from .orchestrate.plan import build_plan

        plan = build_plan(cfg, run)
        echo(f"run directory: {run.root}  (executor: {cfg.executor.kind})")
        t0 = time.monotonic()
        executor = make_executor(cfg, run, echo)
        if cfg.executor.kind == "slurm":
            executor.run(plan, detach=args.detach)  # type: ignore[attr-defined]
            if args.detach:
                return 0
        else:
            executor.run(plan)  # type: ignore[attr-defined]
        echo(f"finished in {time.monotonic() - t0:.0f} s")
        _print_results(run, echo)
    except EaslurmError as exc:
        print(f"easlurm.launch: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _dry_run(args: argparse.Namespace, echo: Callable[[str], None]) -> int:
    from .orchestrate.plan import build_plan, pending_stages
    from .orchestrate.slurm import describe

    if args.resume:
        run = RunDir(args.resume)
        cfg = load_run_config(run.root)
    else:
        if not args.config:
            raise ConfigError("--config is required (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.overrides)
        run = RunDir(args.run_dir or Path(cfg.run.root) / f"{cfg.run.name}-DRYRUN")
    if args.executor:
        cfg.executor.kind = args.executor
    stages = pending_stages(build_plan(cfg, run), run)
    echo(describe(cfg, run, stages).rstrip())
    echo(f"# dry run: nothing was submitted or written (executor {cfg.executor.kind})")
    return 0


def _print_results(run: RunDir, echo: Callable[[str], None]) -> None:
    md = run.eval / "results.md"
    if md.is_file():
        echo("")
        echo(md.read_text(encoding="utf-8").rstrip())
        echo("")
        echo(f"Pareto plot: {run.eval / 'pareto.png'}")
    echo(f"TensorBoard: tensorboard --logdir {run.tb}")


if __name__ == "__main__":
    sys.exit(main())
