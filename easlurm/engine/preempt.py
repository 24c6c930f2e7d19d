"""Preemption: SIGUSR2 (the pre-timeout signal) and SIGTERM become "checkpoint at the next iteration, then stop".

Training must not save from inside a signal handler (an optimizer step may be half applied), so the handler only
records the signal; the loop commits a checkpoint at the next iteration boundary and then calls
:meth:`Preemption.finish`, which ends the process with 128 + signal number (140 for SIGUSR2, 143 for SIGTERM), like
a killed process would (:data:`PREEMPTED_RC`, :data:`TERMINATED_RC`). Under Slurm the batch shell
(:mod:`easlurm.orchestrate.sbatch`) reads 140 as "checkpoint committed before the time limit" and requeues the job,
which continues from that checkpoint. Torch-free: the launcher imports the exit codes from here.
"""
from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any, Protocol

_SIGNALS = tuple(s for s in (getattr(signal, "SIGUSR2", None), signal.SIGTERM) if s is not None)

#: Exit status of a stage that committed its checkpoint after the pre-timeout warning (128 + SIGUSR2): the batch
#: script requeues the job (easlurm.orchestrate.sbatch) and the launcher resubmits it without spending a retry.
PREEMPTED_RC = 128 + 12
#: Exit status after SIGTERM (scancel, or the time limit itself) and a committed checkpoint.
TERMINATED_RC = 128 + 15


class Preempted(SystemExit):
    """Raised after the preemption checkpoint: the process exits with 128 + the signal number."""


class Preemption:
    """Context manager installing the flag-setting handlers (main thread only; a no-op elsewhere)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> Preemption:
        try:
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        except ValueError:  # not the main thread (e.g. a worker thread in tests)
            self._previous.clear()
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def finish(self) -> None:
        """Stop after the caller committed its checkpoint: restore the handlers and exit with 128 + signal."""
        assert self.signum is not None
        signum = self.signum
        self.__exit__()
        sys.stdout.flush()
        print(f"[easlurm] stopped by signal {signum} after committing a checkpoint", file=sys.stderr, flush=True)
        raise Preempted(128 + signum)


class PreemptFlag(Protocol):
    """What a training loop asks of its preemption flag: :class:`Preemption`, or a task's shared round flag
    (:class:`easlurm.engine.group.RoundPreemption`)."""

    @property
    def requested(self) -> bool: ...

    def finish(self) -> None: ...


__all__ = ["PREEMPTED_RC", "TERMINATED_RC", "Preempted", "Preemption", "PreemptFlag"]
