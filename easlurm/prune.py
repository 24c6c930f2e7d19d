"""``python -m easlurm.prune RUN [--keep K] [--dry-run]``: free the disk a long run no longer needs.

A cycle's trained members (``cycles/C/members/I/``) hold G, D, the Adam states of G and D and the RNG states; for
RRDB that is ~358 MiB per member, of which the generator is 64 MiB. Once the next cycle's Adam phase has finished,
only the generator is still read (by the lineage and by the next start population's references); D, the optimizer
states and the RNG states are needed again only to redo that cycle. So pruning deletes, in every cycle C older than
the last ``K`` Adam phases whose successor phase (cycle C+1) has finished, ``D.pt``, ``optim.pt`` and ``rng.pt`` of
each member folder — and nothing else: every ``G.pt`` (the lineage names them all), every record, the EA records,
the final population, fusion, evaluation and TensorBoard stay.

Each pruned folder gets a ``.pruned`` list of what was removed (name, sha256, size): the stages' done checks accept
those files as deliberately absent, and loading one says it was pruned, instead of "corrupt". A pruned cycle cannot
be redone; everything from the oldest kept cycle on can.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import load_run_config
from .errors import EaslurmError
from .population import adam_cycles, is_adam_trained, member_complete, read_member
from .checkpoints import PRUNED
from .store import RunDir, atomic_write_json

#: Files of a trained member folder that pruning may delete.
PRUNABLE = ("D.pt", "optim.pt", "rng.pt")


@dataclass(frozen=True)
class PruneItem:
    folder: Path
    name: str
    sha256: str
    size: int


def plan_prune(run_dir: str | Path, keep: int) -> list[PruneItem]:
    """What :func:`prune` would delete (see the module docstring); ``keep`` >= 1."""
    if keep < 1:
        raise EaslurmError(f"--keep {keep}: keep at least the last cycle (fusion warm-starts from its D)")
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    cycles = adam_cycles(cfg)
    n = cfg.population.size

    trained = [i for i in range(n) if is_adam_trained(cfg, i)]  # only they have member folders of their own

    def finished(c: int) -> bool:
        return all(member_complete(run.member(c, i), "member") for i in trained)

    done = [c for c in cycles if finished(c)]
    if not done:
        return []
    newest = max(done)
    items: list[PruneItem] = []
    for c in cycles:
        # Never the last K finished phases, and only when the phase after it (which reads D and optimizer
        # through its start entries) has finished too.
        if c > newest - keep or c + 1 not in done:
            continue
        for i in trained:
            folder = run.member(c, i)
            meta = read_member(folder)
            if meta is None:
                continue
            own = set(meta.files.get("sha256", {})) - set(meta.files.get("refs", {}))
            for name in PRUNABLE:
                if name in own and (folder / name).is_file():
                    items.append(PruneItem(folder, name, meta.files["sha256"][name],
                                           int(meta.files.get("size", {}).get(name, (folder / name).stat().st_size))))
    return items


def prune(run_dir: str | Path, keep: int = 2, dry_run: bool = False) -> list[PruneItem]:
    """Delete what :func:`plan_prune` lists (unless ``dry_run``); return it. The ``.pruned`` list of a folder is
    written before its files are deleted, so an interrupted prune never leaves a file missing unaccounted for."""
    items = plan_prune(run_dir, keep)
    if dry_run:
        return items
    by_folder: dict[Path, list[PruneItem]] = {}
    for it in items:
        by_folder.setdefault(it.folder, []).append(it)
    for folder, its in sorted(by_folder.items()):
        listed = folder / PRUNED
        previous = json.loads(listed.read_text(encoding="utf-8")) if listed.is_file() else {}
        atomic_write_json(listed, {**previous, **{it.name: {"sha256": it.sha256, "size": it.size} for it in its}})
        for it in its:
            (folder / it.name).unlink(missing_ok=True)
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easlurm.prune", description=__doc__.split("\n")[0])
    ap.add_argument("run", help="run directory")
    ap.add_argument("--keep", type=int, default=2, help="Adam phases whose full state is kept (default 2)")
    ap.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    args = ap.parse_args(argv)
    try:
        items = prune(args.run, args.keep, args.dry_run)
    except EaslurmError as exc:
        print(f"easlurm.prune: error: {exc}", file=sys.stderr)
        return 2
    total = sum(it.size for it in items)
    folders = len({it.folder for it in items})
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(items)} file(s) in {folders} member folder(s): {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
