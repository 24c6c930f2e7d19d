"""What every section of bench/gpu_check.py shares: the configs it measures (the paper configs on the demo shards,
shrunk under --cpu-smoke), the :class:`Ctx` a section gets, and the seeded generator genomes of the EA and fusion.

Every section takes a :class:`Ctx` and a ``record`` dict it fills as it measures (the caller saves the record
whatever happens). Images are NCHW RGB float in [0, 1] throughout. The same code runs on CUDA at full size and on
CPU at a tiny size (``ctx.smoke``): only the numbers in :data:`SMOKE` and the iteration counts differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from _common import ROOT, timed
from _gpu_common import Clock, Results

#: Overrides every section-1..4 config gets: the demo shards, no pretrained file, VGG16 for the perceptual loss
#: (VGG19 weights exist nowhere offline; DESIGN.md §5), attention averaged over the (demo) training photos and no
#: benchmark sets (the paper configs name folders that do not exist here). ``{demo}`` is the demo shard folder;
#: ``{{}}`` is a literal ``{}`` after ``str.format``.
BASE = ("data.train={demo}/train", "data.val={demo}/val", "model.pretrained=null", "loss.perceptual.net=vgg16",
        "fusion.average_set=null", "eval.sets={{}}")

#: --cpu-smoke sizes: the same code paths with tiny networks, patches and batches.
SMOKE: dict[str, tuple[str, ...]] = {
    "rrdb": ("model.num_feat=8", "model.num_block=1", "model.num_grow_ch=4", "discriminator.num_feat=4",
             "data.patch_size=32", "adam.batch_size=2", "fusion.batch_size=2", "fusion.att_channels=4",
             "data.fitness_tile=32", "data.fitness_images=2", "data.fitness_max_tiles=2", "ea.eval_batch=2",
             "data.num_workers=1", "fusion.average_images=1", "loss.perceptual.layers={conv1_2: 1.0}"),
    "srresnet": ("model.num_feat=8", "model.num_block=1", "discriminator.num_feat=4", "data.patch_size=32",
                 "adam.batch_size=2", "data.num_workers=1", "loss.perceptual.layers={conv1_2: 1.0}"),
    "swinir": ("model.img_size=8", "model.embed_dim=12", "model.depths=[2, 2]", "model.num_heads=[2, 2]",
               "model.window_size=4", "discriminator.num_feat=4", "data.patch_size=32", "adam.batch_size=2",
               "data.num_workers=1", "loss.perceptual.layers={conv1_2: 1.0}"),
}
CONFIGS = {name: ROOT / "configs" / f"{name}.yaml" for name in ("rrdb", "srresnet", "swinir")}


@dataclass
class Ctx:
    device: torch.device
    smoke: bool
    demo: Path
    clock: Clock
    results: Results
    scratch: Path
    shared: dict[str, Any] = field(default_factory=dict)   # numbers later sections reuse (e.g. the bf16 rate)

    def overrides(self, name: str, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
        """The ``--set`` overrides of config ``name`` here: :data:`BASE`, the smoke sizes under --cpu-smoke, then
        ``extra``."""
        return [o.format(demo=self.demo) for o in BASE] + (list(SMOKE[name]) if self.smoke else []) + list(extra)

    def cfg(self, name: str, extra: tuple[str, ...] | list[str] = ()) -> Any:
        from easlurm.config import load_config

        return load_config(CONFIGS[name], self.overrides(name, extra))

    def timed(self, fn: Callable[[], Any]) -> float:
        """Seconds of one synchronised call."""
        return timed(fn, self.device)


def flags() -> dict[str, bool]:
    """The TF32 and cuDNN autotuning switches now."""
    return {"tf32_cudnn": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def seeded_genomes(cfg: Any, n: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """``n`` distinct generator genomes: one seeded network, each copy with its own 1 % Gaussian jitter (the EA and
    fusion cost nothing more for trained weights, and SBX between unrelated random networks would be meaningless)."""
    from easlurm import factory

    torch.manual_seed(0)
    base = factory.build_generator(cfg).state_dict()
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        g = {}
        for k, v in base.items():
            if v.is_floating_point() and v.numel() > 1:
                v = v + 0.01 * float(v.std()) * torch.randn(v.shape, generator=gen)
            g[k] = v.to(device)
        out.append(g)
    return out
