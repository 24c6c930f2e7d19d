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
``--num-feat`` (default 64), ``--num-block`` (default 16 for msrresnet, 23 for rrdbnet), ``--num-grow-ch``
(rrdbnet, default 32) and ``--scale`` (default 4).

Every image of ``--input`` (file suffixes of :data:`easlurm.data.images.IMAGE_SUFFIXES`, sorted by name, read as
8-bit RGB by :func:`easlurm.data.images.read_rgb`) is upscaled ×scale and written to ``--output/<stem>.png`` (uint8
RGB, BasicSR rounding), each file atomically (temp file + fsync + rename), so an interrupted run leaves only
complete PNGs. Inference is :func:`easlurm.inference.super_resolve` (this module is only its command line):
RRDBNet at ×2 (×1) needs LR sides that are multiples of 2 (4), so other sizes are mirror-padded at the bottom/right
and the output cropped back; ``--tile N`` runs the network on N×N LR tiles with ``--overlap`` LR pixels of discarded
context, bounding memory on large images. Two inputs with the same stem, or an output folder equal to the input
folder, are refused before anything is written.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
from torch import nn

from .errors import ConfigError, DataError, EaslurmError

__all__ = ["DEFAULT_BLOCKS", "build_model", "upscale_folder", "main"]

DEFAULT_BLOCKS = {"msrresnet": 16, "rrdbnet": 23}


def build_model(model_path: str | Path, *, config: str | Path | None = None, arch: str | None = None,
                num_feat: int = 64, num_block: int | None = None, num_grow_ch: int = 32,
                scale: int = 4) -> tuple[nn.Module, int]:
    """The generator with the weights of ``model_path`` loaded strictly, in eval mode, and its scale.

    Exactly one of ``config`` (a config YAML or a run directory holding ``config.yaml``) and ``arch`` must be given.
    Raises :class:`ConfigError` for bad architecture settings and :class:`CheckpointError` naming the model file.
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
        from .models.registry import GENERATORS, build_generator

        if arch not in GENERATORS:
            raise ConfigError(f"--arch {arch!r}: unknown backbone; valid: {', '.join(sorted(GENERATORS))}")
        blocks = DEFAULT_BLOCKS[arch] if num_block is None else num_block
        for name, value in (("--num-feat", num_feat), ("--num-block", blocks), ("--num-grow-ch", num_grow_ch),
                            ("--scale", scale)):
            if value < 1:
                raise ConfigError(f"{name}: must be >= 1, got {value}")
        kwargs: dict[str, int] = {"num_feat": num_feat, "num_block": blocks}
        if arch == "msrresnet":
            kwargs["upscale"] = scale
        else:
            kwargs.update(num_grow_ch=num_grow_ch, scale=scale)
        model, s = build_generator(arch, **kwargs), scale
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
    ap = argparse.ArgumentParser(prog="python -m easlurm.upscale",
                                 description="Super-resolve every image of a folder with one generator.",
                                 epilog="Architecture: --config RUN/config.yaml, or --arch with --num-feat/"
                                        "--num-block/--num-grow-ch/--scale.")
    ap.add_argument("--model", required=True, help="generator weights: fused.pt, a member's G.pt, or BasicSR .pth")
    ap.add_argument("--input", required=True, help="folder of LR images (png, jpg, bmp, tif, webp)")
    ap.add_argument("--output", required=True, help="folder for the SR PNGs (created; same file stems)")
    ap.add_argument("--config", default=None, help="a run's config.yaml (or the run directory) for the architecture")
    ap.add_argument("--arch", default=None, choices=sorted(DEFAULT_BLOCKS), help="backbone, instead of --config")
    ap.add_argument("--num-feat", type=int, default=64, help="features per conv (with --arch; default 64)")
    ap.add_argument("--num-block", type=int, default=None,
                    help="residual blocks (with --arch; default 16 msrresnet, 23 rrdbnet)")
    ap.add_argument("--num-grow-ch", type=int, default=32, help="RRDB growth channels (with --arch rrdbnet)")
    ap.add_argument("--scale", type=int, default=4, help="upscaling factor (with --arch; default 4)")
    ap.add_argument("--tile", type=int, default=None, help="LR tile size in px (default: whole image)")
    ap.add_argument("--overlap", type=int, default=16, help="LR px of context around each tile (default 16)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; exit 2 with one ``easlurm.upscale: error: …`` line on a bad input."""
    ap = _parser()
    args = ap.parse_args(argv)
    if args.config is not None and args.arch is not None:
        ap.error("--config and --arch are mutually exclusive")
    if args.config is None and args.arch is None:
        ap.error("the architecture is needed: --config RUN/config.yaml or --arch msrresnet|rrdbnet")
    try:
        from .runtime import pick_device

        model, scale = build_model(args.model, config=args.config, arch=args.arch, num_feat=args.num_feat,
                                   num_block=args.num_block, num_grow_ch=args.num_grow_ch, scale=args.scale)
        written = upscale_folder(model, args.input, args.output, scale, tile=args.tile, overlap=args.overlap,
                                 device=str(pick_device(args.device)), log=sys.stdout)
    except EaslurmError as exc:
        print("easlurm.upscale: error: " + str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    print(f"wrote {len(written)} image(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
