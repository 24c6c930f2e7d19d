"""``RUN/run.json``: how a run was launched (one owner) — its executor, its config's identity, and every launch's
command and version.

The first launch names the run's executor; ``--resume`` uses it unless told otherwise, and ``status`` and the bill
read it to price GPU-hours the way the run really ran. It also records the sha256 and owner of ``config.yaml``: a
config is code (it names the container binary and sbatch options that run as the owner), so ``--resume`` refuses a
``config.yaml`` that changed or belongs to someone else unless told ``--accept-config-change`` (recorded with who
and when), and every task refuses to start from a config other than the recorded one. Torch-free.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

from . import __version__
from .errors import CheckpointError, ConfigError, DataError
from .store import RunDir, atomic_write_json, read_json, sha256_file

#: The executors a run may be launched with.
EXECUTORS = ("slurm", "local", "debug")


def read(run: RunDir) -> dict[str, Any]:
    """The record (``{"executor", "launches": [...]}``); empty for a run never launched or an unreadable record."""
    try:
        rec = read_json(run.record) if run.record.is_file() else {}
    except CheckpointError:
        return {}
    return rec if isinstance(rec, dict) else {}


def record_launch(run: RunDir, executor: str, argv: Sequence[str], site: dict[str, Any] | None = None) -> None:
    """Append this launch (executor, command, version, time, and the site profile it used: path, sha256 and each
    value it set); the first names the run's executor."""
    rec = read(run)
    rec.setdefault("executor", executor)
    entry: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "executor": executor,
                             "command": list(argv), "version": __version__}
    if site is not None:
        entry["site"] = site
    rec.setdefault("launches", []).append(entry)
    atomic_write_json(run.record, rec)


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def config_identity(run: RunDir) -> dict[str, Any]:
    """``config.yaml`` as it is now: its sha256 and the uid and name of its owner."""
    uid = os.stat(run.config, follow_symlinks=False).st_uid
    return {"sha256": sha256_file(run.config), "uid": uid, "owner": _user(uid)}


def record_config(run: RunDir) -> None:
    """Record the identity of a new run's ``config.yaml`` (the launcher, right after writing it)."""
    rec = read(run)
    rec["config"] = config_identity(run)
    atomic_write_json(run.record, rec)


def check_config(run: RunDir, accept_change: bool = False, write: bool = True) -> str | None:
    """Before ``--resume``: refuse (:class:`ConfigError`) a ``config.yaml`` whose sha256 differs from the recorded
    one or that is not owned by this user, unless ``accept_change`` — then record the change (who, when, old and
    new sha256) and return a note saying so. A run launched before configs were recorded gets its record now.
    ``write=False`` (a dry run): check only."""
    now = config_identity(run)
    rec = read(run)
    known = rec.get("config") if isinstance(rec.get("config"), dict) else None
    problems = []
    if known is not None and known.get("sha256") != now["sha256"]:
        was = str(known.get("sha256"))[:12]
        problems.append(f"it changed since it was recorded in {run.record.name} (sha256 {was}… → "
                        f"{now['sha256'][:12]}…)")
    if now["uid"] != os.getuid():
        problems.append(f"it belongs to {now['owner']} (uid {now['uid']}), not to you")
    if problems and not accept_change:
        raise ConfigError(f"{run.config}: {' and '.join(problems)}; a config is code (container.binary, sbatch "
                          f"options), so it is not used — check it and resume with --accept-config-change to adopt it")
    if (known is not None and not problems) or not write:
        return None
    if problems:
        me = os.getuid()
        rec.setdefault("config_changes", []).append({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "by": _user(me), "uid": me,
            "from": None if known is None else known.get("sha256"), "to": now["sha256"], "owner": now["owner"]})
    rec["config"] = now
    atomic_write_json(run.record, rec)
    return f"note: config.yaml accepted as it is now ({'; '.join(problems)})" if problems else None


def verify_config(run: RunDir) -> None:
    """In a task: :class:`ConfigError` when ``config.yaml`` is not the one the launcher recorded (no record, as in
    a run directory made by hand: nothing to check)."""
    known = read(run).get("config")
    if not isinstance(known, dict) or "sha256" not in known:
        return
    if sha256_file(run.config) != known["sha256"]:
        raise ConfigError(f"{run.config}: not the config recorded in {run.record} (changed after launch); a task "
                          f"never runs from an unrecorded config — relaunch with --resume to review the change")


def record_inputs(run: RunDir, digests: dict[str, dict[str, str]]) -> None:
    """Record the shard folders the run reads with their manifests' sha256 (:func:`easlurm.inputs.shard_digests`)."""
    rec = read(run)
    rec["inputs"] = digests
    atomic_write_json(run.record, rec)


def recorded_inputs(run: RunDir) -> dict[str, dict[str, str]]:
    """The shard folders recorded at launch (``{field: {"path", "manifest_sha256"}}``); {} for a run that has none."""
    got = read(run).get("inputs")
    if not isinstance(got, dict):
        return {}
    return {k: v for k, v in got.items() if isinstance(v, dict) and isinstance(v.get("path"), str)
            and isinstance(v.get("manifest_sha256"), str)}


def verify_inputs(run: RunDir) -> None:
    """In a task (and on ``--resume``): :class:`~easlurm.errors.DataError` naming the folder when a recorded shard
    folder's ``manifest.json`` is missing or changed since launch — a run never mixes two versions of its data."""
    from .data.shards import check_manifest

    for field, entry in sorted(recorded_inputs(run).items()):
        try:
            check_manifest(entry["path"], entry["manifest_sha256"])
        except DataError as exc:
            raise DataError(f"{field}: {exc} (recorded in {run.record} at launch)") from None


def recorded_executor(run: RunDir) -> str | None:
    """The executor a run was launched with, or None for a run that was never launched."""
    kind = read(run).get("executor")
    return kind if kind in EXECUTORS else None


__all__ = ["EXECUTORS", "read", "record_launch", "config_identity", "record_config", "check_config",
           "verify_config", "record_inputs", "recorded_inputs", "verify_inputs", "recorded_executor"]
