"""The population-batched step vs k single member steps (issue 17, C2): aten operators and CPU time per member.

For the paper configs' networks (RRDBNet 64×23 and MSRResNet 64×16, each with its VGG-style D, VGG16 perceptual
layers of the config), k members' iteration is run two ways from identical states: k
``easlurm.train.member.MemberStep`` calls one after another, and one ``easlurm.train.population_step.
PopulationStep`` call (weights stacked, ``torch.func.vmap``: grouped convolutions, one perceptual pass, one fused
Adam). Counted: aten operators per member iteration, all and those that compute (on a GPU each of those is a kernel
launch and ~20 µs of host time, the member step's bottleneck; views are metadata). Timed: CPU seconds per member
iteration, interleaved (ratio in the same run). The operator count does not depend on batch or patch size, so they
are small; the CPU time says nothing about a GPU, where grouped convolutions have kernels of their own (the gate in
BENCHMARKS.md "GPU", still to be measured).

    python bench/population_step.py            # k = 4, both configs, 3 interleaved repetitions
    python bench/population_step.py --quick    # srresnet only
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from torch.utils._python_dispatch import TorchDispatchMode

from _common import RESULTS_DIR, ROOT, command_line, machine, publish, report_head

from easlurm import factory
from easlurm.config import load_config
from easlurm.population import preferences
from easlurm.runtime import adam
from easlurm.train.member import MemberStep
from easlurm.train.population_step import PopulationStep

RESULTS = RESULTS_DIR / "population_step.md"
SMALL = ("data.train=x", "model.pretrained=null", "loss.perceptual.net=vgg16", "data.patch_size=32",
         "adam.batch_size=2", "adam.bf16=false")


class _Ops(TorchDispatchMode):
    """aten operators dispatched: all, and those that compute (not views or metadata: no kernel on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.all = self.computing = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.all += 1
        self.computing += not func.is_view
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    counter = _Ops()
    with counter:
        fn()
    return counter.all, counter.computing


def _sides(config: str, k: int) -> tuple[list[MemberStep], PopulationStep]:
    cfg = load_config(ROOT / "configs" / f"{config}.yaml", list(SMALL))
    cpu = torch.device("cpu")
    perceptual = factory.build_perceptual(cfg)
    prefs = preferences(max(k, 2))[:k]
    singles, members = [], []
    for i in range(k):
        torch.manual_seed(i)
        g, d = factory.build_generator(cfg).train(), factory.build_discriminator(cfg).train()
        opt_g, opt_d = adam(g.parameters(), cfg.adam.lr, cfg.adam.betas), adam(d.parameters(), cfg.discriminator.lr,
                                                                               cfg.discriminator.betas)
        singles.append(MemberStep(cfg, g, d, perceptual, prefs[i], opt_g, opt_d, cpu))
        members.append((g, d, opt_g, opt_d, prefs[i]))
    return singles, PopulationStep.from_members(cfg, members, perceptual, cpu)


def measure(config: str, k: int, reps: int) -> dict[str, float]:
    singles, batched = _sides(config, k)
    gen = torch.Generator().manual_seed(1)
    hr = torch.rand(k, 2, 3, 32, 32, generator=gen)
    lr = hr[:, :, :, ::4, ::4].contiguous()

    def one_by_one() -> None:
        for i, s in enumerate(singles):
            s(lr[i], hr[i])

    one_by_one()  # the first steps create the optimizer states
    batched(lr, hr)
    (a1, c1), (a2, c2) = count_ops(one_by_one), count_ops(partial(batched, lr, hr))
    out = {"ops single": a1 / k, "ops batched": a2 / k, "computing single": c1 / k, "computing batched": c2 / k}
    out.update(cpu_s_interleaved({"single": one_by_one, "batched": partial(batched, lr, hr)}, reps, k))
    return out


def cpu_s_interleaved(sides: dict[str, Callable[[], Any]], reps: int, per: int) -> dict[str, float]:
    """``cpu s NAME``: median CPU seconds of one call of each side divided by ``per``, the sides interleaved and
    their order rotated every repetition."""
    times: dict[str, list[float]] = {n: [] for n in sides}
    names = list(sides)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.process_time()
            sides[name]()
            times[name].append((time.process_time() - t0) / per)
    return {f"cpu s {n}": statistics.median(v) for n, v in times.items()}


def ops_and_cpu_cells(m: dict[str, float], base: str, other: str) -> str:
    """Table cells: ops of ``base`` and ``other`` (computing in brackets), the computing ops ratio, the CPU seconds of
    both and their ratio (base / other), from :func:`measure`-style keys."""
    return (f"{m[f'ops {base}']:,.0f} ({m[f'computing {base}']:,.0f}) | {m[f'ops {other}']:,.0f} "
            f"({m[f'computing {other}']:,.0f}) | {m[f'computing {other}'] / m[f'computing {base}']:.3f} | "
            f"{m[f'cpu s {base}']:.3f} | {m[f'cpu s {other}']:.3f} | {m[f'cpu s {base}'] / m[f'cpu s {other}']:.2f}×")


def k_bench_args(doc: str, argv: list[str] | None, k: int, what: str, results: Path) -> argparse.Namespace:
    """The options of a k-genomes CPU benchmark (--quick: srresnet only, -k, --reps, --threads, --out); sets the
    thread count and adds ``configs``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-k", type=int, default=k, help=f"{what} (default %(default)s)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(results))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.configs = ["srresnet"] if args.quick else ["srresnet", "rrdb"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = k_bench_args(__doc__, argv, 4, "members", RESULTS)
    configs = args.configs
    lines = report_head("Population-batched step vs k single steps", command_line("population_step.py", argv),
                        machine())
    lines += ["", f"k = {args.k} members, batch 2 × 32 px HR each, {args.threads} thread(s), CPU; per member "
              "iteration:", "",
              "| config | aten ops, k single steps (computing) | aten ops, batched (computing) | computing ops ratio "
              "| CPU s, single | CPU s, batched | CPU ratio (single / batched) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for config in configs:
        m = measure(config, args.k, args.reps)
        lines.append(f"| {config} | {ops_and_cpu_cells(m, 'single', 'batched')} |")
        print(lines[-1], flush=True)
    publish("\n".join(lines) + "\n", None if args.out == "-" else Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
