"""Run a snippet in a fresh interpreter and measure what it costs in memory (for the untrusted-input tests)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PRELUDE = """import sys
def _kib(key):
    with open('/proc/self/status') as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key))
def _start():
    try:
        with open('/proc/self/clear_refs', 'w') as fh:
            fh.write('5')  # reset the peak (VmHWM) to the current RSS
    except OSError:
        pass
    return _kib('VmHWM:')
def GROWTH():
    return (_kib('VmHWM:') - R0) / 1024
"""


def child(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; ``GROWTH()`` there is its peak RSS growth in MiB since ``START``."""
    full = _PRELUDE + code.replace("START", "R0 = _start()")
    return subprocess.run([sys.executable, "-c", full, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
