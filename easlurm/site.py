"""Site profiles: where a run runs, kept apart from what it runs (``--site FILE`` or ``EASLURM_SITE``).

An experiment config says what to train; a site profile says where: the ``executor`` section (kind, partition,
account, QOS, how GPUs are requested, ``module load`` lines, poll interval, per-stage resources and extra sbatch
flags such as a constraint) and the ``container`` section (image, runtime binary, binds). Sharing an experiment
between clusters means sharing the config and keeping one profile per cluster, as Nextflow's ``-profile`` and
Hydra's launcher configs do. A profile holds nothing else: a ``model`` or ``adam`` key there is refused, naming it.

Precedence, lowest first: the defaults, the experiment config (which may still hold executor and container settings;
nothing it used to accept is refused), the site profile, ``--set``. What the profile set is listed with where it came
from in ``--dry-run`` and in ``RUN/run.json`` (path, sha256, and each dotted value), and the merged result is the
run's ``config.yaml``. ``configs/sites/example.yaml`` shows every field.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .store import sha256_bytes
from .yaml_input import load_yaml

#: The config sections a site profile may set.
SITE_SECTIONS = ("executor", "container")
#: Environment variable naming the site profile when ``--site`` is not given.
SITE_ENV = "EASLURM_SITE"


@dataclass(frozen=True)
class Site:
    """A read site profile: its ``path``, the ``sha256`` of its bytes and its sections as plain ``data``."""
    path: Path
    sha256: str
    data: dict[str, Any]

    def values(self) -> dict[str, Any]:
        """Dotted field → value of everything the profile sets (``executor.slurm.partition: gpu``)."""
        return dict(_flatten(self.data))

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` records of it."""
        return {"path": str(self.path), "sha256": self.sha256, "values": self.values()}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v and k != "extra":
            out += _flatten(v, key)
        else:
            out.append((key, v))
    return out


def site_path(given: str | None) -> Path | None:
    """The profile to use: ``--site`` when given, else ``$EASLURM_SITE``, else none."""
    value = given or os.environ.get(SITE_ENV)
    return Path(value) if value else None


def read_site(path: str | Path) -> Site:
    """Read and check a site profile (YAML, read by :func:`easlurm.yaml_input.load_yaml`): a mapping of
    :data:`SITE_SECTIONS` only. The values themselves are checked when the merged config is built, naming the field
    and the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"site profile {p}: cannot read it ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"site profile {p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    loaded = load_yaml(text, f"site profile {p}") or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"site profile {p}: expected a mapping of {' and '.join(SITE_SECTIONS)}, got "
                          f"{type(loaded).__name__}")
    for key, value in loaded.items():
        if key not in SITE_SECTIONS:
            close = difflib.get_close_matches(str(key), SITE_SECTIONS, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"site profile {p}: {key}: not a site setting{hint}; a site profile holds "
                              f"{' and '.join(SITE_SECTIONS)} settings only — {key} belongs in the experiment config")
        if not isinstance(value, dict):
            raise ConfigError(f"site profile {p}: {key}: expected a mapping, got {type(value).__name__}")
    return Site(p.resolve(), sha256_bytes(data), loaded)


def merge(raw: Mapping[str, Any], site: Site) -> dict[str, Any]:
    """``raw`` (an experiment config as plain data) with the profile's values on top (mappings merged key by key;
    a value — a list included — replaced)."""
    def deep(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            out[k] = deep(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
        return out

    return deep(raw, site.data)


__all__ = ["SITE_SECTIONS", "SITE_ENV", "Site", "site_path", "read_site", "merge"]
