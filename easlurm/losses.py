"""Training losses: pixel L1, VGG perceptual loss, and GAN losses (vanilla and ESRGAN's relativistic average).

Images are NCHW RGB float in [0, 1]; discriminator outputs are raw logits of any shape (usually N×1). Every loss
returns a scalar tensor (mean reduction). Loss *weights* (e.g. 0.005 for the GAN term) are applied by the caller.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, EaslurmError
from .models.features import VGGFeatureExtractor, resolve_vgg

__all__ = ["GAN_KINDS", "l1_loss", "PerceptualLoss", "gan_g_loss", "gan_d_loss"]

GAN_KINDS: tuple[str, ...] = ("vanilla", "relativistic")
_CRITERIA = ("l1", "l2")


def l1_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements; ``sr`` and ``hr`` NCHW of equal shape."""
    if sr.shape != hr.shape:
        raise ValueError(f"l1_loss: shape mismatch sr {tuple(sr.shape)} vs hr {tuple(hr.shape)}")
    return (sr - hr).abs().mean()


class PerceptualLoss(nn.Module):
    """Σ_k w_k · criterion(φ_k(sr), φ_k(hr)) over VGG pre-ReLU features φ_k (BasicSR's definition).

    ``layer_weights``: ``{"conv5_4": 1.0, ...}`` (VGG19 names; mapped onto VGG16 when that is what runs, see
    :mod:`easlurm.models.features`). ``net``: ``auto`` | ``vgg19`` | ``vgg16``; ``auto`` = VGG19 when staged.
    ``criterion``: ``l1`` (mean |·|) or ``l2`` (mean squared). Inputs NCHW RGB float in [0, 1]; the target side is
    computed without gradient. The chosen net is in ``self.net``.
    """

    def __init__(self, layer_weights: dict[str, float], net: str = "auto",
                 weights_path: str | os.PathLike[str] | None = None, criterion: str = "l1") -> None:
        super().__init__()
        if not layer_weights:
            raise ConfigError("loss.perceptual.layers is empty")
        for name, w in layer_weights.items():
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not w >= 0:
                raise ConfigError(f"loss.perceptual.layers.{name}: weight must be a number >= 0, got {w!r}")
        if criterion not in _CRITERIA:
            raise ConfigError(f"PerceptualLoss(criterion=…): unknown {criterion!r}; valid: {', '.join(_CRITERIA)}")
        self.layer_weights = {k: float(v) for k, v in layer_weights.items()}
        self.criterion = criterion
        self.net = resolve_vgg(net, weights_path)
        self.vgg = VGGFeatureExtractor(list(self.layer_weights), net=self.net, weights_path=weights_path,
                                       use_input_norm=True, range_norm=False)

    @torch.no_grad()
    def target_features(self, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        """The HR side's features (no gradient), to pass as ``target=`` when the same HR batch is scored often."""
        return self.vgg(hr.detach())

    def forward(self, sr: torch.Tensor, hr: torch.Tensor | None = None,
                target: dict[str, torch.Tensor] | None = None, groups: int = 1) -> torch.Tensor:
        """sr, hr: N×3×H×W RGB float in [0, 1], same shape → scalar loss (gradient flows into ``sr`` only).

        ``target`` (from :meth:`target_features`) replaces ``hr``: the EA scores every genome on one fixed set.
        ``groups`` G > 1: ``sr`` holds G·N images, G groups of N (several generators' outputs on the same N HR
        images, group-major), all through one VGG pass; returns the G losses (a length-G vector).
        """
        n = sr.shape[0] // groups if groups > 1 else sr.shape[0]
        if groups > 1 and n * groups != sr.shape[0]:
            raise ValueError(f"PerceptualLoss: {sr.shape[0]} images do not split into {groups} groups")
        if target is None:
            if hr is None:
                raise ValueError("PerceptualLoss: give hr or target")
            if (n, *sr.shape[1:]) != tuple(hr.shape):
                raise ValueError(f"PerceptualLoss: shape mismatch sr {tuple(sr.shape)} vs hr {tuple(hr.shape)}"
                                 + (f" ({groups} groups)" if groups > 1 else ""))
            fh = self.target_features(hr)
        else:
            fh = target
        fs = self.vgg(sr)
        if groups > 1:
            total = sr.new_zeros(groups)
            for name, w in self.layer_weights.items():
                diff = fs[name].unflatten(0, (groups, n)) - fh[name].unsqueeze(0)
                per = diff.abs() if self.criterion == "l1" else diff.square()
                total = total + w * per.flatten(1).mean(1)
            return total
        dist = F.l1_loss if self.criterion == "l1" else F.mse_loss
        total = sr.new_zeros(())
        for name, w in self.layer_weights.items():
            total = total + w * dist(fs[name], fh[name])
        return total


def _check_kind(kind: str) -> None:
    if kind not in GAN_KINDS:
        raise ConfigError(f"loss.gan_type: unknown GAN loss {kind!r}; valid: {', '.join(GAN_KINDS)}")


def _bce(logits: torch.Tensor, target_real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if target_real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def needs_real_logits(kind: str) -> bool:
    """Whether the generator-side GAN loss of ``kind`` needs the discriminator's logits on HR images."""
    _check_kind(kind)
    return kind == "relativistic"


def gan_g_loss(kind: str, d_fake: torch.Tensor, d_real: torch.Tensor | None = None) -> torch.Tensor:
    """Generator adversarial loss from discriminator logits.

    * ``vanilla``: BCE(d_fake, real). ``d_real`` is ignored.
    * ``relativistic`` (ESRGAN, relativistic average): ½·[BCE(d_real − mean(d_fake), fake) +
      BCE(d_fake − mean(d_real), real)], with ``d_real`` detached (the generator cannot change real logits;
      gradient flows through every occurrence of ``d_fake``). ``d_real`` is required.
    """
    _check_kind(kind)
    if kind == "vanilla":
        return _bce(d_fake, True)
    if d_real is None:
        raise EaslurmError("gan_g_loss('relativistic') needs d_real, the discriminator's logits on HR images")
    d_real = d_real.detach()
    return (_bce(d_real - d_fake.mean(), False) + _bce(d_fake - d_real.mean(), True)) / 2


def full(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32 (a bf16/fp16 tensor under autocast is cast up; float32 and float64 stay as they
    are, so a float64 computation stays exact)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def generator_gan_loss(kind: str, d: nn.Module, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """GAN_G of ``sr`` against the discriminator ``d`` (logits taken in float32, so it works under bf16 autocast);
    the logits on ``hr``, when ``kind`` needs them, are detached. Images NCHW RGB in [0, 1]."""
    d_fake = d(sr)
    d_real = d(hr).detach() if needs_real_logits(kind) else None
    return gan_g_loss(kind, full(d_fake), None if d_real is None else full(d_real))


def gan_d_loss(kind: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss from logits on HR (``d_real``) and generated (``d_fake``, from ``sr.detach()``) images.

    * ``vanilla``: BCE(d_real, real) + BCE(d_fake, fake).
    * ``relativistic``: ½·[BCE(d_real − mean(d_fake), real) + BCE(d_fake − mean(d_real), fake)], where each mean
      (the relativistic reference) is detached, as in ESRGAN's BasicSR recipe: each term pushes only its own logits.
    """
    _check_kind(kind)
    if kind == "vanilla":
        return _bce(d_real, True) + _bce(d_fake, False)
    return (_bce(d_real - d_fake.detach().mean(), True) + _bce(d_fake - d_real.detach().mean(), False)) / 2
