"""Preemption: SIGUSR2 (submitit's pre-timeout signal) and SIGTERM become "checkpoint at the next iteration".

Training must not save from inside a signal handler (an optimizer step may be half applied), so the handler only
records the signal; the loop checkpoints at the next iteration boundary and then calls :meth:`Preemption.finish`,
which hands the signal to whatever handler was installed before (submitit's, which requeues the Slurm task) or, with
no such handler, exits with 128 + signal number like a killed process would.
"""
from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

_SIGNALS = tuple(s for s in (getattr(signal, "SIGUSR2", None), signal.SIGTERM) if s is not None)


class Preempted(SystemExit):
    """Raised after the preemption checkpoint when no earlier handler takes over."""


class Preemption:
    """Context manager installing the flag-setting handlers (main thread only; a no-op elsewhere)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._frame: FrameType | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.signum, self._frame = signum, frame

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "Preemption":
        try:
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        except ValueError:  # not the main thread (e.g. the debug executor's worker thread)
            self._previous.clear()
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def finish(self) -> None:
        """Hand the recorded signal on (after the caller checkpointed)."""
        assert self.signum is not None
        signum, prev = self.signum, self._previous.get(self.signum)
        self.__exit__()
        self._previous.clear()
        if callable(prev):
            prev(signum, self._frame)
        sys.stdout.flush()
        raise Preempted(128 + signum)
