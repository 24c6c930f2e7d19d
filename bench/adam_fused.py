"""Fused vs default Adam (issue 17, step A): aten operators per member iteration and seconds per optimizer step.

For the paper configs' networks (configs/rrdb.yaml: RRDBNet 64×23 + VGG-style D; configs/srresnet.yaml: MSRResNet
+ D), a whole member step (easlurm.train.member.MemberStep: G forward, two gradients, the normalised mix, D step) is
counted in aten operators — on a GPU each one that computes is a kernel launch and ~20 µs of host time — once with
torch's default Adam and once with the fused one (easlurm.runtime.adam). The counts do not depend on batch or patch
size, so a small batch is used. Then the two optimizer steps alone (G and D, gradients in place) are timed on this
machine, interleaved, and reported as a ratio. CPU only here; the GPU check (bench/gpu_check.py) times the whole
step on a card.

    python bench/adam_fused.py                 # both configs, 20 interleaved optimizer steps each
    python bench/adam_fused.py --quick         # srresnet only, 5 steps
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial

import torch

from _common import RESULTS_DIR, ROOT, command_line, machine, publish, report_head
from _gpu_syncs import count_ops

from easlurm.config import load_config
from easlurm.train.member import build_member

RESULTS = RESULTS_DIR / "adam_fused.md"
#: The member step at the smallest sizes the configs allow: operator counts do not depend on them.
SMALL = ("data.train=x", "model.pretrained=null", "loss.perceptual.net=vgg16", "data.patch_size=32",
         "adam.batch_size=2", "adam.bf16=false")


def _member(config: str, fused: bool) -> object:
    cfg = load_config(ROOT / "configs" / f"{config}.yaml", list(SMALL))
    torch.manual_seed(0)
    trainee = build_member(cfg, (0.5, 0.5), torch.device("cpu"))
    step = trainee.s
    if not fused:
        from easlurm.runtime import adam

        step.opt_g = adam(step.g.parameters(), cfg.adam.lr, cfg.adam.betas, fused=False)
        step.opt_d = adam(step.d.parameters(), cfg.discriminator.lr, cfg.discriminator.betas, fused=False)
    return step


def _batch(scale: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, 32, 32, generator=gen)
    return hr[:, :, ::scale, ::scale].contiguous(), hr


def _fake_grads(step: object) -> None:
    """Gradients in place for the optimizer steps timed alone (the member step leaves none behind)."""
    gen = torch.Generator().manual_seed(2)
    for net in (step.g, step.d):  # type: ignore[attr-defined]
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 1e-3


def measure(config: str, steps: int) -> dict[str, float]:
    sides = {"default": _member(config, fused=False), "fused": _member(config, fused=True)}
    lr, hr = _batch()
    out: dict[str, float] = {}
    for name, s in sides.items():
        s(lr, hr)  # the first step creates the optimizer state (its operators are not per-iteration)
        out[f"ops {name}"] = count_ops(partial(s, lr, hr))
        _fake_grads(s)
        out[f"opt ops {name}"] = count_ops(lambda s=s: (s.opt_g.step(), s.opt_d.step()))
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(steps):  # interleaved: both see the same machine load
        for name, s in sides.items():
            t0 = time.perf_counter()
            s.opt_g.step()
            s.opt_d.step()
            times[name].append(time.perf_counter() - t0)
    for name in sides:
        out[f"opt s {name}"] = statistics.median(times[name])
    out["params"] = float(sum(p.numel() for p in sides["fused"].g.parameters()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = ["srresnet"] if args.quick else ["srresnet", "rrdb"]
    steps = 5 if args.quick else 20
    lines = report_head("Fused vs default Adam", command_line("adam_fused.py", argv), machine())
    lines += ["", "| config | G parameters | aten ops / member iteration (default → fused) | of which optimizer "
              "(default → fused) | optimizer step G+D, s (default → fused) | ratio |",
              "|---|---:|---:|---:|---:|---:|"]
    for config in configs:
        m = measure(config, steps)
        lines.append(f"| {config} | {m['params']:,.0f} | {m['ops default']:,.0f} → {m['ops fused']:,.0f} | "
                     f"{m['opt ops default']:,.0f} → {m['opt ops fused']:,.0f} | {m['opt s default']:.4f} → "
                     f"{m['opt s fused']:.4f} | {m['opt s default'] / m['opt s fused']:.2f}× |")
        print(lines[-1], flush=True)
    publish("\n".join(lines) + "\n", None if args.out == "-" else __import__("pathlib").Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
