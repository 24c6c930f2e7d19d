"""LPIPS (Zhang et al. 2018) with offline ImageNet trunks.

``lpips.LPIPS(pnet_rand=True)`` builds the network without downloading anything (its calibrated linear heads ship
inside the ``lpips`` wheel); the AlexNet / VGG16 trunk then comes from :func:`easlurm.assets.conv_trunk_state_dict`
and is copied into ``net.net.slice1..5``. lpips keeps torchvision's ``features`` indices as module names inside the
slices (AlexNet convs 0, 3, 6, 8, 10 → slices 1-5; VGG16 slices cover features 0-3, 4-8, 9-15, 16-22, 23-29), so
``features.N`` maps to the slice that holds a child named ``N``. Every conv of the trunk must be loaded — numbers
from a random backbone are never returned.
"""
from __future__ import annotations

import os
import warnings

import lpips as _lpips
import torch
from torch import nn

from ..assets import conv_trunk_state_dict
from ..errors import EaslurmError

__all__ = ["LPIPSMetric", "load_trunk_into_lpips"]

_TRUNK = {"alex": "alexnet", "vgg": "vgg16", "vgg16": "vgg16"}


def load_trunk_into_lpips(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy torchvision ``features.N.{weight,bias}`` tensors into an ``lpips.LPIPS`` model's ``net.sliceK.N``.

    Raises :class:`EaslurmError` if a tensor has no home, a shape differs, or any trunk conv stays unloaded.
    """
    trunk = model.get_submodule("net")
    slices = [trunk.get_submodule(f"slice{k}") for k in range(1, 6)]
    loaded: set[int] = set()
    with torch.no_grad():
        for key, tensor in state.items():
            _, idx, kind = key.split(".")
            home = next((s._modules[idx] for s in slices if idx in s._modules), None)
            if not isinstance(home, nn.Conv2d):
                raise EaslurmError(f"LPIPS trunk: {key} has no matching conv in the lpips network")
            param = getattr(home, kind)
            if param.shape != tensor.shape:
                raise EaslurmError(f"LPIPS trunk: {key} has shape {tuple(tensor.shape)}, lpips expects "
                                   f"{tuple(param.shape)}")
            param.copy_(tensor)
            if kind == "weight":
                loaded.add(id(home))
    convs = [m for m in trunk.modules() if isinstance(m, nn.Conv2d)]
    missing = [i for i, m in enumerate(convs) if id(m) not in loaded]
    if not convs or missing:
        raise EaslurmError(f"LPIPS trunk: {len(missing)} of {len(convs)} convs were not loaded "
                           f"(refusing to compute LPIPS with a random backbone)")


class LPIPSMetric:
    """Per-image LPIPS distance (lower = more similar).

    ``net``: ``alex`` (the paper's LPIPS-alex, default) or ``vgg``; ``version``: lpips head version (``0.1``).
    ``weights_path`` optionally points at a torchvision ``.pth`` for the trunk (see :mod:`easlurm.assets`).
    """

    def __init__(self, net: str = "alex", version: str = "0.1", device: str | torch.device = "cpu",
                 weights_path: str | os.PathLike[str] | None = None) -> None:
        if net not in _TRUNK:
            raise EaslurmError(f"LPIPS net {net!r} not supported; valid: alex, vgg")
        self.net_name = net
        self.device = torch.device(device)
        with warnings.catch_warnings():
            # lpips passes torchvision's deprecated ``pretrained=`` flag; harmless, and the trunk is replaced below.
            warnings.simplefilter("ignore", UserWarning)
            model = _lpips.LPIPS(net=net, version=version, pretrained=True, pnet_rand=True, verbose=False)
        load_trunk_into_lpips(model, conv_trunk_state_dict(_TRUNK[net], weights_path))
        self.model = model.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def __call__(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """sr, hr: N×3×H×W (or 3×H×W) RGB float in [0, 1], equal shapes → 1-D CPU tensor of N distances."""
        if sr.shape != hr.shape:
            raise ValueError(f"LPIPS: shape mismatch sr {tuple(sr.shape)} vs hr {tuple(hr.shape)}")
        return self.compare(sr, self.prepare(hr))

    def prepare(self, hr: torch.Tensor) -> torch.Tensor:
        """The reference image on the device in [-1, 1] (the same interface as ``DISTSMetric.prepare``)."""
        return _check_batch(hr).to(self.device, torch.float32) * 2 - 1

    @torch.no_grad()
    def compare(self, sr: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """LPIPS of ``sr`` (in [0, 1]) against a :meth:`prepare`'d reference of the same shape → N distances."""
        a = _check_batch(sr).to(self.device, torch.float32) * 2 - 1
        if a.shape != reference.shape:
            raise ValueError(f"LPIPS: shape mismatch sr {tuple(a.shape)} vs hr {tuple(reference.shape)}")
        return self.model(a, reference).flatten().cpu()


def _check_batch(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"LPIPS expects N×3×H×W RGB in [0, 1], got shape {tuple(x.shape)}")
    return x
