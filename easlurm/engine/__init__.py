"""The engine every resumable stage runs on: one loop, one shell around it, one way to restore what it saved.

- :mod:`easlurm.engine.preempt` — the pre-timeout warning and SIGTERM become "commit, then exit 140/143" (torch-free:
  the launcher reads the exit codes from there).
- :mod:`easlurm.engine.loop` — :func:`~easlurm.engine.loop.run_loop` and the :class:`~easlurm.engine.loop.Trainee`
  protocol: cadence, finiteness, preemption, exact resume.
- :mod:`easlurm.engine.context` — :func:`~easlurm.engine.context.stage_context` (preemption, the folder's lease,
  the device, the attempt log, the TensorBoard writer), :func:`~easlurm.engine.context.train` (the loop with the
  stage's record committed at every checkpoint) and :func:`~easlurm.engine.context.resume` (the mirror of a
  checkpoint: the trainee's files and the RNG states).
- :mod:`easlurm.engine.data` — training batches by global sample index.

Member Adam phases, pretraining and fusion are each a :class:`~easlurm.engine.loop.Trainee` and a record; the EA
phase and evaluation use the context. This package file imports nothing.
"""
from __future__ import annotations
