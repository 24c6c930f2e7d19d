"""``python -m easlurm.evo --run RUN --cycle C [--device DEV]``: the EA phase of cycle C (see easlurm.evo.job).

Prints one JSON line (cycle, hypervolume before/after, distinct genomes) on success. Progress goes to stdout through
``logging``; a bad input (missing or unfinished member, bad config) prints one ``easlurm.evo: error: …`` line on
stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ..errors import EaslurmError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easlurm.evo", description="Run the EA phase of one cycle.")
    ap.add_argument("--run", required=True, help="run directory (holds config.yaml)")
    ap.add_argument("--cycle", required=True, type=int, help="cycle index (0-based) whose members are evolved")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    try:
        from .job import run_ea

        result = run_ea(args.run, args.cycle, device=args.device)
    except EaslurmError as exc:
        print("easlurm.evo: error: " + str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    print(json.dumps({"cycle": result.cycle, "hypervolume_initial": result.hypervolume_initial,
                      "hypervolume_final": result.hypervolume_final, "distinct_final": result.distinct_final}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
