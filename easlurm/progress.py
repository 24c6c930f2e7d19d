"""Progress with rate and ETA for long loops (shard builds; later evaluation, the local executor, the launcher).

Two modes, picked from the output stream (stderr by default):

* **A terminal:** a `tqdm <https://tqdm.github.io>`_ bar (count, percent, rate, elapsed, ETA), redrawn in place.
* **Anything else** (a Slurm log file, a pipe, CI): quiet. One plain line when the count has reached another tenth
  of the total **and** at least ``interval_s`` (30 s) have passed since the previous line (or the start), e.g.
  ``shards: 1035/3450 images (30%), 0.58 images/s, elapsed 29m43s, ETA 1h09m``. So a log gets at most ten lines
  per loop, none for a loop that ends within 30 s, and no carriage returns. With an unknown total, a line every
  ``interval_s``. Nothing is printed at the end: the caller reports what it finished.

Use :func:`progress` around an iterable, or :class:`Progress` as a context manager where the work is not a loop
over one iterable (``with Progress(total, "eval") as p: ... p.update()``). ``enabled=False`` silences both modes.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TextIO, TypeVar

__all__ = ["Progress", "progress", "format_duration"]

T = TypeVar("T")

#: Seconds between two lines of the non-terminal mode, at the least.
LOG_INTERVAL_S = 30.0
#: The non-terminal mode writes a line only after the count has reached another 1/LOG_STEPS of the total.
LOG_STEPS = 10


def format_duration(seconds: float) -> str:
    """``42s``, ``9m55s``, ``1h09m`` (rounded down; ``?`` for an unknown or infinite duration)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def _size_known(stream: TextIO) -> bool:
    """Whether the terminal reports a size (a pseudo-terminal of size 0x0, e.g. under ``script``, does not)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return size.columns > 0 and size.lines > 0


class Progress:
    """Counts work done out of ``total`` (None: unknown) and reports it on ``stream`` (default: ``sys.stderr``).

    ``desc`` prefixes every report, ``unit`` names what is counted (``"images"``). ``n`` is the count so far.
    ``clock`` (seconds, monotonic) exists for tests. See the module docstring for what is printed when.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, stream: TextIO | None = None,
                 interval_s: float = LOG_INTERVAL_S, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total is not None and total < 0:
            raise ValueError(f"progress total must be >= 0 or None (got {total})")
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.interval_s = float(interval_s)
        self._clock = clock
        self._start = clock()
        self._last_line = self._start
        self._last_step = 0
        self._bar = None
        self._log = False
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm  # imported only when a bar is drawn

            # tqdm hides its bar on a terminal that reports size 0x0; give it a fixed size there.
            known = _size_known(self.stream)
            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream, leave=True,
                             mininterval=0.5, dynamic_ncols=known, ncols=None if known else 100,
                             nrows=None if known else 24)
        elif enabled:
            self._log = True

    def update(self, k: int = 1) -> None:
        """Count ``k`` more units done."""
        self.n += k
        if self._bar is not None:
            self._bar.update(k)
        elif self._log:
            self._maybe_log()

    def _maybe_log(self) -> None:
        now = self._clock()
        if now - self._last_line < self.interval_s:
            return
        if self.total:
            step = min(LOG_STEPS, self.n * LOG_STEPS // self.total)
            if step <= self._last_step:
                return
            self._last_step = step
        self._last_line = now
        self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def line(self, now: float | None = None) -> str:
        """The plain report: count, percent, rate, elapsed time and ETA (when the total is known)."""
        elapsed = (self._clock() if now is None else now) - self._start
        rate = self.n / elapsed if elapsed > 0 else math.nan
        head = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total is not None else "") + f" {self.unit}"
        if self.total:
            head += f" ({100 * self.n // self.total}%)"
        text = f"{head}, {rate:.2f} {self.unit}/s, elapsed {format_duration(elapsed)}"
        if self.total is not None:
            eta = (self.total - self.n) / rate if rate > 0 else math.inf
            text += f", ETA {format_duration(eta)}"
        return text

    def close(self) -> None:
        """Finish the bar (a terminal keeps its last state); the plain mode prints nothing more."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._log = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it", *,
             stream: TextIO | None = None, interval_s: float = LOG_INTERVAL_S, enabled: bool = True,
             clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """Yield the items of ``iterable`` unchanged while counting them in a :class:`Progress` (``total`` defaults to
    ``len(iterable)`` when it has one). An item counts as done when the loop body asks for the next one."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit, stream=stream, interval_s=interval_s, enabled=enabled, clock=clock) as p:
        for item in iterable:
            yield item
            p.update()
