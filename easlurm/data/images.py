"""Reading training/evaluation images from folders, with one explicit policy for every odd pixel format.

:func:`read_rgb` returns uint8 HWC RGB (values 0–255) or raises :class:`~easlurm.errors.DataError` naming the file.
Policy, per Pillow mode of the decoded file:

* ``RGB`` — used as is. ``RGBX`` — padding byte dropped. ``YCbCr`` (some TIFFs) — converted to RGB.
* ``L`` (8-bit grayscale) and ``1`` (bilevel) — **converted** to RGB by repeating the channel, so grayscale
  photos can join a colour dataset; ``P`` (palette) — expanded to RGB.
* Alpha (``RGBA``, ``LA``, ``PA``, palette or colour-key transparency): a **fully opaque** alpha is dropped;
  any pixel with alpha < 255 is **refused** (there is no right background colour to composite onto).
* More than 8 bits per channel is **refused**: ``I;16*``, ``I``, ``F`` modes, 16-bit PNGs (Pillow would
  silently truncate 16-bit RGB PNGs to 8 bits, so the PNG header is checked) and 16-bit TIFFs. Convert them to
  8-bit yourself so the quantisation is your decision.
* ``CMYK`` and other colour spaces (``LAB``, ``HSV``) are refused: converting them needs a colour profile.
* Animated / multi-frame files are refused (which frame would be meant is unclear).
* Corrupt, truncated or non-image files are refused.
* An image of more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`, Pillow's own limit) is refused
  from its header, before anything is decoded; Pillow's ``DecompressionBombWarning`` is an error too (Pillow itself
  only warns between 1× and 2× its limit: a 481 KiB PNG of 169 MP decoded to 483 MiB).
* Only the decoders in :data:`FORMATS` (PNG, JPEG, BMP, TIFF, WebP) are ever tried, whatever the file's name: a
  file in another format (GIF, EPS, PDF, …) is refused without running its Pillow plugin, so an EPS file named
  ``.png`` never starts Ghostscript.

EXIF orientation tags are ignored: pixels are used as stored, so an HR image and its LR partner stay aligned.
:func:`list_images` lists a flat folder's images (suffixes in :data:`IMAGE_SUFFIXES`, case-insensitive), sorted.
Messages show file names with :func:`shown`, so a name that is not valid UTF-8 is printed, never a crash.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

__all__ = ["IMAGE_SUFFIXES", "FORMATS", "DEFAULT_MAX_PIXELS", "read_rgb", "list_images", "check_max_pixels", "shown"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Pillow format names :func:`read_rgb` opens (the formats of :data:`IMAGE_SUFFIXES`); no other plugin is tried.
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")

#: The default pixel cap of :func:`read_rgb`: Pillow's ``Image.MAX_IMAGE_PIXELS`` (about 89.5 MP).
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;32", "I;32B", "I;32L"}


def shown(name: str | os.PathLike[str]) -> str:
    """A file name or path as text that can always be printed and written as UTF-8.

    Python keeps file-name bytes that are not UTF-8 as lone surrogates (``surrogateescape``); encoding such a
    string raises ``UnicodeEncodeError``. Those bytes are shown as ``\\xNN`` instead; valid names are unchanged.
    """
    s = os.fspath(name)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        try:
            raw = s.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return s.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")


def check_max_pixels(value: object) -> int:
    """``value`` as a pixel cap: an integer from 1 to Pillow's ``Image.MAX_IMAGE_PIXELS`` (above it Pillow warns,
    and :func:`read_rgb` treats the warning as an error); None means :data:`DEFAULT_MAX_PIXELS`."""
    if value is None:
        return DEFAULT_MAX_PIXELS
    ceiling = Image.MAX_IMAGE_PIXELS
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1 \
            or (ceiling is not None and int(value) > ceiling):
        raise DataError(f"max_pixels must be an integer from 1 to {ceiling} (Pillow's Image.MAX_IMAGE_PIXELS; got "
                        f"{value!r})")
    return int(value)


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR chunk, or None when the file is not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24]


def _tiff_max_bits(im: Image.Image) -> int | None:
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    bits = tags.get(258)  # BitsPerSample
    if bits is None:
        return None
    if isinstance(bits, (tuple, list)):
        return max(int(b) for b in bits) if bits else None
    return int(bits)


def _drop_opaque_alpha(path: str, rgba: Image.Image) -> np.ndarray:
    arr = np.asarray(rgba.convert("RGBA"))
    alpha = arr[..., 3]
    if alpha.min() < 255:
        n = int(np.count_nonzero(alpha < 255))
        raise DataError(
            f"{path}: image has transparency ({n} pixel(s) with alpha < 255); "
            "flatten it onto a background and save it as RGB first")
    return np.ascontiguousarray(arr[..., :3])


def read_rgb(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file into a uint8 HWC RGB array (0–255), following the module's format policy.

    Raises :class:`DataError` naming ``path`` for a missing, corrupt, truncated, non-image, 16-bit, CMYK,
    multi-frame or partly transparent file, and for one of more than ``max_pixels`` pixels (default
    :data:`DEFAULT_MAX_PIXELS`), which is refused from its header before it is decoded.
    """
    cap = check_max_pixels(max_pixels)
    p = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _read_rgb(p, shown(p), cap)


def _read_rgb(path: Path, p: str, cap: int) -> np.ndarray:
    """:func:`read_rgb` of ``path`` (shown as ``p`` in messages), at most ``cap`` pixels."""
    if not path.is_file():
        raise DataError(f"{p}: image file not found")
    try:
        bits = _png_bit_depth(path)
    except OSError as exc:
        raise DataError(f"{p}: cannot read file ({exc})") from exc
    if bits is not None and bits > 8:
        raise DataError(f"{p}: {bits}-bit PNG is not supported; convert it to 8 bits per channel first")
    try:
        with Image.open(path, formats=list(FORMATS)) as im:
            width, height = im.size
            if width * height > cap:
                raise DataError(f"{p}: image is {width}x{height} = {width * height} px, more than the {cap} px "
                                "allowed (max_pixels); it was not decoded")
            frames = int(getattr(im, "n_frames", 1))
            if frames > 1:
                raise DataError(f"{p}: multi-frame image ({frames} frames) is not supported")
            mode = im.mode
            if mode in _HIGH_DEPTH_MODES or mode.startswith("I;") or mode.startswith("F"):
                raise DataError(f"{p}: {mode} image (more than 8 bits per channel) is not supported; "
                                "convert it to 8-bit RGB first")
            tiff_bits = _tiff_max_bits(im)
            if tiff_bits is not None and tiff_bits > 8:
                raise DataError(f"{p}: {tiff_bits}-bit TIFF is not supported; convert it to 8-bit RGB first")
            im.load()  # decode now, so truncated files fail here and not later
            if mode in _ALPHA_MODES or "transparency" in im.info:
                return _drop_opaque_alpha(p, im)
            if mode == "RGB":
                arr = np.asarray(im)
            elif mode in {"L", "1", "P", "RGBX", "YCbCr"}:
                arr = np.asarray(im.convert("RGB"))
            else:
                raise DataError(f"{p}: {mode} images are not supported (needs a colour profile to convert); "
                                "save it as 8-bit RGB first")
    except DataError:
        raise
    except UnidentifiedImageError as exc:
        raise DataError(f"{p}: not a readable image: not a PNG, JPEG, BMP, TIFF or WebP file (other formats are "
                        "not opened; convert it to PNG first)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{p}: image too large, refused before decoding ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's corrupt-file errors vary by plugin
        raise DataError(f"{p}: corrupt or truncated image ({type(exc).__name__}: {exc})") from exc
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{p}: decoded to unexpected array {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Sorted image files (suffix in :data:`IMAGE_SUFFIXES`, any case) directly inside ``folder``.

    Hidden files (leading ``.``) and sub-folders are skipped. A missing folder, a non-folder, or a folder with no
    images raises :class:`DataError` naming it.
    """
    d = Path(folder)
    if not d.exists():
        raise DataError(f"{shown(d)}: image folder not found")
    if not d.is_dir():
        raise DataError(f"{shown(d)}: not a folder")
    files = [f for f in sorted(d.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()]
    if not files:
        raise DataError(f"{shown(d)}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files
