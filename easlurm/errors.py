"""Exception types shared by every easlurm module.

Each error names its culprit (a file, a config field, a member) in its message, so a failed job's log says what to
fix without a traceback hunt.
"""
from __future__ import annotations

import contextlib
from typing import Iterator


class EaslurmError(ValueError):
    """Base class of every error easlurm raises on purpose (bad input, bad config, failed verification).

    ``permanent``: the same task would fail the same way if it ran again (a missing or corrupt input, a bad
    config), so the launcher records it and does not retry; other errors (a lost lease, a NaN on a flaky card)
    may pass on a retry.
    """

    permanent = False


class ConfigError(EaslurmError):
    """A config file, key or value is wrong; the message names the dotted field path."""

    permanent = True


class DataError(EaslurmError):
    """An input image, folder or shard is unusable; the message names the file."""

    permanent = True


class CheckpointError(EaslurmError):
    """A checkpoint is missing, corrupt or fails its checksum; the message names the file."""

    permanent = True


class TrainingError(EaslurmError):
    """Training cannot continue (e.g. a NaN/Inf loss); the message names member, iteration and loss term."""


@contextlib.contextmanager
def record_shape(path: object) -> Iterator[None]:
    """Read a record inside this block: a value of the wrong shape (a string where an object was written, a list
    too short, a key missing) becomes one :class:`CheckpointError` naming ``path`` instead of a traceback.
    easlurm's own errors pass through unchanged."""
    try:
        yield
    except EaslurmError:
        raise
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid record ({type(exc).__name__}: {str(exc)[:120]})") from exc
