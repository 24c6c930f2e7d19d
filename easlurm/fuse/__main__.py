"""``python -m easlurm.fuse --run RUN [--device DEV]``: fuse the final population into one backbone.

See :mod:`easlurm.fuse.job`. Prints one JSON line (iteration, done, path of fused.pt) on success; a bad input
(missing member, bad config, corrupt checkpoint) prints one ``easlurm.fuse: error: …`` line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ..errors import EaslurmError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easlurm.fuse",
                                 description="Fuse the final population of a run into one plain backbone.")
    ap.add_argument("--run", required=True, help="run directory (holds config.yaml)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    try:
        from ..store import RunDir
        from .job import run_fusion

        meta = run_fusion(args.run, device=args.device)
    except EaslurmError as exc:
        print("easlurm.fuse: error: " + str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    print(json.dumps({"iteration": meta.iteration, "done": meta.done,
                      "fused": str(RunDir(args.run).fusion / "fused.pt")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
