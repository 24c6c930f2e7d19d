"""Plumbing of bench/gpu_check.py: results files written as sections finish, per-section time limits, host-sync
counting, the card's peak rate, demo shards, and small timing helpers. No measurement lives here."""
from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import math
import os
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------------------
# The card


#: Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s, by a substring of
#: torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
DENSE_BF16_PEAK_TFLOPS: tuple[tuple[str, float, str], ...] = (
    ("H200 NVL", 835.0, "H200 NVL datasheet, dense bf16"),
    ("H200", 989.4, "H200 SXM datasheet, dense bf16 (same Hopper core as the H100 SXM)"),
    ("H100 NVL", 835.0, "H100 NVL datasheet, dense bf16"),
    ("H100 PCIe", 756.0, "H100 PCIe datasheet, dense bf16"),
    ("H100", 989.4, "H100 SXM5 datasheet, dense bf16"),
    ("A100", 312.0, "A100 datasheet, dense bf16"),
)


def bf16_peak(device_name: str) -> tuple[float | None, str]:
    """(dense bf16 peak in TFLOP/s, where the number comes from) for a CUDA device name; (None, why) if unknown."""
    for key, tflops, source in DENSE_BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops, f"{source} (matched '{key}' in '{device_name}')"
    return None, f"no datasheet peak known for '{device_name}'"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_tflops(device: torch.device, n: int, reps: int) -> float:
    """Achieved bf16 (CUDA) / fp32 (CPU) n×n×n matrix-product rate on random data, TFLOP/s (median of ``reps``)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    (a @ b).sum()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        c = a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    del a, b, c
    return 2 * n**3 / float(np.median(times)) / 1e12


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for cuDNN convolutions and cuBLAS matrix products on (True) or off (False), restored afterwards.

    Only the long-standing ``allow_tf32`` flags are used: mixing them with the newer ``fp32_precision`` API makes
    torch refuse to report the state. Torch's defaults are cuDNN on, cuBLAS off.
    """
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def median(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=float))) if xs else float("nan")


def spread(xs: list[float]) -> float:
    """(max − min) / median: how far the repetitions disagree."""
    if len(xs) < 2:
        return 0.0
    m = median(xs)
    return (max(xs) - min(xs)) / m if m else float("nan")


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


# ----------------------------------------------------------------------------------------------------------------
# Sections: time limits, results files


class SectionTimeout(Exception):
    """Raised inside a section when its wall-clock limit is reached."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (SIGALRM; a no-op off the main thread)."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"section time limit of {seconds:.0f} s reached")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Clock:
    """The whole script's deadline and the current section's."""

    def __init__(self, t0: float, budget_s: float) -> None:
        self.t0, self.deadline = t0, t0 + budget_s
        self.section_end = self.deadline

    def now(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        """Seconds left in the current section (never past the script's deadline)."""
        return min(self.section_end, self.deadline) - time.time()

    def total_left(self) -> float:
        return self.deadline - time.time()


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Results:
    """``gpu.json`` + ``gpu.md`` in every output folder, rewritten whole (atomically) after every section, so a run
    killed at its time limit still leaves every finished section."""

    def __init__(self, out_dirs: list[Path], meta: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
        self.out_dirs, self.render = out_dirs, render
        self.data: dict[str, Any] = {"meta": meta, "sections": {}}

    def put(self, name: str, record: dict[str, Any]) -> None:
        self.data["sections"][name] = record
        self.flush()

    def flush(self) -> None:
        data = _jsonable(self.data)
        text = json.dumps(data, indent=1, sort_keys=False) + "\n"
        md = self.render(data)
        for d in self.out_dirs:
            atomic_write(d / "gpu.json", text)
            atomic_write(d / "gpu.md", md)


def run_section(results: Results, clock: Clock, name: str, title: str, budget_s: float, reserve_s: float,
                fn: Callable[[dict[str, Any]], None], device: torch.device) -> dict[str, Any]:
    """Run one section with its own time limit; whatever happens, record it (``status`` ok / failed / timeout /
    skipped) with what it had measured so far, and go on.

    ``fn(record)`` fills ``record`` as it measures (and may call ``results.put`` itself for partial saves).
    ``reserve_s`` is the time kept back for the sections after this one.
    """
    record: dict[str, Any] = {"title": title, "status": "running", "budget_s": budget_s}
    limit = min(budget_s, clock.total_left() - reserve_s)
    if limit < min(10.0, budget_s):
        record.update(status="skipped", error=f"not enough time left ({clock.total_left():.0f} s, "
                                               f"{reserve_s:.0f} s kept for later sections)")
        results.put(name, record)
        print(f"[gpu_check] {name}: skipped ({record['error']})", flush=True)
        return record
    record["limit_s"] = limit
    print(f"\n[gpu_check] ===== {title} (limit {limit:.0f} s, at {clock.now():.0f} s) =====", flush=True)
    clock.section_end = time.time() + limit - 2.0
    t0 = time.perf_counter()
    results.put(name, record)
    try:
        with time_limit(limit):
            fn(record)
        record["status"] = "ok" if not record.get("failures") else "partial"
    except SectionTimeout as exc:
        record.update(status="timeout", error=str(exc))
    except BaseException as exc:  # noqa: BLE001 - one broken section must not lose the others
        if isinstance(exc, KeyboardInterrupt):
            raise
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=12))
        print(record["traceback"], file=sys.stderr, flush=True)
    finally:
        clock.section_end = clock.deadline
        record["seconds"] = time.perf_counter() - t0
        free_memory(device)
    results.put(name, record)
    print(f"[gpu_check] {name}: {record['status']} in {record['seconds']:.1f} s"
          f"{': ' + record['error'] if record.get('error') else ''}", flush=True)
    return record


def note_failure(record: dict[str, Any], what: str, exc: BaseException) -> None:
    """Record a failure of one part of a section and carry on with the rest."""
    if isinstance(exc, (SectionTimeout, KeyboardInterrupt)):
        raise exc
    record.setdefault("failures", []).append(f"{what}: {type(exc).__name__}: {exc}")
    print(f"[gpu_check] {what} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    traceback.print_exc(limit=8)


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------------------------
# Demo shards


def build_demo(out: Path, scale: int) -> dict[str, Any]:
    """``out/train`` and ``out/val`` shards of the built-in demo photos (easlurm.data.samples.build_samples).

    If some photo cannot be loaded on this machine (a package version without it), that photo is replaced by a
    seeded synthetic image of the same name and the replacement is reported, so the benchmarks still run.
    """
    from easlurm.data.samples import TRAIN_IDS, VAL_IDS, build_samples, sample_image

    t0 = time.perf_counter()
    try:
        build_samples(out, scale=scale)
        return {"train": out / "train", "val": out / "val", "synthetic": [], "seconds": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - fall back below, and say so
        first_error = f"{type(exc).__name__}: {exc}"
    import tempfile

    from PIL import Image

    from easlurm.data.shards import build_shards

    synthetic = []
    rng = np.random.default_rng(0)
    for split, ids in (("train", TRAIN_IDS), ("val", VAL_IDS)):
        with tempfile.TemporaryDirectory(prefix=f"demo-{split}-") as tmp:
            for sid in ids:
                try:
                    img = sample_image(sid)
                except Exception:  # noqa: BLE001
                    synthetic.append(sid)
                    base = rng.random((64, 64, 3))
                    img = np.asarray(Image.fromarray((base * 255).astype(np.uint8)).resize((512, 512),
                                                                                          Image.Resampling.BICUBIC))
                Image.fromarray(img).save(Path(tmp) / f"{sid}.png", compress_level=1)
            build_shards(tmp, out / split, scale)
    return {"train": out / "train", "val": out / "val", "synthetic": synthetic, "first_error": first_error,
            "seconds": time.perf_counter() - t0}
