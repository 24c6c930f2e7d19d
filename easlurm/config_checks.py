"""Rules for config strings that end up in sbatch scripts, Apptainer command lines and shells.

Config values are data. They reach places where a line break is syntax: an ``#SBATCH`` comment line, the shell
body of the batch script, an ``apptainer exec`` command line, the YAML header of ``RUN/config.yaml``. So every
string value (and every mapping key, at any depth) is refused at load when it holds a control character: C0
(U+0000–U+001F, which includes newline, CR, tab and NUL), DEL, C1 (U+0080–U+009F, which includes NEL U+0085), or
the Unicode line/paragraph separators U+2028/U+2029. The error names the dotted field.

On top of that, ``executor.slurm.<stage>.extra`` keys must be sbatch long-option names (``constraint``,
``mail-type``), never an option easlurm sets itself
(:data:`SBATCH_SET_BY_EASLURM`, or an abbreviation of one: sbatch accepts unique prefixes), and values written to
``#SBATCH`` lines must not hold a backslash (sbatch's directive parser treats it as an escape even inside quotes,
so the value would silently change).
"""
from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

_LINE_SEPARATORS = frozenset("\u2028\u2029")
# Control characters have no Unicode name; these are the ones people meet.
_CONTROL_NAMES = {"\0": "NUL", "\t": "TAB", "\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\x1b": "ESCAPE",
                  "\x7f": "DELETE", "\x85": "NEXT LINE"}


def forbidden_char(text: str) -> tuple[int, str] | None:
    """``(index, char)`` of the first control or line-separator character in ``text``, or None."""
    for i, ch in enumerate(text):
        if ch in _LINE_SEPARATORS or unicodedata.category(ch) == "Cc":
            return i, ch
    return None


def shown(text: str) -> str:
    """``text`` for an error message: as is when it is printable, else its repr (so the message stays one line)."""
    return repr(text) if forbidden_char(text) is not None else text


def check_text(value: str, path: str) -> None:
    """Refuse a string holding a control character; the error names ``path`` (a dotted field) and the character."""
    bad = forbidden_char(value)
    if bad is not None:
        i, ch = bad
        name = _CONTROL_NAMES.get(ch) or unicodedata.name(ch, "control character")
        raise ConfigError(f"{path}: control character U+{ord(ch):04X} ({name}) at position {i} of {value!r}; "
                          f"config values must be plain text (they are written into sbatch scripts and command "
                          f"lines, where a line break would start a new command)")


#: sbatch options that easlurm writes into every job script, with the config field that controls each instead.
SBATCH_SET_BY_EASLURM: dict[str, str] = {
    "job-name": "run.name (jobs are named easlurm-<run.name>-<stage>)",
    "time": "executor.slurm.<stage>.time_min",
    "partition": "executor.slurm.partition",
    "account": "executor.slurm.account",
    "qos": "executor.slurm.qos",
    "cpus-per-task": "executor.slurm.<stage>.cpus",
    "mem": "executor.slurm.<stage>.mem_gb",
    "mem-per-cpu": "executor.slurm.<stage>.mem_gb",
    "mem-per-gpu": "executor.slurm.<stage>.mem_gb",
    "gpus-per-node": "executor.slurm.<stage>.gpus and executor.slurm.gpu_request",
    "gres": "executor.slurm.<stage>.gpus and executor.slurm.gpu_request (--gres=gpu:N by default)",
    "requeue": "nothing: easlurm's jobs are requeueable (they continue from their checkpoint)",
    "no-requeue": "nothing: easlurm's jobs are requeueable (they continue from their checkpoint)",
    "array": "population.size and executor.slurm.array_parallelism (easlurm sizes the member array)",
    "dependency": "executor.window (the launcher chains the stages itself)",
    "kill-on-invalid-dep": "executor.window (the launcher chains the stages itself)",
    "output": "nothing: logs go to RUN/slurm/<stage>/, set by easlurm",
    "error": "nothing: logs go to RUN/slurm/<stage>/, set by easlurm",
    "open-mode": "nothing: logs are appended across requeues, set by easlurm",
    "signal": "nothing: the checkpoint-before-timeout warning is set by easlurm",
    "comment": "nothing: easlurm names each submission with its comment (to find it after a lost sbatch answer)",
    "gpus": "executor.slurm.<stage>.gpus and executor.slurm.gpu_request",
    "nodes": "nothing: every task is one process on one node",
    "ntasks": "nothing: every task is one process on one node",
    "ntasks-per-node": "nothing: every task is one process on one node",
    "wrap": "nothing: easlurm writes the batch script",
}

# Real sbatch options that are also prefixes of a reserved name (an exact match wins over abbreviation in getopt).
_EXACT_OPTIONS_THAT_ARE_PREFIXES: frozenset[str] = frozenset()

_OPTION_NAME = re.compile(r"[a-z][a-z0-9-]*")


def check_sbatch_value(value: str, path: str) -> None:
    """A value written to an ``#SBATCH`` line: plain text (checked at load) without backslashes."""
    check_text(value, path)
    if "\\" in value:
        raise ConfigError(f"{path}: {value!r} contains a backslash, which sbatch's #SBATCH parser drops as an "
                          f"escape character (the job would get a different value)")


def check_extra_key(key: str, path: str) -> None:
    """An ``executor.slurm.<stage>.extra`` key: an sbatch long option easlurm does not set itself."""
    check_text(key, f"{path} key {key!r}")
    if not _OPTION_NAME.fullmatch(key):
        raise ConfigError(f"{path}: key {key!r} is not an sbatch long option name (lower-case letters, digits and "
                          f"'-', written without the leading '--' and without '=VALUE', e.g. constraint: a100)")
    canon = key
    if canon in SBATCH_SET_BY_EASLURM:
        raise ConfigError(f"{path}: key {key!r}: easlurm sets --{canon} itself; use "
                          f"{SBATCH_SET_BY_EASLURM[canon]} instead")
    if canon not in _EXACT_OPTIONS_THAT_ARE_PREFIXES:
        for name in sorted(SBATCH_SET_BY_EASLURM):
            if name.startswith(canon):
                raise ConfigError(f"{path}: key {key!r} is an abbreviation of --{name}, which easlurm sets itself; "
                                  f"use {SBATCH_SET_BY_EASLURM[name]} instead")


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MODULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+/@-]*")


def check_run_name(name: str, path: str = "run.name") -> None:
    """``run.name`` becomes a folder name and part of every job name: letters, digits, ``.``, ``_``, ``-``."""
    check_text(name, path)
    if not _RUN_NAME.fullmatch(name):
        raise ConfigError(f"{path}: {name!r} must start with a letter or digit and hold only letters, digits, "
                          f"'.', '_' and '-' (it names the run folder and every Slurm job)")


def check_bind_path(path_value: str, field: str, *, allow_dest: bool = False) -> None:
    """A path Apptainer binds: ``--bind`` splits its argument on ',' (and on ':' into src:dest[:opts])."""
    bad = "," if allow_dest else ",:"
    for ch in bad:
        if ch in path_value:
            what = "src[:dest[:opts]] entries" if allow_dest else "paths"
            raise ConfigError(f"{field}: {path_value!r} contains {ch!r}, which apptainer --bind cannot express in "
                              f"{what}; move or symlink the folder to a path without it")


def check_command_values(cfg: Config) -> None:
    """Values of ``cfg`` that are written into sbatch scripts and apptainer command lines.

    Control characters in any string were already refused while the config was built (:func:`check_text`).
    """
    check_run_name(cfg.run.name)
    slurm = cfg.executor.slurm
    for key in ("partition", "account", "qos"):
        value = getattr(slurm, key)
        if value is not None:
            check_sbatch_value(value, f"executor.slurm.{key}")
    for i, module in enumerate(slurm.modules):
        if not _MODULE_NAME.fullmatch(module):
            raise ConfigError(f"executor.slurm.modules[{i}]: {module!r} is not a module name (letters, digits and "
                              f"'._+/@-', e.g. cuda/12.4); each becomes one `module load` line of the job script")
    for kind, resources in slurm.stages.items():
        path = f"executor.slurm.{kind}.extra"
        for key, value in resources.extra.items():
            check_extra_key(key, path)
            check_sbatch_value(value, f"{path}.{key}")
    if cfg.container.image:
        bound = {"run.root": cfg.run.root, "data.train": cfg.data.train, "data.val": cfg.data.val,
                 "data.fitness": cfg.data.fitness, "model.pretrained": cfg.model.pretrained,
                 "loss.perceptual.weights_path": cfg.loss.perceptual.weights_path,
                 "fusion.average_set": cfg.fusion.average_set}
        if cfg.data.demo:
            bound["data.demo_dir"] = cfg.data.demo_dir
        bound.update({f"eval.sets.{name}": folder for name, folder in cfg.eval.sets.items()})
        for name, value in bound.items():
            if value:
                check_bind_path(value, name)
        for i, entry in enumerate(cfg.container.binds):
            check_bind_path(entry, f"container.binds[{i}]", allow_dest=True)


__all__ = ["SBATCH_SET_BY_EASLURM", "check_bind_path", "check_command_values", "check_extra_key", "check_run_name",
           "check_sbatch_value", "check_text", "forbidden_char", "shown"]
