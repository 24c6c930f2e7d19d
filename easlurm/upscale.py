"""Super-resolve a folder of images with one generator: ``python -m easlurm.upscale``.

Usage::

    # architecture from a run's config (its model.* and data.scale):
    python -m easlurm.upscale --model RUN/fusion/fused.pt --config RUN/config.yaml --input LR_DIR --output SR_DIR
    # or from explicit flags:
    python -m easlurm.upscale --model G.pt --arch msrresnet --num-feat 64 --num-block 16 --scale 4 \\
        --input LR_DIR --output SR_DIR [--tile 128] [--overlap 16] [--device cuda]

``--model`` is a plain backbone state dict — a run's ``fusion/fused.pt``, a member's ``G.pt`` — or a BasicSR
checkpoint (``params_ema`` / ``params``), read with ``torch.load(weights_only=True)`` and loaded strictly (a key or
shape mismatch with the chosen architecture is an error naming the file). The architecture comes from exactly one
of ``--config`` (a config YAML, e.g. ``RUN/config.yaml``, or a run directory holding one) or ``--arch`` with
``--scale`` (default 4) and the backbone's options as flags, ``--num-feat 64`` for ``num_feat`` (each backbone's
options and defaults are its spec's, :mod:`easlurm.models.specs`; ``--help`` lists them).

Every image of ``--input`` (file suffixes of :data:`easlurm.data.images.IMAGE_SUFFIXES`, sorted by name, read as
8-bit RGB by :func:`easlurm.data.images.read_rgb`) is upscaled ×scale and written to ``--output/<stem>.png`` (uint8
RGB, BasicSR rounding), each file atomically (temp file + fsync + rename), so an interrupted run leaves only
complete PNGs. Inference is :func:`easlurm.inference.super_resolve` (this module is only its command line): LR
sides a backbone cannot take (RRDBNet ×2 needs multiples of 2) are mirror-padded at the bottom/right and the output
cropped back; ``--tile N`` runs the network on N×N LR tiles with ``--overlap`` LR pixels of discarded
context, bounding memory on large images. Two inputs with the same stem, or an output folder equal to the input
folder, are refused before anything is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from torch import nn

from .errors import ConfigError, DataError, EaslurmError

__all__ = ["build_model", "upscale_folder", "main"]


def build_model(model_path: str | Path, *, config: str | Path | None = None, arch: str | None = None,
                options: Mapping[str, Any] | None = None, scale: int = 4) -> tuple[nn.Module, int]:
    """The generator with the weights of ``model_path`` loaded strictly, in eval mode, and its scale.

    Exactly one of ``config`` (a config YAML or a run directory holding ``config.yaml``) and ``arch`` (a backbone of
    :mod:`easlurm.models.specs`, with ``options`` — its options as ``name → value``, the rest at the backbone's
    defaults — and ``scale``) must be given. Raises :class:`ConfigError` for bad architecture settings and
    :class:`CheckpointError` naming the model file.
    """
    from .models.checkpoint_io import load_generator_weights

    if (config is None) == (arch is None):
        raise ConfigError("give the architecture with exactly one of --config RUN/config.yaml or --arch NAME")
    if config is not None:
        from . import factory
        from .config import load_config

        cfg_path = Path(config)
        if cfg_path.is_dir():
            cfg_path = cfg_path / "config.yaml"
        cfg = load_config(cfg_path)
        model, s = factory.build_generator(cfg), cfg.data.scale
    else:
        from .config import backbone_options
        from .models.specs import generator_spec

        assert arch is not None
        spec = generator_spec(arch, "--arch")
        model, s = spec.build(backbone_options(arch, options or {}, prefix="-"), scale), scale
    load_generator_weights(model, model_path)
    return model.eval(), s


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def upscale_folder(model: nn.Module, input_dir: str | Path, output_dir: str | Path, scale: int,
                   tile: int | None = None, overlap: int = 16, device: str = "cpu",
                   log: TextIO | None = None) -> list[Path]:
    """Upscale every image of ``input_dir`` (sorted) into ``output_dir/<stem>.png``; return the written paths.

    Images are uint8 HWC RGB in and out; the model maps NCHW RGB in [0, 1] to ×``scale``. ``log`` is an optional
    text stream for one progress line per image.
    """
    from .data.images import list_images, read_rgb
    from .inference import super_resolve
    from .store import atomic_write_bytes

    src, dst = Path(input_dir), Path(output_dir)
    files = list_images(src)
    if dst.exists() and dst.resolve() == src.resolve():
        raise DataError(f"--output {dst}: is the input folder; choose another folder so no input is overwritten")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise DataError(f"{f}: same stem as {stems[f.stem].name}; both would be written to {f.stem}.png")
        stems[f.stem] = f
    written = []
    for f in files:
        t0 = time.perf_counter()
        lr = read_rgb(f)
        sr = super_resolve(model, lr, scale, tile, overlap, device)
        out = dst / f"{f.stem}.png"
        atomic_write_bytes(out, _png_bytes(sr))
        written.append(out)
        if log is not None:
            print(f"{f.name}: {lr.shape[1]}x{lr.shape[0]} -> {sr.shape[1]}x{sr.shape[0]} {out} "
                  f"({time.perf_counter() - t0:.2f} s)", file=log)
    return written


def _parser() -> argparse.ArgumentParser:
    from .models.specs import GENERATORS

    flags = "; ".join(f"{name}: " + " ".join(f"--{f.name.replace('_', '-')} {f.default}"
                                             for f in dataclasses.fields(spec.options))
                      for name, spec in sorted(GENERATORS.items()))
    ap = argparse.ArgumentParser(prog="python -m easlurm.upscale",
                                 description="Super-resolve every image of a folder with one generator.",
                                 epilog=f"Architecture: --config RUN/config.yaml, or --arch NAME and --scale with the "
                                        f"backbone's options as flags (defaults shown): {flags}.")
    ap.add_argument("--model", required=True, help="generator weights: fused.pt, a member's G.pt, or BasicSR .pth")
    ap.add_argument("--input", required=True, help="folder of LR images (png, jpg, bmp, tif, webp)")
    ap.add_argument("--output", required=True, help="folder for the SR PNGs (created; same file stems)")
    ap.add_argument("--config", default=None, help="a run's config.yaml (or the run directory) for the architecture")
    ap.add_argument("--arch", default=None, choices=sorted(GENERATORS), help="backbone, instead of --config")
    ap.add_argument("--scale", type=int, default=4, help="upscaling factor (with --arch; default 4)")
    ap.add_argument("--tile", type=int, default=None, help="LR tile size in px (default: whole image)")
    ap.add_argument("--overlap", type=int, default=16, help="LR px of context around each tile (default 16)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return ap


def _options(ap: argparse.ArgumentParser, words: list[str]) -> dict[str, Any]:
    """``--num-feat 8 --num-block=1`` → ``{"num_feat": 8, "num_block": 1}`` (values parsed as YAML scalars; which
    names exist is the backbone's to say)."""
    import yaml

    out: dict[str, Any] = {}
    it = iter(words)
    for word in it:
        if not word.startswith("--") or len(word) < 3:
            ap.error(f"unrecognized argument: {word}")
        name, eq, value = word[2:].partition("=")
        if not eq:
            value = next(it, None)  # type: ignore[assignment]
            if value is None:
                ap.error(f"--{name}: expected a value")
        out[name.replace("-", "_")] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; exit 2 with one ``easlurm.upscale: error: …`` line on a bad input."""
    ap = _parser()
    args, rest = ap.parse_known_args(argv)
    if args.config is not None and args.arch is not None:
        ap.error("--config and --arch are mutually exclusive")
    if args.config is None and args.arch is None:
        from .models.specs import GENERATORS

        ap.error(f"the architecture is needed: --config RUN/config.yaml or --arch {'|'.join(sorted(GENERATORS))}")
    options = _options(ap, rest)
    if options and args.config is not None:
        ap.error(f"--{next(iter(options)).replace('_', '-')}: backbone options go with --arch, not --config")
    try:
        from .runtime import pick_device

        model, scale = build_model(args.model, config=args.config, arch=args.arch, options=options,
                                   scale=args.scale)
        written = upscale_folder(model, args.input, args.output, scale, tile=args.tile, overlap=args.overlap,
                                 device=str(pick_device(args.device)), log=sys.stdout)
    except EaslurmError as exc:
        print("easlurm.upscale: error: " + str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    print(f"wrote {len(written)} image(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
