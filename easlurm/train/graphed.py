"""The member step replayed as one CUDA graph (``adam.cuda_graph``; issue 17, design B of the performance review).

An RRDB member iteration launches thousands of small kernels; eagerly, the host's time to launch them sets the
pace, not the GPU. Captured once in a CUDA graph, the whole iteration (G forward, both gradient passes, the mix,
G's fused Adam, D's forward/backward/Adam) is replayed with one launch. The math is :class:`MemberStep`'s, kernel
for kernel; the graph only removes the Python and launch overhead between them.

How :class:`GraphedStep` runs a member:

1. the first ``warmup`` iterations run eagerly (on a side stream on CUDA: cuDNN picks its algorithms, the allocator
   and Adam's state fill). They are real iterations on real batches, so a graphed run takes the same steps as an
   eager one;
2. the next iteration copies its batch into static input buffers and captures one step into a graph (capture
   records, it does not compute), then replays it — that replay is the iteration;
3. every later iteration copies its batch into the static buffers and replays. The results it returns (losses,
   gradient norms, the SR batch) are the graph's static outputs: valid until the next call, which is exactly how the
   training loop uses them (it reads them at log and checkpoint steps, before the next iteration).

What invalidates a graph — a different batch shape, or anything that swaps tensors the graph points at (loading a
checkpoint or optimizer state) — must call :meth:`GraphedStep.reset`; the next call warms up and captures again.
The optimizers must be built with ``capturable=True`` (:func:`easlurm.runtime.adam`).

A step can be captured only if it never reads a device value on the host (``.item()``, ``float(t)``, a tensor in an
``if``) and no operator's output shape depends on data: :func:`host_reads` lists such operators in one call of a
function, on any device (the CPU tests hold :class:`MemberStep` to it for every backbone and loss).

Off CUDA there is no graph: :class:`Rerun` keeps a graph's contract (static inputs and outputs, capture then
replay) and recomputes on every replay — what the CPU tests and the GPU check's CPU smoke exercise. The speed of the
real graph is measured by ``bash bench/gpu_check.sh`` (section 8); it is off by default until a GPU run shows it
faster and equal to eager within float rounding.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["GraphedStep", "CudaGraph", "Rerun", "host_reads", "HOST_READ_OPS"]

Flat = tuple[torch.Tensor, ...]

#: Operators that read a tensor's value on the host, or whose output shape depends on values (a CUDA graph can
#: hold neither: capture fails, or bakes one iteration's value into every replay).
HOST_READ_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::nonzero",
    "aten::nonzero_static", "aten::masked_select", "aten::unique_dim", "aten::_unique", "aten::_unique2",
    "aten::unique_consecutive", "aten::repeat_interleave", "aten::_assert_async",
})


class _HostReadProbe(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func._schema.name
        if name in HOST_READ_OPS:
            self.hits.append(name)
        elif name in ("aten::index", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_"):
            # a boolean mask as an index is a nonzero() in disguise
            if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in args[1] or ()):
                self.hits.append(f"{name} (boolean mask)")
        elif name in ("aten::_to_copy", "aten::copy_"):  # a copy from an accelerator to the host is a read
            src = args[1] if name == "aten::copy_" else args[0]
            dst_device = (args[0].device if name == "aten::copy_" else (kwargs or {}).get("device"))
            if (isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst_device is not None
                    and torch.device(dst_device).type == "cpu"):
                self.hits.append(f"{name} ({src.device.type} -> cpu)")
        return func(*args, **(kwargs or {}))


def host_reads(fn: Callable[[], Any]) -> list[str]:
    """The operators of one call of ``fn`` that read device values on the host or have data-dependent output
    shapes (in call order; empty for a capturable function). ``fn`` runs for real (its side effects happen)."""
    probe = _HostReadProbe()
    with probe:
        fn()
    return probe.hits


class GraphBackend(Protocol):
    """One captured function: :meth:`capture` records ``fn`` (it does not compute), :meth:`replay` computes it;
    ``outputs`` are the static tensors the replays write (set by the first replay at the latest)."""

    outputs: Flat

    def capture(self, fn: Callable[[], Flat]) -> None: ...

    def replay(self) -> None: ...

    def eager(self, fn: Callable[[], Flat]) -> Flat:
        """Run ``fn`` once outside any graph (a warm-up iteration)."""


class CudaGraph:
    """A real ``torch.cuda.CUDAGraph``: warm-ups on a side stream, capture in thread-local error mode (so a loader
    thread pinning memory meanwhile cannot break it), replay on the current stream."""

    def __init__(self, pool: Any = None) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.pool = pool
        self.outputs: Flat = ()
        self.side = torch.cuda.Stream()

    def eager(self, fn: Callable[[], Flat]) -> Flat:
        side = self.side
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = fn()
        torch.cuda.current_stream().wait_stream(side)
        return out

    def capture(self, fn: Callable[[], Flat]) -> None:
        with torch.cuda.graph(self.graph, pool=self.pool, capture_error_mode="thread_local"):
            self.outputs = fn()

    def replay(self) -> None:
        self.graph.replay()


class Rerun:
    """A graph's contract on any device, without its speed: ``capture`` keeps ``fn``, every ``replay`` runs it and
    copies the results into the outputs of the first replay (static outputs, as a graph's)."""

    def __init__(self) -> None:
        self.fn: Callable[[], Flat] | None = None
        self.outputs: Flat = ()
        self.replays = 0

    def eager(self, fn: Callable[[], Flat]) -> Flat:
        return fn()

    def capture(self, fn: Callable[[], Flat]) -> None:
        self.fn = fn

    def replay(self) -> None:
        assert self.fn is not None, "replay before capture"
        fresh = self.fn()
        if self.replays == 0:
            self.outputs = tuple(t.detach().clone() for t in fresh)
        else:
            for static, t in zip(self.outputs, fresh, strict=True):
                static.copy_(t)
        self.replays += 1


class GraphedStep:
    """A :class:`~easlurm.train.member.MemberStep` (or any step ``(lr, hr) -> (result, sr)`` whose result is a
    dataclass of tensors with ``scalars()`` listing its fields in order) run as warm-up iterations, then one captured
    graph replayed.

    ``backend``: builds the graph of one capture (default :class:`CudaGraph`; :class:`Rerun` off CUDA).
    ``warmup``: eager iterations before each capture (>= 1; PyTorch's whole-network example uses 3).
    ``captures``/``replays`` count what happened (the tests and the GPU check read them).
    """

    def __init__(self, step: Any, backend: Callable[[], GraphBackend] | None = None, warmup: int = 3) -> None:
        if warmup < 1:
            raise ValueError(f"warmup: at least one eager iteration before a capture, got {warmup}")
        self.step = step
        self.backend = backend or CudaGraph
        self.warmup = int(warmup)
        self.captures = self.replays = 0
        self._graph: GraphBackend | None = None
        self._next: GraphBackend | None = None  # the graph being warmed up for
        self._warm = 0
        self._static: tuple[torch.Tensor, torch.Tensor] | None = None
        self._result_type: Any = None
        if hasattr(step, "autocast_cache"):
            step.autocast_cache = False  # autocast's weight-cast cache would outlive the capture (PyTorch notes)

    def reset(self) -> None:
        """Forget the graph: the next call warms up and captures again (after a checkpoint or optimizer state was
        loaded into the step's modules, or anything else that replaced tensors the graph reads or writes)."""
        self._graph, self._next, self._static, self._warm = None, None, None, 0

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def _flat(self, lr: torch.Tensor, hr: torch.Tensor) -> Flat:
        res, sr = self.step(lr, hr)
        self._result_type = type(res)
        return (*res.scalars().values(), sr)

    def _unflat(self, flat: Sequence[torch.Tensor]) -> tuple[Any, torch.Tensor]:
        return self._result_type(*flat[:-1]), flat[-1]

    def __call__(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """One iteration on a batch (NCHW RGB [0, 1], LR and HR); returns the step's result and SR batch (static
        tensors once captured: read them before the next call)."""
        if self._static is not None and (self._static[0].shape != lr.shape or self._static[1].shape != hr.shape):
            self.reset()  # a graph holds one shape
        if self._graph is None and self._warm < self.warmup:
            self._warm += 1
            if self._next is None:
                self._next = self.backend()
            return self._unflat(self._next.eager(lambda: self._flat(lr, hr)))
        if self._graph is None:
            self._static = (lr.detach().clone(), hr.detach().clone())
            graph, self._next = self._next or self.backend(), None
            for opt in (getattr(self.step, "opt_g", None), getattr(self.step, "opt_d", None)):
                if opt is not None:
                    opt.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's pool
            static_lr, static_hr = self._static
            graph.capture(lambda: self._flat(static_lr, static_hr))
            self._graph = graph
            self.captures += 1
        else:
            assert self._static is not None
            self._static[0].copy_(lr)
            self._static[1].copy_(hr)
        self._graph.replay()
        self.replays += 1
        return self._unflat(self._graph.outputs)
