"""Generators out of a run, in the formats other SR tools load (``python -m easlurm.export``, ``easlurm export``).

    python -m easlurm.export RUN [--what fused|members|all] [--format basicsr] [--format safetensors] [--out DIR]

Each exported generator is written as

* ``NAME.pth`` (``--format basicsr``): ``{"params": state_dict}``, what BasicSR, Real-ESRGAN and their forks load
  (``torch.load(f)["params"]``, ``strict=True``) — easlurm's backbones use BasicSR's parameter names;
* ``NAME.safetensors`` (``--format safetensors``): the bare state dict, tensors only (no pickle at all), with the
  sidecar's fields as JSON in its one metadata entry, ``easlurm``;
* ``NAME.json``: the sidecar — backbone (``arch``, ``scale``, its options), what it is (``fused`` or the final
  ``member`` of a slot with its preference and the objectives the last EA phase measured), the source checkpoint in
  the run and its sha256, the run and easlurm's version, and the sha256 of each file written beside it.

Tools that load models through spandrel (chaiNNer, ComfyUI and others) detect an exported RRDBNet as ESRGAN from
its keys. NAME is ``fused_x4`` or ``member_02_x4``; files go to ``RUN/export/`` unless ``--out`` says otherwise,
each written atomically. The fusion stage writes the fused model's files itself (``fusion.export``), so a finished
run has them in ``RUN/fusion/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import __version__
from .config import Config, load_run_config
from .errors import CheckpointError, ConfigError, EaslurmError
from .store import RunDir, atomic_write_bytes, sha256_bytes

#: The formats :func:`encode` writes (``fusion.export`` and ``--format`` take these names).
FORMATS = ("basicsr", "safetensors")
_SUFFIX = {"basicsr": ".pth", "safetensors": ".safetensors"}

__all__ = ["FORMATS", "sidecar", "encode", "export_run", "main"]


def sidecar(cfg: Config, kind: str, source: str, source_sha256: str, **extra: Any) -> dict[str, Any]:
    """The description of one exported generator (see the module docstring)."""
    return {"format": "easlurm-export", "schema": 1, "arch": cfg.model.arch, "scale": cfg.data.scale,
            "options": dataclasses.asdict(cfg.model.options), "kind": kind, "source": source,
            "source_sha256": source_sha256, "run": cfg.run.name, "easlurm": __version__, **extra}


def encode(name: str, state: Mapping[str, Any], meta: Mapping[str, Any], formats: Sequence[str] = FORMATS
           ) -> dict[str, bytes]:
    """The files of one exported generator: ``NAME.pth``/``NAME.safetensors`` for ``formats`` and ``NAME.json``
    (``meta`` plus the sha256 of each), as bytes (the caller writes them)."""
    from .tensor_files import torch_bytes

    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ConfigError(f"export format {', '.join(unknown)}: unknown; valid: {', '.join(FORMATS)}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    out: dict[str, bytes] = {}
    for fmt in formats:
        if fmt == "basicsr":
            out[name + ".pth"] = torch_bytes({"params": tensors})
        else:
            from safetensors.torch import save

            # One metadata key: safetensors writes its metadata map in hash order, so several keys would make the
            # file's bytes (and its recorded sha256) differ between two runs of the same model.
            out[name + ".safetensors"] = save(tensors, metadata={"easlurm": json.dumps(dict(meta), sort_keys=True)})
    described = {**meta, "files": {n: sha256_bytes(data) for n, data in sorted(out.items())}}
    out[name + ".json"] = (json.dumps(described, indent=2, sort_keys=True) + "\n").encode("utf-8")
    return out


def _generators(cfg: Config, run: RunDir, what: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, state dict, sidecar) of every generator ``what`` asks for."""
    from .population import final_members, member_file
    from .stages.fuse import read_record
    from .tensor_files import load_verified

    out = []
    scale = cfg.data.scale
    if what in ("fused", "all"):
        rec = read_record(cfg, run)
        if rec is None or not rec.done:
            raise CheckpointError(f"{run.fusion}: the fusion stage has not finished (nothing fused to export yet)")
        sha = rec.files["sha256"]["fused.pt"]
        out.append((f"fused_x{scale}", load_verified(run.fusion, "fused.pt", rec.store),
                    sidecar(cfg, "fused", run.rel(run.fusion / "fused.pt"), sha,
                            experts=len(rec.experts_sha256), averaged_over=len(rec.average_ids))))
    if what in ("members", "all"):
        for folder, meta in final_members(cfg, run):
            ref = member_file(folder, meta, "G.pt")
            objectives = None
            if meta.ea_objectives is not None:
                objectives = {"l1": meta.ea_objectives[0], "perceptual": meta.ea_objectives[1],
                              "measured": "by the EA phase that wrote its start entry, on the fitness set"}
            out.append((f"member_{meta.slot:02d}_x{scale}", load_verified(folder, "G.pt", meta.store),
                        sidecar(cfg, "member", run.rel(ref.path), ref.sha256, slot=meta.slot,
                                preference=list(meta.preference), objectives=objectives)))
    return out


def export_run(run_dir: str | Path, what: str = "fused", formats: Sequence[str] = FORMATS,
               out: str | Path | None = None) -> list[Path]:
    """Export ``what`` (``fused``, ``members`` or ``all``) of a run in ``formats`` into ``out`` (default
    ``RUN/export/``); return the files written."""
    if what not in ("fused", "members", "all"):
        raise ConfigError(f"--what {what!r}: one of fused, members, all")
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    dest = Path(out) if out is not None else run.root / "export"
    written = []
    for name, state, meta in _generators(cfg, run, what):
        for fname, data in encode(name, state, meta, formats).items():
            atomic_write_bytes(dest / fname, data)
            written.append(dest / fname)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="easlurm export", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="run directory")
    ap.add_argument("--run", dest="run_flag", help=argparse.SUPPRESS)
    ap.add_argument("--what", default="fused", choices=("fused", "members", "all"))
    ap.add_argument("--format", dest="formats", action="append", choices=FORMATS,
                    help="basicsr (.pth with params) and/or safetensors (default: both)")
    ap.add_argument("--out", help="folder for the files (default: RUN/export)")
    args = ap.parse_args(argv)
    run = args.run or args.run_flag
    if not run:
        ap.error("the run directory is needed: easlurm export RUN")
    try:
        files = export_run(run, args.what, args.formats or FORMATS, args.out)
    except EaslurmError as exc:
        print(f"easlurm export: error: {exc}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
