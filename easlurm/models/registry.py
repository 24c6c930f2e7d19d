"""Build generators and discriminators by name (the config's ``model.arch`` strings)."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError
from .discriminator import VGGStyleDiscriminator
from .rrdb import RRDBNet
from .srresnet import MSRResNet

__all__ = ["GENERATORS", "DISCRIMINATORS", "build_generator", "build_discriminator"]

GENERATORS: dict[str, Callable[..., nn.Module]] = {"msrresnet": MSRResNet, "rrdbnet": RRDBNet}
DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {"vgg_style": VGGStyleDiscriminator}


def _build(kind: str, table: dict[str, Callable[..., nn.Module]], arch: str, kwargs: dict[str, Any]) -> nn.Module:
    if arch not in table:
        raise ConfigError(f"unknown {kind} arch {arch!r}; valid: {', '.join(sorted(table))}")
    factory = table[arch]
    accepted = inspect.signature(factory).parameters
    bad = sorted(k for k in kwargs if k not in accepted)
    if bad:
        raise ConfigError(f"{kind} arch {arch!r} does not take {', '.join(bad)}; "
                          f"valid options: {', '.join(accepted)}")
    return factory(**kwargs)


def build_generator(arch: str, **kwargs: Any) -> nn.Module:
    """A generator by arch name (``msrresnet`` or ``rrdbnet``), constructor options as keyword arguments.

    Unknown arch or option → :class:`~easlurm.errors.ConfigError` listing the valid ones.
    """
    return _build("generator", GENERATORS, arch, kwargs)


def build_discriminator(arch: str = "vgg_style", **kwargs: Any) -> nn.Module:
    """A discriminator by arch name (``vgg_style``); options as keyword arguments (e.g. ``input_size=128``)."""
    return _build("discriminator", DISCRIMINATORS, arch, kwargs)
