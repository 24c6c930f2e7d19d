"""Typed run configuration: YAML → frozen-shape dataclasses, validated eagerly.

One :class:`Config` describes a whole EA-Adam run (DESIGN.md §2): data, networks, losses, the population, the Adam
and EA phases, fusion, evaluation, the executor and the container. Loading rules:

* YAML is read with ``yaml.safe_load`` only.
* Unknown keys are rejected with their dotted path and a "did you mean" suggestion.
* Every value is type-checked and range-checked; the error names the dotted field (``adam.lr: must be > 0, got -1``).
* ``--set a.b=value`` overrides are parsed as YAML scalars/flow values (never ``eval``) and go through the same checks.
* Config values are data: a control character (newline, CR, NUL, tab, any C0/C1 control, U+2028/U+2029) in any
  string value or mapping key is refused, naming the field; values that reach ``#SBATCH`` lines and ``apptainer
  --bind`` obey the narrower rules of :mod:`easlurm.config_checks`.

The resolved config (every default filled in) is written to ``RUN/config.yaml`` so a run directory is
self-describing and every job of the run reads the same settings.
"""
from __future__ import annotations

import dataclasses
import difflib
import shlex
import sys
import types
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from .config_checks import check_command_values, check_text, forbidden_char, shown
from .errors import ConfigError
from .config_schema import (  # noqa: F401  (re-exported: import the sections from easlurm.config)
    EvalMetric, Config, RunConfig, DataConfig, ModelConfig, DiscriminatorConfig, PerceptualConfig,
    LossConfig, PopulationConfig, AdamConfig, PretrainConfig, EAConfig, FusionConfig,
    EvalConfig, StageResources, SlurmConfig, LocalConfig, ExecutorConfig, ContainerConfig,
)

# ----------------------------------------------------------------------------------------------------------------
# Building dataclasses from plain data


_NoneType = type(None)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    if tp is _NoneType:
        return "null"
    return getattr(tp, "__name__", str(tp))


def _suggest(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widened to float where a float is expected)."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: must be one of {', '.join(map(repr, choices))}, got {value!r}"
                              f"{_suggest(str(value), [str(c) for c in choices])}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if _NoneType in args:
                return None
            raise ConfigError(f"{path}: must not be null (expected {_type_name(tp)})")
        non_null = [arg for arg in args if arg is not _NoneType]
        if len(non_null) == 1:  # ``X | None``: X's own error says what is wrong (e.g. a control character)
            return _coerce(value, non_null[0], path)
        errors = []
        for arg in args:
            if arg is _NoneType:
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return _build(tp, value, path)
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str):
                check_text(k, f"{path} key {shown(k)}")
            out[_coerce(k, key_tp, f"{path}.<key>")] = _coerce(v, val_tp, f"{path}.{k}")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        check_text(value, path)
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {path}")  # a bug in this module, not user input


def _check_range(value: Any, meta: Mapping[str, Any], path: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None:
        if meta.get("min_exclusive") and not value > lo:
            raise ConfigError(f"{path}: must be > {lo}, got {value}")
        if not meta.get("min_exclusive") and value < lo:
            raise ConfigError(f"{path}: must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{path}: must be <= {hi}, got {value}")
    if isinstance(value, float) and value != value:
        raise ConfigError(f"{path}: must not be NaN")


#: Keys of earlier versions → what replaces them (named in the error instead of a spelling suggestion).
_REPLACED = {
    "population.freeze_first": "population.member0 (frozen | ea_only | trained)",
    "data.val_images": "fusion.average_images (the attention is averaged over training images)",
    "eval.lpips": "eval.metrics (a list, e.g. [psnr, ssim, lpips, dists])",
}


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{prefix}.{shown(str(key))}" if prefix else shown(str(key))
            if where in _REPLACED:
                raise ConfigError(f"{where}: no longer a setting; use {_REPLACED[where]}")
            raise ConfigError(f"{where}: unknown key{_suggest(str(key), list(fields))}")
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if name in data:
            value = _coerce(data[name], hints[name], path)
            _check_range(value, f.metadata, path)
            kwargs[name] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (every default filled in)."""
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------------------------------------------
# Cross-field validation


def validate(cfg: Config) -> Config:
    """Checks that involve more than one field; each error names the fields."""
    for kind in ("pretrain", "init", "adam", "ea", "fuse", "eval"):
        res = getattr(cfg.executor.slurm, kind)
        if res.signal_lead_s is not None and res.signal_lead_s >= res.time_min * 60:
            raise ConfigError(f"executor.slurm.{kind}.signal_lead_s: {res.signal_lead_s} s is not shorter than "
                              f"its time limit (time_min {res.time_min})")
    for name in ("discriminator.betas", "adam.betas", "pretrain.betas", "fusion.betas"):
        section, key = name.split(".")
        betas = getattr(getattr(cfg, section), key)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"{name}: expected two numbers in [0, 1), got {betas}")
    if cfg.data.patch_size % cfg.data.scale:
        raise ConfigError(f"data.patch_size: {cfg.data.patch_size} is not a multiple of data.scale={cfg.data.scale}")
    if cfg.data.patch_size % 32:
        raise ConfigError(f"data.patch_size: the VGG-style discriminator needs a multiple of 32, "
                          f"got {cfg.data.patch_size}")
    if cfg.data.fitness_tile % cfg.data.scale:
        raise ConfigError(f"data.fitness_tile: {cfg.data.fitness_tile} is not a multiple of data.scale")
    if not cfg.data.demo and cfg.data.train is None:
        raise ConfigError("data.train: no training shards given (set data.train or data.demo: true)")
    if cfg.ea.neighbourhood > cfg.population.size:
        raise ConfigError(f"ea.neighbourhood: {cfg.ea.neighbourhood} exceeds population.size={cfg.population.size}")
    if not cfg.loss.perceptual.layers:
        raise ConfigError("loss.perceptual.layers: at least one VGG layer is needed")
    valid_layers = {f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for i in range(1, n + 1)}
    for layer, w in cfg.loss.perceptual.layers.items():
        if layer not in valid_layers:
            raise ConfigError(f"loss.perceptual.layers.{layer}: unknown VGG layer"
                              f"{_suggest(layer, sorted(valid_layers))}")
        if w < 0:
            raise ConfigError(f"loss.perceptual.layers.{layer}: weight must be >= 0, got {w}")
    if any(m < 1 for m in cfg.fusion.milestones) or cfg.fusion.milestones != sorted(set(cfg.fusion.milestones)):
        raise ConfigError(f"fusion.milestones: expected increasing positive iterations, got {cfg.fusion.milestones}")
    if not cfg.eval.metrics:
        raise ConfigError("eval.metrics: at least one metric is needed, e.g. [psnr, ssim, lpips, dists]")
    repeated = sorted({m for m in cfg.eval.metrics if cfg.eval.metrics.count(m) > 1})
    if repeated:
        raise ConfigError(f"eval.metrics: {', '.join(repeated)} listed more than once")
    n = cfg.population.size
    if not -n <= cfg.fusion.discriminator_from < n:
        raise ConfigError(f"fusion.discriminator_from: {cfg.fusion.discriminator_from} is not a member index "
                          f"for population.size={n}")
    check_command_values(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# Overrides and loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a","b","c"], value); the value is parsed as one YAML flow value."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set adam.lr=2e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    # Checked before YAML parsing: a plain scalar would silently fold a raw newline into a space.
    check_text(key, f"--set {shown(key)}")
    check_text(raw, f"--set {key}")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} ({exc.__class__.__name__})") from exc
    # YAML 1.1 reads "1e-4" as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return key.split("."), value


def _apply_override(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    cls: Any = Config
    node = raw
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        if cls is not None and dataclasses.is_dataclass(cls):
            names = [f.name for f in dataclasses.fields(cls)]
            if part not in names:
                raise ConfigError(f"--set {path}: unknown key{_suggest(part, names)}")
            nxt = get_type_hints(cls)[part]
            cls = nxt if dataclasses.is_dataclass(nxt) else None
        if depth == len(parts) - 1:
            node[part] = value
        else:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {path} is not a section")
            node = child


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load, override and validate a config.

    ``path`` is a YAML file (``None`` → all defaults). ``overrides`` are ``a.b=value`` strings applied in order.
    Raises :class:`ConfigError` naming the file, the dotted key or the field.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"{p}: config file not found") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read config ({exc})") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{p}:{where} invalid YAML ({getattr(exc, 'problem', None) or exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    for text in overrides:
        parts, value = parse_override(text)
        _apply_override(raw, parts, value)
    try:
        cfg = _build(Config, raw)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise
    return validate(cfg)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a config from plain data (e.g. a run directory's resolved ``config.yaml``)."""
    return validate(_build(Config, data))


def dump_config(cfg: Config, *, argv: Sequence[str] | None = None, version: str | None = None) -> str:
    """The resolved config as YAML text, with the command line and easlurm version as a header comment."""
    from . import __version__

    header = [f"# easlurm {version or __version__} resolved config"]
    if argv is not None:
        header.append("# command: " + _one_line(" ".join(shlex.quote(a) for a in argv)))
    body = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body


def _one_line(text: str) -> str:
    """``text`` with control characters written as escapes, so it cannot end a YAML comment line."""
    while (bad := forbidden_char(text)) is not None:
        i, ch = bad
        text = text[:i] + ch.encode("unicode_escape").decode("ascii") + text[i + 1:]
    return text


def write_config(cfg: Config, run_dir: str | Path, argv: Sequence[str] | None = None) -> Path:
    """Write the resolved config to ``RUN/config.yaml`` atomically and return its path."""
    from .store import atomic_write_text

    dest = Path(run_dir) / "config.yaml"
    atomic_write_text(dest, dump_config(cfg, argv=list(argv) if argv is not None else list(sys.argv)))
    return dest


def load_run_config(run_dir: str | Path) -> Config:
    """The config a run directory was created with (``RUN/config.yaml``)."""
    return load_config(Path(run_dir) / "config.yaml")


__all__ = [
    "Config", "RunConfig", "DataConfig", "ModelConfig", "DiscriminatorConfig", "PerceptualConfig", "LossConfig",
    "PopulationConfig", "AdamConfig", "PretrainConfig", "EAConfig", "FusionConfig", "EvalConfig",
    "StageResources", "SlurmConfig", "LocalConfig", "ExecutorConfig", "ContainerConfig",
    "load_config", "config_from_dict", "dump_config", "write_config", "load_run_config", "parse_override",
    "to_dict", "validate",
]
