"""Helpers every bench/ script shares: where the repository is, what machine a benchmark ran on, the demo shards,
timing statistics and the Markdown report's head and file.

The bench scripts run as ``python bench/NAME.py`` (bench/ is then ``sys.path[0]``) and import this module as
``from _common import …``; easlurm itself comes from the environment (``pip install -e .``, or ``PYTHONPATH`` set
by bench/gpu_check.sh). Only the standard library and numpy are imported here at load time: torch and easlurm are
imported by the helpers that need them, so a torch-free script (bench/slurm_overhead.py) stays light.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"

# ----------------------------------------------------------------------------------------------------------------
# The machine


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity), else the machine's logical CPUs."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine(*extra: str) -> str:
    """One line for a report: CPU, cores, OS, Python and torch versions, then ``extra`` (e.g. thread counts)."""
    import torch

    parts = [f"{cpu_name()}, {os.cpu_count()} logical CPUs ({usable_cpus()} usable)",
             f"{platform.system()} {platform.release()}", f"Python {platform.python_version()}",
             f"torch {torch.__version__}", *extra]
    return ", ".join(parts)


def data_machine() -> str:
    """:func:`machine` for a data benchmark: with the h5py (HDF5), numpy and Pillow versions."""
    import h5py
    import PIL

    return machine(f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version})", f"numpy {np.__version__}",
                   f"Pillow {PIL.__version__}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages ("n/a" where the OS has none): other people's work on the cores."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------------------------
# Reports


def command_line(script: str, argv: Sequence[str] | None, env: Sequence[str] = ()) -> str:
    """``python bench/SCRIPT.py ARGS`` as run (``argv`` None: this process's arguments), prefixed with the
    ``env`` variables that are set (e.g. ``OMP_NUM_THREADS=1``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    prefix = [f"{k}={os.environ[k]}" for k in env if os.environ.get(k)]
    return " ".join([*prefix, "python", f"bench/{script}", *args])


def report_head(title: str, command: str, machine_line: str) -> list[str]:
    """The first lines of every results file: title, the command that made it, when, and on what."""
    return [title, "", f"- command: `{command}`", f"- date: {now_iso()}", f"- machine: {machine_line}"]


def generator_line(cfg: Any) -> str:
    """The configured generator for a report: ``msrresnet (num_feat 32, num_block 4), ×4``."""
    opts = ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(cfg.model.options).items())
    return f"{cfg.model.arch} ({opts}), ×{cfg.data.scale}"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (the folder is created if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def publish(text: str, out: Path | None) -> None:
    """Print a report and, when ``out`` is given, write it there."""
    if out is not None:
        atomic_write(out, text)
    print(text)


# ----------------------------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    """Wait for the device's queue (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start counting the device's peak memory afresh (CUDA)."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """The device's peak allocated memory since the last :func:`reset_peak`, GiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn``, synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of ``repeats`` calls in seconds: on a shared machine interference only ever adds time."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def stamp() -> np.ndarray:
    """[wall, process CPU] seconds now (CPU time of all this process's threads)."""
    return np.array([time.perf_counter(), time.process_time()])


def median(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=float))) if len(xs) else float("nan")


def spread(xs: Sequence[float]) -> float:
    """(max − min) / median: how far the repetitions disagree."""
    if len(xs) < 2:
        return 0.0
    m = median(xs)
    return (max(xs) - min(xs)) / m if m else float("nan")


def med_iqr(xs: Sequence[float]) -> tuple[float, float, float]:
    """(median, 25th, 75th percentile)."""
    a = np.asarray(xs, dtype=float)
    return float(np.median(a)), float(np.percentile(a, 25)), float(np.percentile(a, 75))


# ----------------------------------------------------------------------------------------------------------------
# Data


def build_demo(out: Path, scale: int) -> dict[str, Any]:
    """``out/train`` and ``out/val`` shards of the built-in demo photos (easlurm.data.samples.build_samples).

    If some photo cannot be loaded on this machine (a package version without it), that photo is replaced by a
    seeded synthetic image of the same name and the replacement is reported (``synthetic``), so the benchmarks
    still run.
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


def demo_train_shards(out: Path, scale: int) -> Path:
    """The demo photos' training shards, built into ``out`` (see :func:`build_demo`); says so when some photo had
    to be replaced by a synthetic image."""
    info = build_demo(out, scale)
    if info["synthetic"]:
        print(f"[bench] demo photos replaced by synthetic images: {', '.join(info['synthetic'])} "
              f"({info['first_error']})", flush=True)
    return Path(info["train"])


def drain_loader(loader: Any) -> tuple[int, float]:
    """(samples, seconds) of the batches left in ``loader`` after its first one, which is taken untimed (worker
    start-up). Exhausting it joins its workers."""
    next(loader)
    t0 = time.perf_counter()
    n = 0
    for lr, _hr in loader:
        n += lr.shape[0]
    return n, time.perf_counter() - t0
