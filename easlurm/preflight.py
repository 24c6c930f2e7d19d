"""``python -m easlurm.launch --config X --preflight``: prove a config's whole plan in minutes before it spends
GPU-hours.

The preflight runs X's plan end to end on this machine, in this process (the debug executor: every stage function
with its real inputs and outputs, one after another), on the built-in demo photos, with X's **structure kept** —
architecture family, member-0 mode, selection, GAN type, gradient mix, first/final phase layout (3 cycles, the
final phase included), fitness tile rule and mean, evaluation metrics — and its **sizes shrunk**: population (at most
3), network widths and depths, iterations, generations, batches, patch and tile sizes, perceptual layers that fit
32-pixel patches, and evaluation on two small crops of the demo's validation photos. It prints what it kept,
what it shrank (``field: real → preflight``) and what the real run will need that the preflight cannot use here
(the pretrained checkpoint, data folders, VGG19 weights, the container image, benchmark sets), then the results
table. A failure is the same one-line error a real run would give, minutes instead of hours in.

The sizes are :func:`tiny_sizes`, the one definition of a tiny run: the backbone's and every stage kind's own tiny
settings (their registries say them), which the test suite builds its runs from too.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import stages as registry
from .config import Config, get_field, set_field, to_dict, validate
from .models.specs import generator_spec

#: Blocks of VGG whose feature maps are still larger than 2×2 on a 32-pixel patch.
_SMALL_PATCH_BLOCKS = ("conv1", "conv2", "conv3")
#: What the preflight keeps as the real run has it (and reports).
STRUCTURE = ("model.arch", "population.member0", "ea.selection", "loss.gan_type", "adam.mix", "adam.final_phase",
             "data.scale", "data.fitness_tile_choice", "data.fitness_mean", "ea.max_replacements", "ea.reset_adam",
             "eval.metrics")


@dataclass
class Shrunk:
    """The preflight config and what changed: ``kept`` (field: value), ``shrunk`` (field, real, preflight), and
    ``needs`` (what the real run needs that was not checked here)."""
    cfg: Config
    kept: list[tuple[str, Any]] = field(default_factory=list)
    shrunk: list[tuple[str, Any, Any]] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = ["preflight: structure kept"]
        lines += [f"  {k}: {v}" for k, v in self.kept]
        lines.append("preflight: sizes shrunk (real → preflight)")
        lines += [f"  {k}: {a!r} → {b!r}" for k, a, b in self.shrunk]
        if self.needs:
            lines.append("preflight: not checked here — the real run also needs")
            lines += [f"  - {n}" for n in self.needs]
        return "\n".join(lines)


def tiny_sizes(real: Config) -> dict[str, Any]:
    """The sizes of a tiny run with ``real``'s structure — the one tiny-run definition: the preflight runs it and
    the tests build their runs from it (``tests/conftest.py``). Dotted fields → values: at most 3 members, 32-pixel
    patches, the backbone's tiny options (:attr:`easlurm.models.specs.GeneratorSpec.tiny`), and every stage kind's
    tiny lengths (:attr:`easlurm.stages.kind.StageKind.tiny`)."""
    n = min(real.population.size, 3)
    out: dict[str, Any] = {"population.size": n, "ea.neighbourhood": min(real.ea.neighbourhood, n),
                           "data.patch_size": 32, "data.fitness_tile": 8 * real.data.scale, "data.num_workers": 0,
                           "discriminator.num_feat": 4}
    out.update({f"model.{k}": v for k, v in generator_spec(real.model.arch).tiny.items()})
    for kind in registry.KINDS:
        out.update(kind.tiny(real))
    return out


def tiny_overrides(real: Config) -> list[str]:
    """:func:`tiny_sizes` as ``--set KEY=VALUE`` strings (YAML flow values)."""
    import yaml

    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in tiny_sizes(real).items()]


def shrink(real: Config, demo_dir: str | Path) -> Shrunk:
    """The preflight version of ``real`` (see the module docstring); ``demo_dir`` holds the demo shards."""
    cfg = copy.deepcopy(real)
    out = Shrunk(cfg)
    out.kept += [(k, get_field(real, k)) for k in STRUCTURE]

    def change(dotted: str, value: Any) -> None:
        old = get_field(cfg, dotted)
        if old != value:
            out.shrunk.append((dotted, old, value))
            set_field(cfg, dotted, value)

    for dotted, value in tiny_sizes(real).items():
        change(dotted, value)
    if cfg.population.size == real.population.size:
        out.kept.append(("population.size", real.population.size))
    change("run.cycles", max(3, min(real.run.cycles, 3)))
    change("run.name", f"{real.run.name}-preflight")
    # Data: the demo photos (9 train, 3 val).
    change("data.demo", True)
    change("data.demo_dir", str(demo_dir))
    for name in ("train", "val", "fitness"):
        if getattr(real.data, name):
            out.needs.append(f"data.{name}: {getattr(real.data, name)} (a shard folder)")
        change(f"data.{name}", None)
    if real.model.pretrained:
        out.needs.append(f"model.pretrained: {real.model.pretrained} (its {real.model.pretrained_key!r} entry)")
    change("model.pretrained", None)
    layers = {k: v for k, v in real.loss.perceptual.layers.items() if k.startswith(_SMALL_PATCH_BLOCKS)}
    change("loss.perceptual.layers", layers or {"conv3_4": 1.0})
    if real.loss.perceptual.net == "vgg19":
        out.needs.append("VGG19 weights vgg19-dcbb9e9d.pth staged (python -m easlurm.assets check)")
    change("loss.perceptual.net", "auto")
    if real.fusion.average_set:
        out.needs.append(f"fusion.average_set: {real.fusion.average_set} (training images)")
    change("fusion.average_set", None)
    for name, path in sorted(real.eval.sets.items()):
        out.needs.append(f"eval.sets.{name}: {path}")
    change("eval.sets", {"preflight-crops": str(Path(demo_dir) / "crops")})
    change("eval.tile", None)
    # Where it runs: here, in this environment.
    if real.container.image:
        out.needs.append(f"container.image: {real.container.image}")
    change("container.image", None)
    change("executor.kind", "local")
    change("executor.local.max_parallel", 2)
    change("executor.max_retries", 0)
    validate(cfg)
    return out


def run_preflight(real: Config, run_dir: str | Path | None = None, echo: Any = print) -> Path:
    """Shrink ``real``, run its whole plan with the local executor in ``run_dir`` (a temporary folder when None),
    print the report and the results table; return the run directory. Raises what the run raises."""
    from .config import write_config
    from .data.samples import build_samples
    from .orchestrate.local import DebugExecutor
    from .orchestrate.plan import build_plan
    from .store import RunDir, make_run_dir

    root = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix=f"easlurm-preflight-{real.run.name}-"))
    demo = root / "demo"
    build_samples(demo, scale=real.data.scale)
    _write_crops(demo / "val", demo / "crops", 16 * real.data.scale)
    s = shrink(real, demo.resolve())
    s.cfg.data.train, s.cfg.data.val = str((demo / "train").resolve()), str((demo / "val").resolve())
    echo(s.report())
    run = RunDir(root / "run")
    make_run_dir(run.root)
    write_config(s.cfg, run.root, argv=["preflight", real.run.name])
    DebugExecutor(s.cfg, run, echo).run(build_plan(s.cfg, run))
    md = run.eval / "results.md"
    if md.is_file():
        echo(md.read_text(encoding="utf-8").rstrip())
    echo(f"preflight passed: {run.root}")
    return run.root


def _write_crops(val_shards: Path, out: Path, size: int, count: int = 2) -> None:
    """``count`` centre crops of ``size`` HR pixels of the first validation photos as PNGs (a fast test set)."""
    from PIL import Image

    from .data.dataset import ShardReader

    out.mkdir(parents=True, exist_ok=True)
    reader = ShardReader(val_shards)
    try:
        for eid in list(reader.ids)[:count]:
            h, w = reader.entries[eid]["hr_shape"][:2]
            y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
            Image.fromarray(reader.read(eid, "hr", y, x, min(size, h), min(size, w))).save(out / f"{eid}.png")
    finally:
        reader.close()


def as_dict(s: Shrunk) -> dict[str, Any]:
    """JSON-ready form of a :class:`Shrunk` (for tests and tools)."""
    return {"config": to_dict(s.cfg), "kept": s.kept, "shrunk": s.shrunk, "needs": s.needs}


__all__ = ["STRUCTURE", "Shrunk", "tiny_sizes", "tiny_overrides", "shrink", "run_preflight", "as_dict"]
