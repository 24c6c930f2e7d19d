"""A cheap fix to measure: the per-tensor normalised mix (easlurm.train.mix) done on one flat buffer.

The trainer's mix launches about eleven small kernels per parameter tensor (a norm, an epsilon, a reciprocal, two
scalings, an add, for each of the two gradients): 702 tensors of RRDB make some 7,700 launches per iteration, which on
a GPU can cost more host time than the arithmetic. The same mathematics on one flat buffer: every gradient's L2 norm
in one ``torch._foreach_norm`` call, the per-tensor scales spread over the elements by a precomputed segment index,
one multiply-add, then split back into views of the parameters' shapes; about a dozen launches whatever the tensor
count. :class:`FlatMixBare` is bench/_adam_sides.py's bare loop with only this part changed, so timing it next to the
bare loop shows what the fix would gain in the trainer.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from _adam_sides import BareStep


class FlatMixBare(BareStep):
    """bench/_adam_sides.py's :class:`BareStep` with the normalised mix computed on one flat buffer."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.sizes = [p.numel() for p in self.params]
        dev = self.params[0].device
        # Element e of the flat buffer belongs to tensor segment[e]: the scales spread by one gather, no host sync.
        self.segment = torch.repeat_interleave(torch.arange(len(self.sizes), device=dev),
                                               torch.tensor(self.sizes, device=dev), output_size=sum(self.sizes))

    def _scaled(self, grads: Sequence[torch.Tensor], w: float) -> torch.Tensor:
        norms = torch.stack(torch._foreach_norm(list(grads)))
        scale = (w / (norms + self.eps))[self.segment]
        return torch.cat([g.reshape(-1) for g in grads]) * scale

    def direction(self, g1: Sequence[torch.Tensor | None], g2: Sequence[torch.Tensor | None]
                  ) -> list[torch.Tensor | None]:
        use1 = self.w_dist != 0.0 and all(g is not None for g in g1)
        use2 = self.w_perc != 0.0 and all(g is not None for g in g2)
        if (self.w_dist != 0.0 and not use1) or (self.w_perc != 0.0 and not use2) or not (use1 or use2):
            return super().direction(g1, g2)  # an unused parameter: the per-tensor path handles the None entries
        flat = None
        if use1:
            flat = self._scaled(g1, self.w_dist)  # type: ignore[arg-type]
        if use2:
            t = self._scaled(g2, self.w_perc)  # type: ignore[arg-type]
            flat = t if flat is None else flat + t
        assert flat is not None
        return [part.view_as(p) for part, p in zip(flat.split(self.sizes), self.params, strict=True)]
