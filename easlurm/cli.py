"""``easlurm COMMAND …``: one command line for everything (``python -m easlurm …`` alike).

Each command is the module it names, so ``python -m easlurm.status RUN`` keeps working; a run directory is the
first positional argument everywhere (``--run RUN`` is still accepted where it used to be the spelling).
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

#: command → (module with a ``main(argv) -> int``, one line of help). Login node: all but evaluate, upscale and
#: run-task import no torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "launch": ("easlurm.launch", "create, resume, dry-run or preflight a run and follow it"),
    "status": ("easlurm.status", "where a run stands and what it cost"),
    "bill": ("easlurm.bill", "GPU-hours, expected time and disk of a config or run, before it runs"),
    "lineage": ("easlurm.lineage", "the final population's family tree"),
    "prune": ("easlurm.prune", "free the discriminator and optimizer state of old cycles"),
    "evaluate": ("easlurm.evaluate", "score a run's final members and fused model on more test sets"),
    "export": ("easlurm.export", "write a run's generators as BasicSR .pth / .safetensors"),
    "upscale": ("easlurm.upscale", "super-resolve a folder of images with one generator"),
    "data": ("easlurm.data.__main__", "build HDF5 training shards (or the demo shards)"),
    "assets": ("easlurm.assets", "check or stage the offline network weights"),
    "run-task": ("easlurm.orchestrate.runner", "run one task of a run's plan here (what every job runs)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: easlurm COMMAND [ARGS ...]   (easlurm COMMAND --help for its arguments)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name in ("-V", "--version"):
        from . import __version__

        print(f"easlurm {__version__}")
        return 0
    if name not in COMMANDS:
        print(f"easlurm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"easlurm {name}", *rest]  # what argparse shows as the program
    rc: int = module.main(rest)
    return rc


if __name__ == "__main__":
    sys.exit(main())
