"""YAML as configuration input: the safe loader, plus what it lets through that a config must not hold.

PyYAML's ``SafeLoader`` builds only plain data (no tags that run code), but it keeps the *last* of two equal keys —
a config with ``lr`` twice trains with whichever came second, silently — and a deeply nested document ends in
``RecursionError``. :func:`load_yaml` refuses both with the place named; non-finite numbers (``.inf``, ``.nan``) are
refused per field by :mod:`easlurm.config_build`.
"""
from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError


# libyaml's parser when PyYAML was built with it (about 20× faster on a run's config); the constructor is the same
# safe one either way.
_SafeBase: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeBase):
    """``SafeLoader`` that refuses a mapping with a repeated key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: the base constructor names it
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found the key {key!r} twice (first on line {first.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (YAML) into plain data; any problem is a :class:`ConfigError` naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where} invalid YAML ({getattr(exc, 'problem', None) or exc})") from exc
    except RecursionError as exc:
        raise ConfigError(f"{source}: invalid YAML (nested too deeply)") from exc


__all__ = ["load_yaml"]
