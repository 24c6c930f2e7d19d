"""The measured sections of bench/gpu_check.py, one module each (section 5, the short real run, lives in
bench/gpu_check.py itself):

0. device — bench/_gpu_device.py
1. member step, and 6. its cheap fixes and the whole member job — bench/_gpu_member.py
2. loader — bench/_gpu_loader.py
3. EA — bench/_gpu_ea.py
4. fusion — bench/_gpu_fusion.py
7. k members on one GPU (the grouped-convolution gate, in turn vs batched) — bench/_gpu_population.py
8. the captured member step (eager vs one CUDA graph) — bench/_gpu_graph.py
9. k member processes on one GPU, time-sliced vs CUDA MPS — bench/_gpu_mps.py
10. TF32 vs bf16 in a short training run — bench/_gpu_bf16.py

What they share (the configs, :class:`Ctx`, the seeded genomes) is in bench/_gpu_ctx.py. Every section takes a
:class:`Ctx` and a ``record`` dict it fills as it measures.
"""
from __future__ import annotations

from _gpu_bf16 import section_bf16
from _gpu_ctx import Ctx
from _gpu_device import section_device
from _gpu_ea import section_ea
from _gpu_fusion import section_fusion
from _gpu_graph import GRAPH_VARIANTS, SMOKE_GRAPH_VARIANTS, section_graph
from _gpu_loader import section_loader
from _gpu_mps import section_mps
from _gpu_population import section_population
from _gpu_member import EXTRA_VARIANTS, SMOKE_VARIANTS, VARIANTS, Variant, section_extras, section_member_step

__all__ = ["Ctx", "Variant", "VARIANTS", "EXTRA_VARIANTS", "SMOKE_VARIANTS", "section_device", "section_member_step",
           "section_loader", "section_ea", "section_fusion", "section_extras", "section_population",
           "section_graph", "GRAPH_VARIANTS", "SMOKE_GRAPH_VARIANTS", "section_mps",
           "section_bf16"]
