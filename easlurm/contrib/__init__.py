"""Optional bridges to other tools (each needs its own extra, e.g. ``pip install easlurm[submitit]``)."""
from __future__ import annotations
