"""Plain data (YAML, ``--set`` values) ↔ the typed config dataclasses of :mod:`easlurm.config_schema`.

:func:`build` checks every value against its field's annotation and range and names the dotted field in its error;
an unknown key is refused with a "did you mean" suggestion (or, for a key of an earlier version, what replaces
it). A section may hold one *inline* field whose entries are written flat beside the section's own keys: the
backbone's options under ``model`` (``model.num_feat``, checked against the options of ``model.arch``,
:mod:`easlurm.models.specs`) and the stage kinds' resources under ``executor.slurm`` (``executor.slurm.adam``, one
per registered kind, :mod:`easlurm.stages`). :func:`to_dict` writes them flat again; :func:`get_field` and
:func:`set_field` reach any dotted field through them.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
from typing import Any, Literal, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

from .config_checks import check_text, shown
from .config_schema import Config, ModelConfig
from .errors import ConfigError
from .models.specs import generator_spec
from .stages import default_resources, names as stage_names
from .stages.kind import StageResources

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


def suggest(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widened to float where a float is expected)."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: must be one of {', '.join(map(repr, choices))}, got {value!r}"
                              f"{suggest(str(value), [str(c) for c in choices])}")
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
        return build(tp, value, path)
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
        if not math.isfinite(value):
            raise ConfigError(f"{path}: must be a finite number, got {value}")
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


#: Keys of earlier versions → what replaces them (named in the error instead of a spelling suggestion).
_REPLACED = {
    "population.freeze_first": "population.member0 (frozen | ea_only | trained)",
    "data.val_images": "fusion.average_images (the attention is averaged over training images)",
    "eval.lpips": "eval.metrics (a list, e.g. [psnr, ssim, lpips, dists])",
}


#: Options every backbone's section held before each backbone had its own (a run directory of easlurm 0.1 wrote
#: them for MSRResNet too, at these defaults): read as absent where the backbone has no such option.
_LEGACY_OPTIONS: dict[str, Any] = {"num_grow_ch": 32}


def inline_field(cls: Any) -> dataclasses.Field[Any] | None:
    """The field of ``cls`` whose entries are written flat in the section (``model.num_feat`` for the backbone's
    options, ``executor.slurm.adam`` for a stage kind's resources), if any."""
    return next((f for f in dataclasses.fields(cls) if f.metadata.get("inline")), None)


def _where(prefix: str, key: str) -> str:
    return f"{prefix}.{shown(str(key))}" if prefix else shown(str(key))


def _build_inline(how: str, data: Mapping[str, Any], extra: Mapping[str, Any], prefix: str, others: list[str]) -> Any:
    """The value of an inline field from the section's ``extra`` keys (those that are not its own fields)."""
    if how == "options":
        arch = data.get("arch", dataclasses.MISSING)
        spec = generator_spec(ModelConfig.arch if arch is dataclasses.MISSING else arch, _where(prefix, "arch"))
        names = [f.name for f in dataclasses.fields(spec.options)]
        extra = {k: v for k, v in extra.items() if k in names or _LEGACY_OPTIONS.get(k, ...) != v}
        for key in extra:
            if key not in names:
                raise ConfigError(f"{_where(prefix, key)}: unknown key{suggest(str(key), names + others)} "
                                  f"({spec.name} options: {', '.join(names)})")
        return build(spec.options, extra, prefix)
    kinds = stage_names()
    out = default_resources()
    for key, value in extra.items():
        if key not in kinds:
            raise ConfigError(f"{_where(prefix, key)}: unknown key{suggest(str(key), kinds + others)} (stage "
                              f"kinds: {', '.join(kinds)})")
        # A section names what differs from the kind's own defaults (init asks for no GPU unless told to).
        given = {**dataclasses.asdict(out[key]), **value} if isinstance(value, Mapping) else value
        out[key] = _coerce(given, StageResources, f"{prefix}.{key}")
    return out


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """An instance of the dataclass ``cls`` from ``data`` (see the module docstring); ``prefix``: the dotted
    path of the section, for errors."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    inline = inline_field(cls)
    extra: dict[str, Any] = {}
    for key in data:
        if key not in fields or (inline is not None and key == inline.name):
            where = _where(prefix, key)
            if where in _REPLACED:
                raise ConfigError(f"{where}: no longer a setting; use {_REPLACED[where]}")
            if inline is None:
                raise ConfigError(f"{where}: unknown key{suggest(str(key), list(fields))}")
            extra[key] = data[key]
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if inline is not None and name == inline.name:
            continue
        if name in data:
            value = _coerce(data[name], hints[name], path)
            _check_range(value, f.metadata, path)
            kwargs[name] = value
    if inline is not None:
        others = [n for n in fields if n != inline.name]
        kwargs[inline.name] = _build_inline(inline.metadata["inline"], data, extra, prefix, others)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (every default filled in; inline fields written flat, as in YAML)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("inline"):
            out.update(to_dict(value) if dataclasses.is_dataclass(value) else {k: _plain(v) for k, v in value.items()})
        else:
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _resolve(cfg: Any, dotted: str) -> tuple[Any, str]:
    """The object holding the last part of ``dotted`` and that part, through inline fields."""
    *parents, last = dotted.split(".")
    obj = cfg
    for part in parents:
        obj = _child(obj, part)
    if not hasattr(obj, last) or last in {f.name for f in dataclasses.fields(obj) if f.metadata.get("inline")}:
        inline = inline_field(type(obj)) if dataclasses.is_dataclass(obj) else None
        if inline is not None:
            holder = getattr(obj, inline.name)
            if isinstance(holder, dict):
                raise ConfigError(f"{dotted}: a whole section; set its fields")
            obj = holder
    if not dataclasses.is_dataclass(obj) or last not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"{dotted}: no such config field")
    return obj, last


def _child(obj: Any, part: str) -> Any:
    if dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}:
        return getattr(obj, part)
    inline = inline_field(type(obj)) if dataclasses.is_dataclass(obj) else None
    if inline is not None:
        holder = getattr(obj, inline.name)
        if isinstance(holder, dict) and part in holder:
            return holder[part]
        if dataclasses.is_dataclass(holder) and part in {f.name for f in dataclasses.fields(holder)}:
            return getattr(holder, part)
    raise ConfigError(f"{part}: no such config section")


def backbone_options(arch: str, values: Mapping[str, Any], prefix: str = "model") -> Any:
    """The options of backbone ``arch`` from ``values`` (option → value; the others at their defaults), checked as
    the config checks ``model.<option>`` (the error names ``prefix.<option>``)."""
    return _build_inline("options", {"arch": arch}, values, prefix, ["arch"])


def get_field(cfg: Config, dotted: str) -> Any:
    """The value of a dotted config field (``adam.lr``, ``model.num_feat``, ``executor.slurm.adam.time_min``)."""
    obj, last = _resolve(cfg, dotted)
    return getattr(obj, last)


def set_field(cfg: Config, dotted: str, value: Any) -> None:
    """Set a dotted config field in place (no validation: call :func:`validate` after a batch of changes)."""
    obj, last = _resolve(cfg, dotted)
    setattr(obj, last, value)


__all__ = ["build", "inline_field", "suggest", "to_dict", "get_field", "set_field", "backbone_options"]
