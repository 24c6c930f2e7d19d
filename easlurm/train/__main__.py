"""``python -m easlurm.train --run RUN (--pretrain | --cycle C --member I) [--device DEV]``."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import EaslurmError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easlurm.train", description=__doc__)
    ap.add_argument("--run", required=True, help="run directory (holds config.yaml)")
    ap.add_argument("--pretrain", action="store_true", help="run the L1 pretraining stage")
    ap.add_argument("--cycle", type=int, help="cycle index (0-based)")
    ap.add_argument("--member", type=int, help="population slot (0-based)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    args = ap.parse_args(argv)
    try:
        if args.pretrain:
            from .pretrain import pretrain

            meta = pretrain(args.run, device=args.device)
        else:
            if args.cycle is None or args.member is None:
                ap.error("--cycle and --member are required (or --pretrain)")
            from .member import train_member

            meta = train_member(args.run, args.cycle, args.member, device=args.device)
    except EaslurmError as exc:
        print(f"easlurm.train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: meta[k] for k in ("kind", "iteration", "done") if k in meta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
