"""Plumbing of bench/gpu_check.py: results files written as sections finish, per-section time limits, the card's
peak rate, memory and cuDNN/TF32 switches. No measurement lives here (host syncs: bench/_gpu_syncs.py; shared timing
and demo-data helpers: bench/_common.py)."""
from __future__ import annotations

import contextlib
import gc
import json
import math
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from _common import atomic_write, sync

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
