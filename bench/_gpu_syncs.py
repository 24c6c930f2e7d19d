"""Counting what a call costs the host: reads of tensor values (host synchronisations on a GPU), synchronising CUDA
calls, and aten operators (kernel launches). Used by bench/gpu_check.py's sections; no measurement of time here."""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from _common import ROOT, sync

# ----------------------------------------------------------------------------------------------------------------
# Host synchronisations


_READS = {"item", "__float__", "__bool__", "__int__", "__index__", "tolist", "numpy", "__array__", "__format__",
          "cpu", "to"}
_PLUMBING = ("torch/overrides.py", "torch/_tensor.py", "torch/utils/_device.py", "torch/_tensor_str.py")
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def _site(frame: Any) -> tuple[str, bool]:
    """'path:line (function)' of the first frame outside torch's dispatch plumbing and this file; and whether that
    call site is inside torch itself."""
    here = str(Path(__file__).resolve())
    while frame is not None and (frame.f_code.co_filename == here
                                 or frame.f_code.co_filename.replace("\\", "/").endswith(_PLUMBING)):
        frame = frame.f_back
    if frame is None:
        return "?", False
    path = str(Path(frame.f_code.co_filename).resolve())
    internal = path.startswith(_TORCH_DIR)
    for base in (str(ROOT), str(Path(_TORCH_DIR).parent)):
        if path.startswith(base + os.sep):
            path = path[len(base) + 1:]
            break
    return f"{path}:{frame.f_lineno} ({frame.f_code.co_name})", internal


def _to_cpu(args: tuple[Any, ...], kwargs: dict[str, Any], cuda: bool) -> bool:
    """Whether a ``Tensor.to`` call moves to the CPU. On CPU only an explicit ``"cpu"`` string counts: a
    ``torch.device`` there is usually "the tensor's own device" (e.g. ``t.to(device=other.device)``), which would
    stay on the GPU in a CUDA run."""
    targets = list(args[1:]) + [kwargs.get("device")]
    return any((isinstance(t, str) and t.startswith("cpu"))
               or (cuda and isinstance(t, torch.device) and t.type == "cpu") for t in targets)


class HostReads(TorchFunctionMode):
    """Counts Python-level reads of tensor values by the host (``item``, ``float()``, ``bool()``, ``.cpu()``, …).

    On a CUDA device each read of a CUDA tensor waits for the GPU's queue to drain: a host synchronisation. On CPU
    nothing waits, but the same call sites would, so reads are counted there too; reads made by torch itself on
    CPU tensors (Adam's step counters) are kept apart in ``internal``, since on CUDA those tensors stay on the CPU.
    ``sites`` maps call site → count.
    """

    def __init__(self, cuda: bool) -> None:
        super().__init__()
        self.cuda = cuda
        self.sites: dict[str, int] = {}
        self.internal: dict[str, int] = {}

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _READS and args and isinstance(args[0], torch.Tensor):
            t = args[0]
            counts = not (name == "to" and not _to_cpu(args, kwargs, self.cuda))
            if counts and self.cuda and t.device.type != "cuda":
                counts = False
            if counts:
                site, internal = _site(sys._getframe(1))
                book = self.internal if internal and not self.cuda else self.sites
                key = f"{name} at {site}"
                book[key] = book.get(key, 0) + 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.sites.values())


@dataclass
class SyncCount:
    """Host syncs of one call: ``reads`` (HostReads), ``cuda`` (torch.cuda sync-debug warnings, CUDA only)."""
    reads: int
    read_sites: dict[str, int]
    internal_reads: int
    cuda: int | None
    cuda_sites: dict[str, int] = field(default_factory=dict)

    def as_dict(self, per: int = 1) -> dict[str, Any]:
        return {"host_reads": self.reads / per, "cuda_syncs": None if self.cuda is None else self.cuda / per,
                "torch_internal_cpu_reads": self.internal_reads / per,
                "read_sites": {k: v / per for k, v in sorted(self.read_sites.items())},
                "cuda_sync_sites": {k: v / per for k, v in sorted(self.cuda_sites.items())}}


def count_syncs(fn: Callable[[], Any], device: torch.device) -> SyncCount:
    """Run ``fn`` once, counting host reads and (on CUDA) every synchronising CUDA call."""
    cuda = device.type == "cuda"
    reads = HostReads(cuda)
    cuda_sites: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            sync(device)
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with reads:
                fn()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    n_cuda = None
    if cuda:
        n_cuda = 0
        for w in caught:
            if "synchroniz" in str(w.message).lower():
                n_cuda += 1
                key = f"{Path(w.filename).name}:{w.lineno}"
                cuda_sites[key] = cuda_sites.get(key, 0) + 1
    return SyncCount(reads.total, dict(reads.sites), sum(reads.internal.values()), n_cuda, cuda_sites)


class SyncProbe:
    """Host syncs between marks inside one counted run: ``mark(label)`` closes the current interval and opens
    ``label``; :meth:`intervals` gives ``[(label, host reads, CUDA syncs or None)]`` in order. Used to split a
    training loop's syncs by iteration and by part (the step vs the loop's own bookkeeping)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.reads = HostReads(self.cuda)
        self._caught: list[Any] = []
        self._marks: list[tuple[str, int, int]] = []

    def _cuda_count(self) -> int:
        return sum(1 for w in self._caught if "synchroniz" in str(w.message).lower())

    def mark(self, label: str) -> None:
        self._marks.append((label, self.reads.total, self._cuda_count()))

    @contextlib.contextmanager
    def counting(self) -> Iterator[SyncProbe]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._caught = caught
            if self.cuda:
                sync(self.device)
                torch.cuda.set_sync_debug_mode("warn")
            try:
                with self.reads:
                    self.mark("start")
                    yield self
                    self.mark("end")
            finally:
                if self.cuda:
                    torch.cuda.set_sync_debug_mode(0)
            self._caught = list(caught)

    def intervals(self) -> list[tuple[str, int, int | None]]:
        out = []
        for (label, r0, c0), (_, r1, c1) in zip(self._marks, self._marks[1:]):
            out.append((label, r1 - r0, (c1 - c0) if self.cuda else None))
        return out


class _OpCounter(TorchDispatchMode):
    """Counts aten operator calls below autograd: on a GPU each one that computes is a kernel launch."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], Any]) -> int:
    """aten operators dispatched by one call of ``fn`` (views and metadata operators included)."""
    counter = _OpCounter()
    with counter:
        fn()
    return counter.count
