"""The EA's objectives: f = (mean L1, mean perceptual loss) of a generator on the fixed fitness tiles.

Both are minimised and computed without gradients, in eval mode, on the generator's unclamped SR output (exactly
what the Adam phase trains on) against the HR tile. No GAN term: discriminators play no part in the EA phase.
Images are NCHW RGB float32 in [0, 1] throughout.

Averaging (``data.fitness_mean``): ``image`` — the mean over fitness images of each image's mean over its tiles
(every image counts the same, whatever its tile count; the reference's per-image averaging) — or ``tile``, the
plain mean over all tiles. Batches never straddle two images, so both are exact. The tiles themselves are chosen by
:class:`easlurm.data.fitness.FitnessTiles` (N distinct source images, the reference's tile rule).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .. import factory
from ..config import Config
from ..errors import ConfigError

__all__ = ["OBJECTIVE_NAMES", "FitnessSet", "Objectives", "cache_budget"]

OBJECTIVE_NAMES = ("l1", "perceptual")
_CACHE_BYTES = 1 << 30  # HR feature cache limit in host memory (1 GiB)
#: Share of a CUDA device's free memory the HR feature cache may take (the rest: the generator's and the perceptual
#: net's activations of one evaluation batch, and the caller's tensors).
_CUDA_CACHE_SHARE = 0.5


def cache_budget(device: torch.device) -> int:
    """Bytes the HR feature cache may take on ``device``: half of a CUDA device's free memory when the cache is
    built (RRDB's conv1_2 maps of 800 tiles, ~6 GiB, fit on a datacenter GPU), ``_CACHE_BYTES`` elsewhere."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * _CUDA_CACHE_SHARE)
    return _CACHE_BYTES


@dataclass
class FitnessSet:
    """The fixed fitness tiles, in memory: ``lr`` T×3×(t/s)×(t/s), ``hr`` T×3×t×t, float32 RGB in [0, 1];
    ``image`` (length T) the index of each tile's source image — tiles of one image are contiguous."""

    lr: torch.Tensor
    hr: torch.Tensor
    image: list[int]
    rows: list[dict[str, Any]]
    source_sha256: dict[str, str]
    info: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> FitnessSet:
        """The fitness tiles of ``data.fitness_*`` from the fitness shards (:mod:`easlurm.data.fitness`)."""
        from ..data.fitness import FitnessTiles

        tiles = FitnessTiles.from_config(cfg.data, factory.data_dirs(cfg).fitness)
        lr, hr, image_index = tiles.load()
        return cls(lr, hr, [int(i) for i in image_index.tolist()], tiles.manifest_rows(), tiles.source_hashes(),
                   tiles.describe())

    def __len__(self) -> int:
        return int(self.hr.shape[0])

    def to(self, device: torch.device | str) -> FitnessSet:
        return FitnessSet(self.lr.to(device), self.hr.to(device), self.image, self.rows, self.source_sha256,
                          self.info)

    def groups(self) -> list[tuple[int, int]]:
        """``[start, end)`` tile ranges of each image, in order."""
        out: list[tuple[int, int]] = []
        for k, img in enumerate(self.image):
            if out and self.image[out[-1][0]] == img:
                out[-1] = (out[-1][0], k + 1)
            else:
                out.append((k, k + 1))
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the tiles (id, y, x, size in HR px) and the sha256 of their source images."""
        return {**(self.info or {}), "tiles": self.rows, "source_sha256": dict(sorted(self.source_sha256.items())),
                "count": len(self), "images": len(set(self.image))}


class Objectives:
    """``f(genome) = (mean L1, mean perceptual loss)`` over a :class:`FitnessSet` (both minimised, floats).

    ``model`` is the backbone whose parameters the genome replaces (via ``torch.func.functional_call``, so the model
    itself is never modified; entries a genome leaves out, its backbone's buffers (:mod:`easlurm.evo.genes`), are
    the model's own); ``perceptual`` maps (sr, hr) NCHW RGB [0, 1] to a scalar mean loss. Both are put in
    eval mode. ``mean``: ``image`` (per-image means, then their mean) or ``tile``. Sums are float64. A diverged
    genome gives NaN/inf, which the caller must reject. ``calls`` counts evaluations.
    """

    def __init__(self, model: nn.Module, perceptual: nn.Module, fitness: FitnessSet, batch: int,
                 mean: str = "image") -> None:
        if batch < 1:
            raise ConfigError(f"ea.eval_batch: must be >= 1, got {batch}")
        if mean not in ("image", "tile"):
            raise ConfigError(f"data.fitness_mean: must be image or tile, got {mean!r}")
        self.model = model.eval()
        self.perceptual = perceptual.eval()
        self.fitness = fitness
        self.batch = int(batch)
        self.mean = mean
        self.calls = 0
        self.batches = [(s, min(s + self.batch, e)) for s, e in fitness.groups() for s in range(s, e, self.batch)]
        self._targets: list[dict[str, torch.Tensor]] | None = None
        self._targets_tried = False

    def _target_cache(self) -> list[dict[str, torch.Tensor]] | None:
        """The fitness set's HR features per batch, computed once: they are the same for every genome and are most
        of an evaluation's cost. Kept where the tiles are (on the GPU in a GPU job); skipped (recomputed per call)
        when they would exceed :func:`cache_budget`."""
        if self._targets_tried:
            return self._targets
        self._targets_tried = True
        target_fn = getattr(self.perceptual, "target_features", None)
        if target_fn is None:
            return None
        hr_all = self.fitness.hr
        s0, e0 = self.batches[0]
        first = target_fn(hr_all[s0:e0])
        per_tile = sum(t[:1].numel() * t.element_size() for t in first.values())
        if per_tile * len(self.fitness) > cache_budget(hr_all.device):
            return None
        self._targets = [first] + [target_fn(hr_all[s:e]) for s, e in self.batches[1:]]
        return self._targets

    @torch.no_grad()
    def __call__(self, genome: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        self.calls += 1
        lr_all, hr_all = self.fitness.lr, self.fitness.hr
        targets = self._target_cache()
        l1, perc, count = self._sums(1)
        for k, (s, e) in enumerate(self.batches):
            lr, hr = lr_all[s:e], hr_all[s:e]
            sr = torch.func.functional_call(self.model, dict(genome), (lr,))
            b = e - s
            img = self._image_of[s]
            l1[0, img] += (sr - hr).abs().mean().double() * b
            p = self.perceptual(sr, target=targets[k]) if targets is not None else self.perceptual(sr, hr)
            perc[0, img] += p.double() * b
            count[img] += b
        return self._means(l1, perc, count)[0]

    @torch.no_grad()
    def many(self, genomes: Sequence[Mapping[str, torch.Tensor]]) -> list[tuple[float, float]]:
        """The objectives of several genomes (``ea.batch_children``): per tile batch one generator pass over their
        stacked weights (``torch.func.vmap``: grouped convolutions) and one perceptual pass over all their SR tiles —
        a few large kernels instead of k times as many small ones. Equals ``[self(g) for g in genomes]`` up to float
        rounding (the convolutions are computed grouped; float64: 1e-12, tested). ``calls`` counts each genome."""
        if len(genomes) <= 1:
            return [self(g) for g in genomes]
        names = set(genomes[0])
        for j, g in enumerate(genomes):
            if set(g) != names:
                raise ValueError(f"Objectives.many: genome {j} holds other tensors than genome 0 "
                                 f"({sorted(set(g) ^ names)[:3]}…)")
        k = len(genomes)
        self.calls += k
        stacked = {name: torch.stack([g[name] for g in genomes]) for name in genomes[0]}

        def generator(params: dict[str, torch.Tensor], lr: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.model, params, (lr,))

        batched = torch.func.vmap(generator, in_dims=(0, None))
        lr_all, hr_all = self.fitness.lr, self.fitness.hr
        targets = self._target_cache()
        l1, perc, count = self._sums(k)
        for t, (s, e) in enumerate(self.batches):
            lr, hr = lr_all[s:e], hr_all[s:e]
            sr = batched(stacked, lr)  # k × b × 3 × H × W
            b = e - s
            img = self._image_of[s]
            l1[:, img] += (sr - hr).abs().flatten(1).mean(1).double() * b
            flat = sr.flatten(0, 1)
            p = (self.perceptual(flat, target=targets[t], groups=k) if targets is not None
                 else self.perceptual(flat, hr, groups=k))
            perc[:, img] += p.double() * b
            count[img] += b
        return self._means(l1, perc, count)

    @functools.cached_property
    def _image_of(self) -> dict[int, int]:
        return {s: k for k, (s0, e0) in enumerate(self.fitness.groups()) for s in range(s0, e0)}

    def _sums(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zeroed float64 accumulators: L1 and perceptual sums (k genomes × images), tile counts (images)."""
        dev, n_img = self.fitness.hr.device, len(self.fitness.groups())
        return (torch.zeros(k, n_img, dtype=torch.float64, device=dev),
                torch.zeros(k, n_img, dtype=torch.float64, device=dev),
                torch.zeros(n_img, dtype=torch.float64, device=dev))

    def _means(self, l1: torch.Tensor, perc: torch.Tensor, count: torch.Tensor) -> list[tuple[float, float]]:
        """Per genome (f1, f2): the mean of per-image means (``image``) or the mean over all tiles (``tile``)."""
        if self.mean == "image":
            f1, f2 = (l1 / count).mean(1), (perc / count).mean(1)
        else:
            total = count.sum()
            f1, f2 = l1.sum(1) / total, perc.sum(1) / total
        return [(float(a), float(b)) for a, b in zip(f1.tolist(), f2.tolist())]
