"""Typed run configuration: YAML → frozen-shape dataclasses, validated eagerly.

One :class:`Config` describes a whole EA-Adam run (DESIGN.md §2): data, networks, losses, the population, the Adam
and EA phases, fusion, evaluation, the executor and the container. Loading rules:

* YAML is read with a ``yaml.SafeLoader`` that also refuses repeated keys (:mod:`easlurm.yaml_input`).
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
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence, get_type_hints

import yaml

from .config_build import (  # noqa: F401  (re-exported)
    backbone_options, build, get_field, inline_field, set_field, suggest, to_dict,
)
from .config_checks import check_command_values, check_text, forbidden_char, shown
from .config_schema import (  # noqa: F401  (re-exported: import the sections from easlurm.config)
    EvalMetric, Config, RunConfig, DataConfig, ModelConfig, DiscriminatorConfig, PerceptualConfig,
    LossConfig, PopulationConfig, AdamConfig, PretrainConfig, EAConfig, FusionConfig,
    EvalConfig, SlurmConfig, LocalConfig, ExecutorConfig, ContainerConfig,
)
from .errors import ConfigError
from .site import Site, merge as merge_site
from .models.specs import generator_spec
from .stages import get as get_kind, names as stage_names
from .stages.kind import StageResources
from .yaml_input import load_yaml

# ----------------------------------------------------------------------------------------------------------------
# Cross-field validation


def validate(cfg: Config) -> Config:
    """Checks that involve more than one field; each error names the fields."""
    for kind, res in cfg.executor.slurm.stages.items():
        used = get_kind(kind).gpus_used
        if res.gpus > used:
            what = "uses no GPU" if used == 0 else f"uses {used} GPU{'s' if used > 1 else ''} per task"
            raise ConfigError(f"executor.slurm.{kind}.gpus: {res.gpus} requested, but the {kind} stage {what}; the "
                              f"rest would sit idle in the allocation (set it to {used})")
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
    spec = generator_spec(cfg.model.arch)
    if cfg.data.scale not in spec.scales:
        raise ConfigError(f"data.scale: {spec.name} upscales ×{', ×'.join(map(str, spec.scales))}, not "
                          f"×{cfg.data.scale}")
    m = spec.side_multiple(cfg.data.scale, cfg.model.options)
    for name in ("patch_size", "fitness_tile"):
        lr_side = getattr(cfg.data, name) // cfg.data.scale
        if lr_side % m:
            raise ConfigError(f"data.{name}: {getattr(cfg.data, name)} px gives LR patches of {lr_side} px, but "
                              f"{spec.name} at ×{cfg.data.scale} takes LR sides that are multiples of {m}")
    sha = cfg.model.pretrained_sha256
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ConfigError(f"model.pretrained_sha256: expected 64 lower-case hex digits (sha256sum's output), got "
                          f"{sha!r}")
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
                              f"{suggest(layer, sorted(valid_layers))}")
        if w < 0:
            raise ConfigError(f"loss.perceptual.layers.{layer}: weight must be >= 0, got {w}")
    if any(m < 1 for m in cfg.fusion.milestones) or cfg.fusion.milestones != sorted(set(cfg.fusion.milestones)):
        raise ConfigError(f"fusion.milestones: expected increasing positive iterations, got {cfg.fusion.milestones}")
    if not cfg.eval.metrics:
        raise ConfigError("eval.metrics: at least one metric is needed, e.g. [psnr, ssim, lpips, dists]")
    for name, values in (("eval.metrics", cfg.eval.metrics), ("fusion.export", cfg.fusion.export)):
        repeated = sorted({m for m in values if list(values).count(m) > 1})
        if repeated:
            raise ConfigError(f"{name}: {', '.join(repeated)} listed more than once")
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
    value = load_yaml(raw, f"--set {key}") if raw.strip() else ""
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
            inline = inline_field(cls)
            if part in names and (inline is None or part != inline.name):
                nxt = get_type_hints(cls)[part]
                cls = nxt if dataclasses.is_dataclass(nxt) else None
            elif inline is not None and inline.metadata["inline"] == "resources" and part in stage_names():
                cls = StageResources
            elif inline is not None and inline.metadata["inline"] == "options":
                cls = None  # a backbone option: checked once every override is in (model.arch may come later)
            else:
                extra = stage_names() if inline is not None else []
                raise ConfigError(f"--set {path}: unknown key{suggest(part, names + extra)}")
        if depth == len(parts) - 1:
            node[part] = value
        else:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {path} is not a section")
            node = child


def _check_option_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> None:
    """``--set model.<option>`` names an option of the backbone the config ends up with."""
    own = {f.name for f in dataclasses.fields(ModelConfig)}
    model: Mapping[str, Any] = raw["model"] if isinstance(raw.get("model"), dict) else {}
    for text in overrides:
        parts, _ = parse_override(text)
        if len(parts) == 2 and parts[0] == "model" and parts[1] not in own:
            spec = generator_spec(model.get("arch", ModelConfig.arch), "model.arch")
            options = [f.name for f in dataclasses.fields(spec.options)]
            if parts[1] not in options:
                raise ConfigError(f"--set model.{parts[1]}: unknown key{suggest(parts[1], sorted(own) + options)} "
                                  f"({spec.name} options: {', '.join(options)})")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), site: Site | None = None) -> Config:
    """Load, override and validate a config.

    ``path`` is a YAML file (``None`` → all defaults); ``site``: a site profile (:mod:`easlurm.site`) whose
    executor and container settings go on top of it; ``overrides`` are ``a.b=value`` strings applied last, in order.
    Raises :class:`ConfigError` naming the file (or the profile), the dotted key or the field.
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
        loaded = load_yaml(text, str(p))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    if site is not None:
        try:
            build(Config, site.data)  # its own values first, so an error names the profile
        except ConfigError as exc:
            raise ConfigError(f"site profile {site.path}: {exc}") from None
        raw = merge_site(raw, site)
    for text in overrides:
        parts, value = parse_override(text)
        _apply_override(raw, parts, value)
    _check_option_overrides(raw, overrides)
    try:
        return validate(build(Config, raw))
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a config from plain data (e.g. a run directory's resolved ``config.yaml``)."""
    return validate(build(Config, data))


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
    """The config a run directory was created with (``RUN/config.yaml``, written in full by the launcher: an empty
    one is damage, not "all defaults")."""
    path = Path(run_dir) / "config.yaml"
    try:
        empty = path.is_file() and not path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        empty = False  # load_config names the problem
    if empty:
        raise ConfigError(f"{path}: empty — a run's config.yaml holds its whole resolved config")
    return load_config(path)


__all__ = [
    "Config", "RunConfig", "DataConfig", "ModelConfig", "DiscriminatorConfig", "PerceptualConfig", "LossConfig",
    "PopulationConfig", "AdamConfig", "PretrainConfig", "EAConfig", "FusionConfig", "EvalConfig",
    "SlurmConfig", "LocalConfig", "ExecutorConfig", "ContainerConfig",
    "load_config", "config_from_dict", "dump_config", "write_config", "load_run_config", "parse_override",
    "to_dict", "validate", "get_field", "set_field", "backbone_options",
]
