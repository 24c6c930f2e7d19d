"""DISTS with offline weights, checked against the dists-pytorch package's own model on real photos."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data as skdata
from torchvision.transforms.functional import gaussian_blur

from easlurm import assets
from easlurm.assets import MissingWeightsError, WeightsMismatchError
from easlurm.metrics.dists import DISTS_WEIGHTS_SHA256, DISTSMetric, DISTSNet, dists_weights_file, load_alpha_beta
from easlurm.store import sha256_file


@pytest.fixture(scope="module", autouse=True)
def offline_env(offline_weights: Path) -> Path:
    return offline_weights


@pytest.fixture(scope="module")
def metric() -> DISTSMetric:
    return DISTSMetric()


def _photo(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255).unsqueeze(0)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, "JPEG",
                                                                                          quality=quality)
    return _photo(np.asarray(Image.open(buf).convert("RGB")))


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(x, [k, k], [sigma, sigma])


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, reference, distorted): crops of two scikit-image photos with blur, noise and JPEG degradations."""
    face = _photo(skdata.astronaut()[60:188, 140:268])  # 128 × 128
    cat = _photo(skdata.chelsea()[40:136, 100:212])  # 96 × 112
    noisy = (face + 0.05 * torch.randn(face.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return [("face_blur", face, _blur(face, 1.5)), ("face_noise", face, noisy), ("cat_jpeg", cat, _jpeg(cat, 15))]


def _package_dists() -> torch.nn.Module:
    """The dists-pytorch package's own DISTS model, its VGG16 trunk loaded from the same offline weights by key (its
    constructor would otherwise download torchvision's VGG16) and α/β from its weights.pt."""
    import DISTS_pytorch.DISTS_pt as package

    build_vgg16 = torchvision.models.vgg16
    trunk = assets.conv_trunk_state_dict("vgg16")

    def offline_vgg16(**_: object) -> torch.nn.Module:
        vgg = build_vgg16(weights=None)
        vgg.features.load_state_dict({k.removeprefix("features."): v for k, v in trunk.items()})
        return vgg

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(package.models, "vgg16", offline_vgg16)
        ref = package.DISTS(load_weights=False)
    weights = torch.load(Path(package.__file__).parent / "weights.pt", weights_only=True)
    ref.alpha.data, ref.beta.data = weights["alpha"], weights["beta"]
    return ref.eval()


def test_matches_the_dists_pytorch_model_with_the_same_offline_weights(metric, pairs) -> None:
    ref = _package_dists()
    for name, x, y in pairs:
        mine = float(metric(y, x)[0])
        with torch.no_grad():
            theirs = float(ref(y, x))
        assert 0.05 < mine < 0.6, name  # a real distortion gives a clearly non-zero distance
        assert mine == pytest.approx(theirs, abs=1e-4), name


def test_pinned_values_on_real_photos(metric, pairs) -> None:
    # The same numbers as above, pinned, so that a change to the trunk weights or to α/β (which the package
    # comparison would share) shows up too.
    got = {name: float(metric(y, x)[0]) for name, x, y in pairs}
    assert got == pytest.approx({"face_blur": 0.21997, "face_noise": 0.17639, "cat_jpeg": 0.25464}, abs=1e-4)


def test_zero_for_identical_and_ordered_by_distortion(metric, pairs) -> None:
    _, face, _ = pairs[0]
    assert abs(float(metric(face, face)[0])) < 1e-6
    values = [float(metric(_blur(face, s), face)[0]) for s in (0.7, 1.5, 3.0)]
    assert values == sorted(values) and values[0] > 0.01
    batch = torch.cat([_blur(face, 1.5), face])
    np.testing.assert_allclose(metric(batch, torch.cat([face, face])).numpy(),
                               [float(metric(_blur(face, 1.5), face)[0]), 0.0], atol=1e-6)


def test_alpha_beta_are_the_published_weights() -> None:
    path = dists_weights_file()
    assert path is not None and path.name == "weights.pt" and path.parent.name == "DISTS_pytorch"
    assert sha256_file(path) == DISTS_WEIGHTS_SHA256
    alpha, beta = load_alpha_beta()
    assert alpha.shape == beta.shape == (1, 1475, 1, 1)
    assert float(alpha.min()) >= 0 and float(beta.min()) >= 0


def test_missing_or_altered_weights_are_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from easlurm.metrics import dists

    monkeypatch.setattr(dists, "dists_weights_file", lambda: None)
    with pytest.raises(MissingWeightsError, match=r"pip install dists-pytorch==0\.1.*eval\.metrics"):
        DISTSMetric()
    bad = tmp_path / "weights.pt"
    torch.save({"alpha": torch.ones(1, 1475, 1, 1), "beta": torch.ones(1, 1475, 1, 1)}, bad)
    with pytest.raises(WeightsMismatchError, match="sha256 mismatch"):
        load_alpha_beta(bad)


def test_trunk_must_be_complete_and_is_really_loaded() -> None:
    trunk = assets.conv_trunk_state_dict("vgg16")
    alpha, beta = load_alpha_beta()
    net = DISTSNet()
    with pytest.raises(WeightsMismatchError, match="features.28.weight"):
        net.load({k: v for k, v in trunk.items() if k != "features.28.weight"}, alpha, beta)
    net.load(trunk, alpha, beta)
    convs = [m for stage in net.stages for m in stage if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    assert torch.equal(convs[0].weight, trunk["features.0.weight"])
    assert torch.equal(convs[-1].bias, trunk["features.28.bias"])


def test_registry_metric_crops_the_border_before_dists(metric) -> None:
    from easlurm.metrics.registry import build_metrics

    rng = np.random.default_rng(4)
    hr = np.ascontiguousarray(skdata.coffee()[100:164, 200:272])
    sr = np.clip(hr.astype(int) + rng.integers(-20, 21, size=hr.shape), 0, 255).astype(np.uint8)
    (cropped,) = build_metrics(["dists"], scale=4)  # perceptual_crop None → scale
    (whole,) = build_metrics(["dists"], scale=4, perceptual_crop=0)
    expected = float(metric(_photo(sr[4:-4, 4:-4]), _photo(hr[4:-4, 4:-4]))[0])
    assert cropped(sr, hr) == pytest.approx(expected, abs=1e-6)
    assert whole(sr, hr) == pytest.approx(float(metric(_photo(sr), _photo(hr))[0]), abs=1e-6)
    assert abs(cropped(sr, hr) - whole(sr, hr)) > 1e-4


def test_reference_features_are_reused_only_for_the_same_hr_image(metric) -> None:
    from easlurm.metrics.registry import build_metrics

    rng = np.random.default_rng(6)
    hr_a = np.array(skdata.astronaut()[200:264, 200:272])
    hr_b = np.array(skdata.chelsea()[50:114, 100:172])
    sr = np.clip(hr_a.astype(int) + rng.integers(-15, 16, size=hr_a.shape), 0, 255).astype(np.uint8)
    (m,) = build_metrics(["dists"], scale=4, perceptual_crop=0)
    fresh = [float(metric(_photo(sr), _photo(h))[0]) for h in (hr_a, hr_b)]
    assert [m(sr, hr_a), m(hr_a, hr_a), m(sr, hr_b), m(sr, hr_a)] == pytest.approx([fresh[0], 0.0, fresh[1],
                                                                                   fresh[0]], abs=1e-6)
