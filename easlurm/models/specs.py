"""The backbone registry: one :class:`GeneratorSpec` per generator, torch-free.

A spec is everything the rest of easlurm knows about a backbone: its options (a dataclass whose fields are the
``model.<option>`` config keys, with their defaults and ranges), the network class that builds it (imported only
when a network is built), how the upscaling factor is passed, which factors it supports, the multiple its LR input
sides must be (inference pads to it), the options the preflight and the tests shrink it to, the key renames that
let checkpoints of other code bases load, and which tensors the EA evolves. Config validation, :mod:`easlurm.factory`,
``upscale --arch``, :mod:`easlurm.inference`, the EA, the bill and the preflight ask the spec; none of them names a
backbone.

Adding a backbone: its network module in :mod:`easlurm.models`, and one entry in :data:`GENERATORS` (its options
dataclass and spec) — or :func:`register_generator` from code that extends easlurm (the tests do).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from ..errors import ConfigError
from ..fields import setting

if TYPE_CHECKING:
    from torch import nn


def _any_side(scale: int) -> int:
    return 1


@dataclass(frozen=True)
class GeneratorSpec:
    """One backbone (see the module docstring). Networks map NCHW RGB in [0, 1] to NCHW RGB ×scale (unclamped)."""

    name: str
    """``model.arch`` (and ``upscale --arch``)."""
    summary: str
    network: str
    """``module:Class`` of the network; its constructor takes the options' fields and ``scale_arg``."""
    options: type
    """Dataclass of the backbone's options: the ``model.<field>`` config keys."""
    scale_arg: str = "scale"
    scales: tuple[int, ...] = (2, 3, 4)
    input_multiple: Callable[[int], int] = _any_side
    """scale → the multiple the LR input's height and width must be (inference mirror-pads to it); see
    :meth:`side_multiple` for the whole rule."""
    option_multiple: str | None = None
    """An option the LR sides must be a multiple of too (SwinIR: ``window_size``); the network keeps that option as
    an attribute of the same name, so inference can read it off a built model."""
    tiny: Mapping[str, Any] = field(default_factory=dict)
    """Options for the preflight and the tests (a few features, one block)."""
    renames: tuple[tuple[str, str], ...] = ()
    """(regex, replacement) on state-dict keys of checkpoints from other code bases (applied in order)."""
    ea_genes: Literal["float_tensors", "layer_weights"] = "float_tensors"
    """Which state-dict entries the EA's SBX and mutation touch (:mod:`easlurm.evo.genes`): ``float_tensors`` —
    SBX crosses every floating-point entry, mutation the ``ndim >= 2`` ones not named ``*bias`` (MSRResNet,
    RRDBNet: their conv weights and biases); ``layer_weights`` — both touch only the weights of convs and linear
    layers, everything else stays as the parent's, and registered buffers are kept out of the genome (SwinIR)."""

    def default_options(self) -> Any:
        return self.options()

    def side_multiple(self, scale: int, options: Any = None) -> int:
        """The multiple the LR input's sides must be for ``options`` (None: the defaults) at ``scale``:
        :attr:`input_multiple` and, with :attr:`option_multiple`, that option's value (their least common
        multiple). Config validation checks training patches and fitness tiles against it."""
        m = self.input_multiple(scale)
        if self.option_multiple is not None:
            m = math.lcm(m, int(getattr(self.default_options() if options is None else options,
                                        self.option_multiple)))
        return m

    def model_multiple(self, model: Any, scale: int) -> int:
        """:meth:`side_multiple` read off a built network (inference, the tiled upscaler)."""
        m = self.input_multiple(scale)
        if self.option_multiple is not None:
            m = math.lcm(m, int(getattr(model, self.option_multiple)))
        return m

    def kwargs(self, options: Any, scale: int) -> dict[str, Any]:
        """The network constructor's arguments for ``options`` (an instance of :attr:`options`) at ``scale``."""
        if not isinstance(options, self.options):
            raise ConfigError(f"model.arch {self.name}: options of type {type(options).__name__}, expected "
                              f"{self.options.__name__}")
        if scale not in self.scales:
            raise ConfigError(f"data.scale: {self.name} supports ×{', ×'.join(map(str, self.scales))}, got ×{scale}")
        check = getattr(options, "check", None)
        if callable(check):  # options that depend on each other (a dataclass field checks only itself)
            check()
        return {**dataclasses.asdict(options), self.scale_arg: scale}  # type: ignore[call-overload]

    def network_class(self) -> type[nn.Module]:
        module, _, name = self.network.partition(":")
        cls: type[nn.Module] = getattr(importlib.import_module(module), name)
        return cls

    def build(self, options: Any, scale: int) -> nn.Module:
        """The network (imports torch)."""
        return self.network_class()(**self.kwargs(options, scale))


@dataclass
class MSRResNetOptions:
    """BasicSR's MSRResNet: ``num_block`` residual blocks of ``num_feat`` channels, no batch norm."""
    num_feat: int = setting(64, min=1, doc="features per conv")
    num_block: int = setting(16, min=1, doc="residual blocks")


@dataclass
class RRDBNetOptions:
    """ESRGAN's RRDBNet: ``num_block`` residual-in-residual dense blocks."""
    num_feat: int = setting(64, min=1, doc="features per conv")
    num_block: int = setting(23, min=1, doc="RRDB blocks")
    num_grow_ch: int = setting(32, min=1, doc="growth channels of the dense blocks")


@dataclass
class SwinIROptions:
    """SwinIR with the lightweight head (``pixelshuffledirect``); the defaults are SwinIR-light, the paper's SwinIR
    (the public ``002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4`` checkpoint's layout)."""
    img_size: int = setting(64, min=1, doc="LR side the stored attention masks are built for (SwinIR-light: 64)")
    embed_dim: int = setting(60, min=1, doc="token width")
    depths: list[int] = setting(factory=lambda: [6, 6, 6, 6], doc="Swin blocks per residual group")
    num_heads: list[int] = setting(factory=lambda: [6, 6, 6, 6], doc="attention heads per residual group")
    window_size: int = setting(8, min=1, doc="attention window side (LR sides are padded to a multiple of it)")
    mlp_ratio: float = setting(2.0, min=0, min_exclusive=True, doc="MLP hidden width / token width")
    img_range: float = setting(1.0, min=0, min_exclusive=True, doc="pixel range inside the network (1 or 255)")
    drop_path_rate: float = setting(0.1, min=0, max=0.99, doc="stochastic depth at the last block (training only)")

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Options that depend on each other; :class:`ConfigError` naming the field."""
        for name in ("depths", "num_heads"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ConfigError(f"model.{name}: expected a non-empty list of positive integers, got {values}")
        if len(self.depths) != len(self.num_heads):
            raise ConfigError(f"model.num_heads: {self.num_heads} has {len(self.num_heads)} entries, model.depths "
                              f"{self.depths} has {len(self.depths)} (one per residual group)")
        bad = [h for h in self.num_heads if self.embed_dim % h]
        if bad:
            raise ConfigError(f"model.num_heads: model.embed_dim {self.embed_dim} is not divisible by {bad[0]} heads")


#: The generators, by ``model.arch``.
GENERATORS: dict[str, GeneratorSpec] = {
    "msrresnet": GeneratorSpec(
        "msrresnet", "modified SRResNet (BasicSR MSRResNet; the paper's SRResNet)",
        "easlurm.models.srresnet:MSRResNet", MSRResNetOptions, scale_arg="upscale", scales=(2, 3, 4),
        tiny={"num_feat": 8, "num_block": 1}),
    "rrdbnet": GeneratorSpec(
        "rrdbnet", "ESRGAN's RRDBNet (the paper's RRDB)",
        "easlurm.models.rrdb:RRDBNet", RRDBNetOptions, scales=(1, 2, 4),
        input_multiple=lambda scale: {4: 1, 2: 2, 1: 4}[scale],
        tiny={"num_feat": 8, "num_block": 1, "num_grow_ch": 4},
        # The original ESRGAN repository's names (RRDB_ESRGAN_x4.pth and its PSNR model) → BasicSR's.
        renames=((r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2."), (r"^trunk_conv\.", "conv_body."),
                 (r"^upconv1\.", "conv_up1."), (r"^upconv2\.", "conv_up2."), (r"^HRconv\.", "conv_hr."))),
    "swinir": GeneratorSpec(
        "swinir", "SwinIR-light (SwinIR with the pixelshuffledirect head; the paper's SwinIR)",
        "easlurm.models.swinir:SwinIR", SwinIROptions, scale_arg="upscale", scales=(2, 3, 4),
        option_multiple="window_size", ea_genes="layer_weights",
        tiny={"img_size": 8, "embed_dim": 12, "depths": [2, 2], "num_heads": [2, 2], "window_size": 4}),
}

#: Discriminators by ``discriminator.arch``: ``module:Class`` (constructor: ``num_feat``, ``input_size``).
DISCRIMINATORS: dict[str, str] = {"vgg_style": "easlurm.models.discriminator:VGGStyleDiscriminator"}


def generator_spec(arch: str, field_name: str = "model.arch") -> GeneratorSpec:
    """The spec of ``arch``; :class:`ConfigError` naming ``field_name``, the known ones and a suggestion."""
    spec = GENERATORS.get(arch)
    if spec is None:
        close = difflib.get_close_matches(str(arch), list(GENERATORS), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{field_name}: unknown backbone {arch!r}{hint}; valid: {', '.join(sorted(GENERATORS))}")
    return spec


def spec_of(model: Any) -> GeneratorSpec | None:
    """The spec whose network class ``model`` is an instance of (None for a network no spec builds)."""
    for spec in GENERATORS.values():
        module, _, name = spec.network.partition(":")
        if type(model).__module__ == module and type(model).__qualname__ == name:
            return spec
    return None


def register_generator(spec: GeneratorSpec) -> None:
    """Add a backbone (code that extends easlurm; the tests)."""
    if spec.name in GENERATORS:
        raise ConfigError(f"backbone {spec.name!r} is registered already")
    if not dataclasses.is_dataclass(spec.options):
        raise ConfigError(f"backbone {spec.name!r}: options must be a dataclass")
    GENERATORS[spec.name] = spec


def unregister_generator(name: str) -> None:
    GENERATORS.pop(name, None)


def build_generator(arch: str, scale: int = 4, **options: Any) -> nn.Module:
    """A generator by arch name with options as keywords (others at their defaults); an unknown arch or option is
    a :class:`ConfigError` listing the valid ones."""
    spec = generator_spec(arch, "arch")
    names = [f.name for f in dataclasses.fields(spec.options)]
    bad = sorted(k for k in options if k not in names)
    if bad:
        raise ConfigError(f"{arch} takes no option {', '.join(bad)}; its options: {', '.join(names)}")
    return spec.build(spec.options(**options), scale)


def build_discriminator(arch: str = "vgg_style", **kwargs: Any) -> nn.Module:
    """A discriminator by arch name (``vgg_style``), constructor options as keywords (e.g. ``input_size=128``)."""
    if arch not in DISCRIMINATORS:
        raise ConfigError(f"unknown discriminator arch {arch!r}; valid: {', '.join(sorted(DISCRIMINATORS))}")
    module, _, name = DISCRIMINATORS[arch].partition(":")
    cls = getattr(importlib.import_module(module), name)
    net: nn.Module = cls(**kwargs)
    return net


__all__ = ["GeneratorSpec", "MSRResNetOptions", "RRDBNetOptions", "SwinIROptions", "GENERATORS", "DISCRIMINATORS",
           "generator_spec", "spec_of", "register_generator", "unregister_generator", "build_generator",
           "build_discriminator"]
