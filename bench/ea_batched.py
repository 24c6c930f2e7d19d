"""A generation's children as one batch vs one by one (issue 17 item 4, ``ea.batch_children``): aten operators and
CPU time per child evaluation.

For the paper configs' generators (RRDBNet 64×23, MSRResNet 64×16; VGG16 perceptual layers of the config), k
genomes are evaluated on one fitness set two ways: k ``easlurm.evo.objectives.Objectives`` calls, and one
``Objectives.many`` call (weights stacked, the generator vmapped — grouped convolutions — and one perceptual pass over
all k·b SR tiles). Counted: aten operators per child, all and computing (a computing operator is a kernel launch on a
GPU, where the evaluation is host-bound); timed: CPU seconds per child, interleaved. The fitness set is small (2
images × 4 tiles of 64 px HR, batch = one image's tiles): the operator count does not depend on it, and the CPU time
says nothing about a GPU (section 3 of bench/gpu_check.sh measures that).

    python bench/ea_batched.py            # k = 5, both configs
    python bench/ea_batched.py --quick    # srresnet only
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from _common import RESULTS_DIR, command_line, machine, publish, report_head
from population_step import count_ops, cpu_s_interleaved, k_bench_args, ops_and_cpu_cells

from easlurm import factory
from easlurm.config import load_config
from easlurm.evo.objectives import FitnessSet, Objectives

RESULTS = RESULTS_DIR / "ea_batched.md"
ROOT = Path(__file__).resolve().parents[1]
SMALL = ("data.train=x", "model.pretrained=null", "loss.perceptual.net=vgg16")


def _objective(config: str, k: int) -> tuple[Objectives, list[dict[str, torch.Tensor]]]:
    cfg = load_config(ROOT / "configs" / f"{config}.yaml", list(SMALL))
    torch.manual_seed(0)
    model = factory.build_generator(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    hr = torch.rand(8, 3, 64, 64, generator=gen)
    fitness = FitnessSet(torch.nn.functional.avg_pool2d(hr, cfg.data.scale), hr, [0] * 4 + [1] * 4, [], {})
    objective = Objectives(model, factory.build_perceptual(cfg), fitness, batch=4)
    genomes = [{n: p.detach() + 0.01 * torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
               for _ in range(k)]
    return objective, genomes


def measure(config: str, k: int, reps: int) -> dict[str, float]:
    objective, genomes = _objective(config, k)
    sides = {"one by one": lambda: [objective(g) for g in genomes], "batched": lambda: objective.many(genomes)}
    for fn in sides.values():
        fn()  # warm-up, and the HR feature cache
    out: dict[str, float] = {}
    for name, fn in sides.items():
        everything, computing = count_ops(fn)
        out[f"ops {name}"], out[f"computing {name}"] = everything / k, computing / k
    out.update(cpu_s_interleaved(sides, reps, k))
    one = torch.tensor([objective(g) for g in genomes], dtype=torch.float64)
    many = torch.tensor(objective.many(genomes), dtype=torch.float64)
    out["max rel diff"] = float(((many - one).abs() / one.abs()).max())
    return out


def main(argv: list[str] | None = None) -> int:
    args = k_bench_args(__doc__, argv, 5, "children", RESULTS)
    configs = args.configs
    lines = report_head("A generation's children as one batch vs one by one", command_line("ea_batched.py", argv),
                        machine())
    lines += ["", f"k = {args.k} children, fitness 2 images × 4 tiles of 64 px HR (batch 4 = one image), "
              f"{args.threads} thread(s), CPU; per child evaluation:", "",
              "| config | aten ops, one by one (computing) | aten ops, batched (computing) | computing ops ratio | "
              "CPU s, one by one | CPU s, batched | CPU ratio (one by one / batched) | objectives, max rel. diff |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for config in configs:
        m = measure(config, args.k, args.reps)
        lines.append(f"| {config} | {ops_and_cpu_cells(m, 'one by one', 'batched')} | {m['max rel diff']:.1e} |")
        print(lines[-1], flush=True)
    publish("\n".join(lines) + "\n", None if args.out == "-" else Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
