"""Exception types shared by every easlurm module.

Each error names its culprit (a file, a config field, a member) in its message, so a failed job's log says what to
fix without a traceback hunt.
"""
from __future__ import annotations


class EaslurmError(ValueError):
    """Base class of every error easlurm raises on purpose (bad input, bad config, failed verification)."""


class ConfigError(EaslurmError):
    """A config file, key or value is wrong; the message names the dotted field path."""


class DataError(EaslurmError):
    """An input image, folder or shard is unusable; the message names the file."""


class CheckpointError(EaslurmError):
    """A checkpoint is missing, corrupt or fails its checksum; the message names the file."""


class TrainingError(EaslurmError):
    """Training cannot continue (e.g. a NaN/Inf loss); the message names member, iteration and loss term."""
