"""``python -m easlurm.train --run RUN (--pretrain | --init | --cycle C --member I) [--device DEV]``.

A thin CLI over the stage functions (:func:`easlurm.train.pretrain.pretrain`,
:func:`easlurm.train.init.init_population`, :func:`easlurm.train.member.train_member`): prints one JSON line on
success; a bad input prints one ``easlurm.train: error: …`` line on stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import EaslurmError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easlurm.train", description=__doc__)
    ap.add_argument("--run", required=True, help="run directory (holds config.yaml)")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--pretrain", action="store_true", help="run the L1 pretraining stage")
    what.add_argument("--init", action="store_true", help="write cycle 0's start population")
    what.add_argument("--cycle", type=int, help="cycle index (0-based) of the Adam phase")
    ap.add_argument("--member", type=int, help="population slot (0-based), with --cycle")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    args = ap.parse_args(argv)
    try:
        if args.pretrain:
            from .pretrain import pretrain

            meta = pretrain(args.run, device=args.device)
            out = {k: meta[k] for k in ("kind", "iteration", "done")}
        elif args.init:
            from .init import init_population

            out = {"kind": "start", "slots": len(init_population(args.run))}
        else:
            if args.member is None:
                ap.error("--member is required with --cycle")
            from .member import train_member

            m = train_member(args.run, args.cycle, args.member, device=args.device)
            out = {"kind": m.kind, "cycle": m.cycle, "slot": m.slot, "iteration": m.iteration, "done": m.done}
    except EaslurmError as exc:
        print(f"easlurm.train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
