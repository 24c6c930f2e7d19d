"""Generators, discriminator, registry and BasicSR checkpoint loading (tiny CPU networks)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from easlurm.errors import CheckpointError, ConfigError
from easlurm.models.checkpoint_io import load_generator_weights
from easlurm.models.discriminator import VGGStyleDiscriminator
from easlurm.models.rrdb import RRDBNet
from easlurm.models.specs import build_discriminator, build_generator
from easlurm.models.srresnet import MSRResNet


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _tiny_srresnet() -> MSRResNet:
    return MSRResNet(num_feat=8, num_block=2, upscale=4)


def _tiny_rrdb() -> RRDBNet:
    return RRDBNet(num_feat=8, num_block=2, num_grow_ch=4, scale=4)


def test_full_size_parameter_counts() -> None:
    assert _n_params(RRDBNet(3, 3, scale=4, num_feat=64, num_block=23, num_grow_ch=32)) == 16_697_987
    assert _n_params(MSRResNet(3, 3, num_feat=64, num_block=16, upscale=4)) == 1_517_571


def test_basicsr_parameter_names() -> None:
    srres = set(MSRResNet(num_feat=8, num_block=2).state_dict())
    assert {"conv_first.weight", "body.0.conv1.weight", "body.1.conv2.bias", "upconv1.weight", "upconv2.weight",
            "conv_hr.weight", "conv_last.bias"} <= srres
    assert "upconv2.weight" not in MSRResNet(num_feat=8, num_block=1, upscale=2).state_dict()
    rrdb = set(_tiny_rrdb().state_dict())
    assert {"conv_first.weight", "body.1.rdb3.conv5.weight", "conv_body.weight", "conv_up1.weight",
            "conv_up2.weight", "conv_hr.weight", "conv_last.weight"} <= rrdb


@pytest.mark.parametrize("make", [_tiny_srresnet, _tiny_rrdb])
def test_forward_backward_tiny(make) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = make()
    x = torch.rand(2, 3, 6, 5)
    y = model(x)
    assert y.shape == (2, 3, 24, 20)
    (y - torch.rand_like(y)).abs().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.conv_first.weight.grad.abs().sum() > 0


def test_other_scales() -> None:
    x = torch.rand(1, 3, 8, 8)
    assert MSRResNet(num_feat=8, num_block=1, upscale=2)(x).shape == (1, 3, 16, 16)
    assert MSRResNet(num_feat=8, num_block=1, upscale=3)(x).shape == (1, 3, 24, 24)
    assert RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=2)(x).shape == (1, 3, 16, 16)
    assert RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=1)(x).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="multiples of 2"):
        RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=2)(torch.rand(1, 3, 7, 8))
    with pytest.raises(ConfigError, match="upscale"):
        MSRResNet(upscale=8)
    with pytest.raises(ConfigError, match="scale"):
        RRDBNet(scale=3)


def test_msrresnet_starts_near_bilinear_upsampling() -> None:
    # Scaled-down init makes the residual branch tiny, so the untrained net is close to its bilinear base.
    torch.manual_seed(0)
    model = MSRResNet(num_feat=16, num_block=2, upscale=4)
    x = torch.rand(1, 3, 8, 8)
    base = nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    assert (model(x) - base).abs().max() < 0.05


def test_residual_convs_use_scaled_kaiming_init() -> None:
    torch.manual_seed(0)
    model = MSRResNet(num_feat=64, num_block=4)
    w = torch.cat([model.body[i].conv1.weight.flatten() for i in range(4)])
    expected_std = 0.1 * math.sqrt(2.0 / (64 * 9))
    assert abs(w.std().item() / expected_std - 1) < 0.05
    assert all(model.body[i].conv2.bias.abs().sum() == 0 for i in range(4))
    rdb = RRDBNet(num_feat=64, num_block=1, num_grow_ch=32).body[0].rdb2.conv5
    assert abs(rdb.weight.std().item() / (0.1 * math.sqrt(2.0 / ((64 + 4 * 32) * 9))) - 1) < 0.05


@pytest.mark.parametrize("size", [32, 64, 128])
def test_discriminator_sizes(size: int) -> None:
    d = VGGStyleDiscriminator(num_in_ch=3, num_feat=8, input_size=size)
    out = d(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1)
    out.sum().backward()
    assert d.conv0_0.weight.grad is not None
    assert d.linear1.in_features == 8 * 8 * (size // 32) ** 2


def test_discriminator_128_matches_basicsr_layout() -> None:
    d = VGGStyleDiscriminator(num_in_ch=3, num_feat=64, input_size=128)
    sd = d.state_dict()
    assert sd["linear1.weight"].shape == (100, 64 * 8 * 4 * 4)
    assert sd["conv0_0.bias"].shape == (64,) and "conv0_1.bias" not in sd
    assert sd["conv4_1.weight"].shape == (512, 512, 4, 4) and "bn4_1.running_mean" in sd
    assert "bn0_0.weight" not in sd and "conv5_0.weight" not in sd


def test_discriminator_wrong_size_is_a_clear_error() -> None:
    d = VGGStyleDiscriminator(num_feat=8, input_size=64)
    with pytest.raises(ValueError, match=r"input_size.*\(2, 3, 96, 96\)|\(2, 3, 96, 96\).*input_size"):
        d(torch.rand(2, 3, 96, 96))
    with pytest.raises(ConfigError, match="multiple of 32"):
        VGGStyleDiscriminator(input_size=48)
    with pytest.raises(ConfigError, match="multiple of 32"):
        VGGStyleDiscriminator(input_size=0)


def test_registry() -> None:
    g = build_generator("rrdbnet", num_feat=8, num_block=1, num_grow_ch=4)
    assert isinstance(g, RRDBNet)
    assert isinstance(build_generator("msrresnet", num_feat=8, num_block=1), MSRResNet)
    d = build_discriminator(num_feat=8, input_size=32)
    assert isinstance(d, VGGStyleDiscriminator) and d.input_size == 32
    with pytest.raises(ConfigError, match="edsr.*msrresnet, rrdbnet"):
        build_generator("edsr")
    with pytest.raises(ConfigError, match="num_blocks"):
        build_generator("rrdbnet", num_blocks=3)
    with pytest.raises(ConfigError, match="patchgan.*vgg_style"):
        build_discriminator("patchgan")


def _perturbed(state: dict[str, torch.Tensor], delta: float) -> dict[str, torch.Tensor]:
    return {k: v + delta for k, v in state.items()}


@pytest.mark.parametrize("make", [_tiny_srresnet, _tiny_rrdb])
def test_load_basicsr_checkpoint_prefers_params_ema(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make()
    ema, plain = _perturbed(src.state_dict(), 0.5), _perturbed(src.state_dict(), -0.5)

    both = tmp_path / "both.pth"
    torch.save({"params": plain, "params_ema": ema}, both)
    dst = make()
    assert load_generator_weights(dst, both) == "params_ema"
    assert all(torch.equal(dst.state_dict()[k], ema[k]) for k in ema)

    only = tmp_path / "params.pth"
    torch.save({"params": plain}, only)
    assert load_generator_weights(dst, only) == "params"
    assert all(torch.equal(dst.state_dict()[k], plain[k]) for k in plain)
    # model.pretrained_key: the reference EA-Adam code loads `params`, which differs from the EMA weights.
    dst = make()
    assert load_generator_weights(dst, both, key="params") == "params"
    assert all(torch.equal(dst.state_dict()[k], plain[k]) for k in plain)
    ema_only = tmp_path / "ema.pth"
    torch.save({"params_ema": ema}, ema_only)
    with pytest.raises(CheckpointError, match=r"has no 'params' entry \(it has params_ema; set model\.pretrained_key"):
        load_generator_weights(dst, ema_only, key="params")

    bare = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in ema.items()}, bare)  # DataParallel-style keys
    assert load_generator_weights(dst, bare) == "bare"
    assert all(torch.equal(dst.state_dict()[k], ema[k]) for k in ema)


def test_wrong_keys_raise_checkpoint_error_listing_them(tmp_path: Path) -> None:
    src = _tiny_srresnet().state_dict()
    state = dict(src)
    state["conv_extra.weight"] = state.pop("conv_hr.weight")
    f = tmp_path / "bad.pth"
    torch.save({"params": state}, f)
    dst = _tiny_srresnet()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_generator_weights(dst, f)
    msg = str(err.value)
    assert "bad.pth" in msg and "conv_hr.weight" in msg and "conv_extra.weight" in msg
    assert "missing keys 1" in msg and "unexpected keys 1" in msg
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # untouched on failure

    # an RRDB checkpoint for an SRResNet: many keys, listed with counts and truncated
    rr = tmp_path / "rrdb.pth"
    torch.save({"params": _tiny_rrdb().state_dict()}, rr)
    with pytest.raises(CheckpointError, match=r"rrdb\.pth.*missing keys \d+: .*more"):
        load_generator_weights(_tiny_srresnet(), rr)


def test_shape_mismatch_names_the_key(tmp_path: Path) -> None:
    f = tmp_path / "wide.pth"
    torch.save({"params_ema": MSRResNet(num_feat=16, num_block=2).state_dict()}, f)
    with pytest.raises(CheckpointError, match=r"wide\.pth.*'conv_first\.weight'.*\(16, 3, 3, 3\).*\(8, 3, 3, 3\)"):
        load_generator_weights(_tiny_srresnet(), f)


def test_unreadable_and_missing_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="absent.pth"):
        load_generator_weights(_tiny_srresnet(), tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_generator_weights(_tiny_srresnet(), junk)
    lst = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(CheckpointError, match="list.pth.*dict"):
        load_generator_weights(_tiny_srresnet(), lst)


def test_original_esrgan_key_names_are_renamed(tmp_path: Path) -> None:
    src = _tiny_rrdb()
    old = {}
    for k, v in src.state_dict().items():
        k = k.replace("conv_body.", "trunk_conv.").replace("conv_up1.", "upconv1.").replace("conv_up2.", "upconv2.")
        k = k.replace("conv_hr.", "HRconv.")
        if k.startswith("body."):
            _, n, rdb, rest = k.split(".", 3)
            k = f"RRDB_trunk.{n}.RDB{rdb[-1]}.{rest}"
        old[k] = v
    f = tmp_path / "RRDB_PSNR_x4.pth"
    torch.save(old, f)
    dst = _tiny_rrdb()
    load_generator_weights(dst, f)
    x = torch.rand(1, 3, 4, 4)
    assert torch.equal(dst(x), src(x))


def test_a_pretrained_start_named_with_its_hash_is_verified(tmp_path: Path) -> None:
    """BasicSR's released files carry the start of their sha256 in the name (ESRGAN_PSNR_SRx4_DF2K_official-150ff491
    .pth): a staged file that does not match is refused before it is read."""
    import hashlib

    from easlurm.assets import WeightsMismatchError

    g = MSRResNet(num_feat=8, num_block=1, upscale=4)
    plain = tmp_path / "g.pth"
    torch.save({"params": g.state_dict()}, plain)
    prefix = hashlib.sha256(plain.read_bytes()).hexdigest()[:8]
    good = tmp_path / f"MSRResNet_x4-{prefix}.pth"
    good.write_bytes(plain.read_bytes())
    assert load_generator_weights(MSRResNet(num_feat=8, num_block=1, upscale=4), good) == "params"
    bad = tmp_path / "MSRResNet_x4-00000000.pth"
    bad.write_bytes(plain.read_bytes())
    with pytest.raises(WeightsMismatchError, match=rf"{bad}: sha256 {prefix}.* does not start with 00000000"):
        load_generator_weights(MSRResNet(num_feat=8, num_block=1, upscale=4), bad)
