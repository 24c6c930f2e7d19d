"""Pixel, perceptual (offline VGG16) and GAN losses; the VGG feature extractor behind the perceptual loss."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from skimage import data as skdata
from torchvision.transforms.functional import gaussian_blur

from easlurm import assets
from easlurm.errors import ConfigError, EaslurmError
from easlurm.losses import PerceptualLoss, gan_d_loss, gan_g_loss, l1_loss
from easlurm.models import features
from easlurm.models.features import VGGFeatureExtractor, resolve_vgg

RRDB_LAYERS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


@pytest.fixture(scope="module", autouse=True)
def offline_vgg(offline_weights: Path) -> Path:
    return offline_weights


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    """skimage's astronaut, area-downscaled to 1×3×64×64 RGB float in [0, 1]."""
    img = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    return F.interpolate(img, size=(64, 64), mode="area")


@pytest.fixture(scope="module")
def rrdb_perceptual() -> PerceptualLoss:
    with pytest.warns(UserWarning, match="conv5_4→conv5_3"):
        features._mapping_warned = False
        return PerceptualLoss(RRDB_LAYERS, net="auto")


def test_l1_loss() -> None:
    a = torch.tensor([[0.0, 1.0], [0.5, 0.25]])
    b = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert l1_loss(a, b).item() == pytest.approx((1 + 0 + 0.5 + 0.25) / 4)
    with pytest.raises(ValueError, match="shape"):
        l1_loss(a, b[:1])


def test_auto_resolves_to_vgg16_without_staged_vgg19(offline_vgg: Path) -> None:
    assert resolve_vgg("auto") == "vgg16"
    staged = offline_vgg / "torch_home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"placeholder")
    try:
        assert resolve_vgg("auto") == "vgg19"
        # a staged but bogus file is an error, never a silent fallback
        with pytest.raises(EaslurmError, match="vgg19-dcbb9e9d.pth.*sha256"):
            PerceptualLoss({"conv5_4": 1.0}, net="auto")
    finally:
        staged.unlink()
    assert resolve_vgg("vgg19") == "vgg19"
    assert resolve_vgg("auto", weights_path="/somewhere/vgg16-397923af.pth") == "vgg16"
    # an oddly named explicit file is judged by its content (VGG19 has a 16th conv at features.34)
    odd = offline_vgg / "my_weights.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, odd)
    assert resolve_vgg("auto", weights_path=odd) == "vgg16"
    torch.save({"features.34.weight": torch.zeros(1)}, odd)
    assert resolve_vgg("auto", weights_path=odd) == "vgg19"
    with pytest.raises(ConfigError, match="resnet.*auto, vgg19, vgg16"):
        resolve_vgg("resnet")


def test_vgg19_requested_without_weights_says_what_to_stage() -> None:
    with pytest.raises(assets.MissingWeightsError, match="vgg19-dcbb9e9d.pth.*sha256 starts with dcbb9e9d.*"
                                                         "hub/checkpoints"):
        PerceptualLoss({"conv5_4": 1.0}, net="vgg19")


def test_features_match_torchvision_vgg16_pre_relu(astronaut: torch.Tensor) -> None:
    ext = VGGFeatureExtractor(["conv2_2", "conv5_3"], net="vgg16")
    with torch.device("meta"):  # skip initialising the classifier; real tensors are assigned below
        tv = torchvision.models.vgg16(weights=None).features
    tv.load_state_dict({k.removeprefix("features."): v for k, v in assets.conv_trunk_state_dict("vgg16").items()},
                       assign=True)
    tv.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (astronaut - mean) / std
    with torch.no_grad():
        out = ext(astronaut)
        ref2 = tv[:8](x)   # up to features.7 = conv2_2, before its ReLU
        ref5 = tv[:29](x)  # up to features.28 = conv5_3
    torch.testing.assert_close(out["conv2_2"], ref2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["conv5_3"], ref5, rtol=1e-4, atol=1e-4)
    assert (out["conv5_3"] < 0).any()  # pre-ReLU
    assert len(ext.features) == 29  # truncated right after conv5_3


def test_extractor_is_frozen_but_passes_gradients(astronaut: torch.Tensor) -> None:
    ext = VGGFeatureExtractor(["conv1_2"], net="vgg16")
    assert len(ext.features) == 3
    assert all(not p.requires_grad for p in ext.parameters())
    ext.train()
    assert not ext.training and not any(m.training for m in ext.modules())
    x = astronaut.clone().requires_grad_(True)
    ext(x)["conv1_2"].square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in ext.parameters())


def test_range_norm_maps_minus_one_one_input(astronaut: torch.Tensor) -> None:
    plain = VGGFeatureExtractor(["conv1_1"], net="vgg16")
    ranged = VGGFeatureExtractor(["conv1_1"], net="vgg16", range_norm=True)
    with torch.no_grad():
        torch.testing.assert_close(ranged(astronaut * 2 - 1)["conv1_1"], plain(astronaut)["conv1_1"])


def test_vgg19_names_map_to_vgg16_with_a_single_warning(recwarn: pytest.WarningsRecorder,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "_mapping_warned", False)
    a = VGGFeatureExtractor(["conv3_4", "conv4_4"], net="vgg16")
    VGGFeatureExtractor(["conv5_4"], net="vgg16")
    mapping_warnings = [w for w in recwarn if "VGG16" in str(w.message)]
    assert len(mapping_warnings) == 1
    assert "conv3_4→conv3_3" in str(mapping_warnings[0].message)
    assert a.layer_map == {"conv3_4": "conv3_3", "conv4_4": "conv4_3"}
    with pytest.raises(ConfigError, match="conv6_1"):
        VGGFeatureExtractor(["conv6_1"], net="vgg16")
    # names are validated before any weights are looked up (VGG19 weights are not staged here)
    with pytest.raises(ConfigError, match="conv9_9.*conv5_4"):
        VGGFeatureExtractor(["conv9_9"], net="vgg19")


def test_perceptual_loss_is_zero_for_identical_images(rrdb_perceptual: PerceptualLoss,
                                                      astronaut: torch.Tensor) -> None:
    assert rrdb_perceptual.net == "vgg16"
    assert rrdb_perceptual(astronaut, astronaut.clone()).item() == 0.0


def test_perceptual_loss_grows_with_blur(rrdb_perceptual: PerceptualLoss, astronaut: torch.Tensor) -> None:
    losses = []
    for sigma in (0.5, 1.0, 1.5, 2.5):
        k = 2 * math.ceil(3 * sigma) + 1
        with torch.no_grad():
            losses.append(rrdb_perceptual(gaussian_blur(astronaut, [k, k], [sigma, sigma]), astronaut).item())
    assert all(a < b for a, b in zip(losses, losses[1:])), losses
    assert losses[0] > 0


def test_perceptual_loss_definition(rrdb_perceptual: PerceptualLoss, astronaut: torch.Tensor) -> None:
    # Σ_k w_k · mean|φ_k(sr) − φ_k(hr)|, computed here from the extractor's raw features
    noisy = (astronaut + 0.05 * torch.randn_like(astronaut)).clamp(0, 1)
    with torch.no_grad():
        fs, fh = rrdb_perceptual.vgg(noisy), rrdb_perceptual.vgg(astronaut)
        want = sum(w * (fs[k] - fh[k]).abs().mean() for k, w in RRDB_LAYERS.items())
        got = rrdb_perceptual(noisy, astronaut)
    assert got.item() == pytest.approx(float(want), rel=1e-5)


def test_perceptual_loss_gradient_reaches_sr_only(astronaut: torch.Tensor) -> None:
    loss_fn = PerceptualLoss({"conv2_2": 1.0}, net="vgg16", criterion="l2")
    sr = (astronaut * 0.9).requires_grad_(True)
    hr = astronaut.clone().requires_grad_(True)
    loss_fn(sr, hr).backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert hr.grad is None


def test_perceptual_loss_config_errors() -> None:
    with pytest.raises(ConfigError, match="criterion.*huber"):
        PerceptualLoss({"conv2_2": 1.0}, net="vgg16", criterion="huber")
    with pytest.raises(ConfigError, match="loss.perceptual.layers.conv2_2"):
        PerceptualLoss({"conv2_2": -1.0}, net="vgg16")
    with pytest.raises(ConfigError, match="empty"):
        PerceptualLoss({}, net="vgg16")


# --------------------------------------------------------------------------------------------------------------
# GAN losses

def test_vanilla_gan_losses_at_zero_logits_are_log2() -> None:
    zeros = torch.zeros(4, 1)
    assert gan_g_loss("vanilla", zeros).item() == pytest.approx(math.log(2))
    assert gan_d_loss("vanilla", zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert gan_g_loss("relativistic", zeros, zeros).item() == pytest.approx(math.log(2))
    assert gan_d_loss("relativistic", zeros, zeros).item() == pytest.approx(math.log(2))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))  # BCE(x, target=0); BCE(x, target=1) = softplus(-x)


def test_vanilla_gan_values() -> None:
    d_real, d_fake = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [-3.0]])
    assert gan_g_loss("vanilla", d_fake).item() == pytest.approx((_softplus(-0.5) + _softplus(3.0)) / 2)
    want_d = (_softplus(-2.0) + _softplus(1.0)) / 2 + (_softplus(0.5) + _softplus(-3.0)) / 2
    assert gan_d_loss("vanilla", d_real, d_fake).item() == pytest.approx(want_d)


def test_relativistic_gan_values_and_gradients() -> None:
    d_real = torch.tensor([[1.0], [3.0]], requires_grad=True)   # mean 2
    d_fake = torch.tensor([[0.0], [-2.0]], requires_grad=True)  # mean -1
    g = gan_g_loss("relativistic", d_fake, d_real)
    # real - mean(fake) = [2, 4] → target fake; fake - mean(real) = [-2, -4] → target real
    want_g = ((_softplus(2.0) + _softplus(4.0)) / 2 + (_softplus(2.0) + _softplus(4.0)) / 2) / 2
    assert g.item() == pytest.approx(want_g)
    g.backward()
    assert d_real.grad is None  # the generator loss treats D(real) as a constant
    assert d_fake.grad is not None and d_fake.grad.abs().sum() > 0

    d_real.grad = d_fake.grad = None
    d = gan_d_loss("relativistic", d_real, d_fake)
    want_d = ((_softplus(-2.0) + _softplus(-4.0)) / 2 + (_softplus(-2.0) + _softplus(-4.0)) / 2) / 2
    assert d.item() == pytest.approx(want_d)
    d.backward()
    # each term only moves its own logits: dL/d(real_i) = ½·(σ(real_i − m_f) − 1)/2
    sig = torch.sigmoid(torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(d_real.grad.flatten(), (sig - 1) / 4)


def test_gan_loss_errors() -> None:
    x = torch.zeros(2, 1)
    with pytest.raises(ConfigError, match="wgan.*vanilla, relativistic"):
        gan_g_loss("wgan", x)
    with pytest.raises(ConfigError, match="lsgan"):
        gan_d_loss("lsgan", x, x)
    with pytest.raises(EaslurmError, match="d_real"):
        gan_g_loss("relativistic", x)
