"""The one seam between easlurm and Apptainer: how a command line is wrapped to run inside the image.

``container.image`` set → every job runs ::

    bash -c '<forward the job variables>' easlurm-apptainer \\
        apptainer exec --cleanenv --env PYTHONNOUSERSITE=1 [--nv] --bind <run dir> --bind <data dirs> … IMAGE cmd

* ``--cleanenv``: nothing from the host environment reaches the job (``PYTHONPATH``, ``LD_PRELOAD``, module-system
  variables, …) except what is forwarded below; the image's ``%environment`` (``EASLURM_CACHE``, ``TORCH_HOME``,
  ``HDF5_USE_FILE_LOCKING``) applies.
* ``PYTHONNOUSERSITE=1``: Apptainer still binds ``$HOME``, so without it ``~/.local/lib/python3.11/site-packages``
  would come before the image's packages and a ``pip install --user torch`` on the host would replace the pinned one.
* The host variables a job needs are forwarded by name at run time (the values exist only on the compute node):
  every ``SLURM_*``, ``SLURMD_*`` (the job's environment, array ids, the lease's job id), ``EASLURM_*`` except
  ``EASLURM_CACHE`` (the image's converted
  weights live at the image's own cache), and :data:`FORWARD_NAMES` (GPU assignment by Slurm or the local
  executor, thread caps, HDF5 locking). They are passed as ``APPTAINERENV_<NAME>`` (``SINGULARITYENV_`` for a
  ``singularity`` binary), which Apptainer forwards even with ``--cleanenv``; ``--env NAME=VALUE`` is not used for
  them because Apptainer splits its value on commas (``CUDA_VISIBLE_DEVICES=0,1``, ``SLURM_JOB_NODELIST=n[1,3]``).
  ``APPTAINERENV_X`` variables already set on the host pass through too: that is how to add anything else.

``jobs/common.sh`` does the same for the plain sbatch scripts (the test suite checks both forward the same set).
No Apptainer runtime is needed to build these command lines, so they are tested directly; the image itself is built
from ``containers/easlurm.def``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import Config
from ..config_checks import check_bind_path
from ..errors import ConfigError

#: Prefixes of host variables forwarded into the container.
FORWARD_PREFIXES: tuple[str, ...] = ("SLURM_", "SLURMD_", "EASLURM_")
#: Single host variables forwarded into the container (when set).
FORWARD_NAMES: tuple[str, ...] = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                  "HDF5_USE_FILE_LOCKING")
#: Never forwarded although a prefix matches: the image sets them.
NOT_FORWARDED: tuple[str, ...] = ("EASLURM_CACHE",)


def env_prefix(binary: str) -> str:
    """``APPTAINERENV_``, or ``SINGULARITYENV_`` when the runtime is SingularityCE's ``singularity``."""
    return "SINGULARITYENV_" if Path(binary).name.startswith("singularity") else "APPTAINERENV_"


def forward_script(prefix: str) -> str:
    """The bash program that exports ``<prefix><NAME>`` for every forwarded variable, then execs its arguments."""
    names = " ".join([*(f"${{!{p}@}}" for p in FORWARD_PREFIXES), *FORWARD_NAMES])
    return (f"for v in {names}; do case $v in {'|'.join(NOT_FORWARDED)}) continue;; esac; "
            f'if [[ -v $v ]]; then export "{prefix}$v=${{!v}}"; fi; done; exec "$@"')


def bind_paths(cfg: Config, run_root: Path) -> list[str]:
    """Folders a job must see inside the container: the run dir, the data, weight and evaluation folders, extra
    binds (``container.binds`` entries may be ``src:dest[:opts]``)."""
    fields: list[tuple[str, str]] = [("the run directory", str(run_root))]
    for name, p in (("data.train", cfg.data.train), ("data.val", cfg.data.val), ("data.fitness", cfg.data.fitness),
                    ("model.pretrained", cfg.model.pretrained),
                    ("loss.perceptual.weights_path", cfg.loss.perceptual.weights_path),
                    ("fusion.average_set", cfg.fusion.average_set),
                    *((f"eval.sets.{k}", v) for k, v in cfg.eval.sets.items())):
        if p:
            folder = Path(p).resolve()
            fields.append((name, str(folder if folder.is_dir() or not folder.suffix else folder.parent)))
    if cfg.data.demo:
        fields.append(("data.demo_dir", str(Path(cfg.data.demo_dir).resolve())))
    for name, p in fields:
        check_bind_path(p, name)
    paths = [p for _, p in fields]
    for i, p in enumerate(cfg.container.binds):
        check_bind_path(p, f"container.binds[{i}]", allow_dest=True)
        paths.append(str(Path(p).resolve()) if ":" not in p else p)
    out: list[str] = []
    for p in paths:  # de-duplicate, keep order, drop folders already under a bound one
        if p not in out and not any(p.startswith(q.rstrip("/") + "/") for q in out if ":" not in q):
            out.append(p)
    return out


def container_prefix(cfg: Config, run_root: Path) -> list[str]:
    """``[]`` without an image, else the words (forwarding shim, ``apptainer exec …``) that precede the command."""
    image = cfg.container.image
    if not image:
        return []
    if not image.endswith(".sif") and "://" not in image:
        raise ConfigError(f"container.image: expected a .sif file (or a URI), got {image!r}")
    binary = cfg.container.binary
    words = ["bash", "-c", forward_script(env_prefix(binary)), "easlurm-apptainer",
             binary, "exec", "--cleanenv", "--env", "PYTHONNOUSERSITE=1"]
    if cfg.container.nv:
        words.append("--nv")
    for p in bind_paths(cfg, run_root):
        words += ["--bind", p]
    words.append(image)
    return words


def wrap(cfg: Config, run_root: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` as it runs for this config: inside the container when one is configured."""
    return [*container_prefix(cfg, run_root), *argv]
