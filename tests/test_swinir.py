"""SwinIR-light, the paper's third backbone: the reference's layout (keys, shapes, parameter count), the official
forward (spandrel's copy of SwinIR, where installed), padding, options, config validation and ``upscale --arch``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from easlurm import factory
from easlurm.config import load_config
from easlurm.errors import ConfigError
from easlurm.inference import input_multiple, super_resolve
from easlurm.models.specs import SwinIROptions, build_generator, generator_spec
from easlurm.models.swinir import SwinIR, shift_mask

REPO = Path(__file__).resolve().parents[1]
TINY = generator_spec("swinir").tiny


def _reference_layout(e: int = 60, depths: tuple[int, ...] = (6, 6, 6, 6), heads: int = 6, ws: int = 8,
                      img: int = 64, hidden: int = 120, scale: int = 4) -> list[tuple[str, tuple[int, ...]]]:
    """The state dict of EA-Adam's models/swinIR/swinIR_network.py ``SwinIR`` (pixelshuffledirect, patch norm,
    resi_connection 1conv, qkv bias, no absolute position embedding), in order, written down from that file:
    a module's own parameters, then its buffers (a shifted block's ``attn_mask``), then its children."""
    out: list[tuple[str, tuple[int, ...]]] = [("conv_first.weight", (e, 3, 3, 3)), ("conv_first.bias", (e,)),
                                              ("patch_embed.norm.weight", (e,)), ("patch_embed.norm.bias", (e,))]
    nw, n = (img // ws) ** 2, ws * ws
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}."
            if j % 2:
                out.append((p + "attn_mask", (nw, n, n)))
            out += [(p + "norm1.weight", (e,)), (p + "norm1.bias", (e,)),
                    (p + "attn.relative_position_bias_table", ((2 * ws - 1) ** 2, heads)),
                    (p + "attn.relative_position_index", (n, n)),
                    (p + "attn.qkv.weight", (3 * e, e)), (p + "attn.qkv.bias", (3 * e,)),
                    (p + "attn.proj.weight", (e, e)), (p + "attn.proj.bias", (e,)),
                    (p + "norm2.weight", (e,)), (p + "norm2.bias", (e,)),
                    (p + "mlp.fc1.weight", (hidden, e)), (p + "mlp.fc1.bias", (hidden,)),
                    (p + "mlp.fc2.weight", (e, hidden)), (p + "mlp.fc2.bias", (e,))]
        out += [(f"layers.{i}.conv.weight", (e, e, 3, 3)), (f"layers.{i}.conv.bias", (e,))]
    out += [("norm.weight", (e,)), ("norm.bias", (e,)), ("conv_after_body.weight", (e, e, 3, 3)),
            ("conv_after_body.bias", (e,)), ("upsample.0.weight", (3 * scale * scale, e, 3, 3)),
            ("upsample.0.bias", (3 * scale * scale,))]
    return out


def test_swinir_light_x4_has_the_reference_keys_shapes_and_parameter_count() -> None:
    model = build_generator("swinir")  # the spec's defaults: SwinIR-light ×4
    sd = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == _reference_layout()
    assert len(sd) == 366
    n_params = sum(p.numel() for p in model.parameters())
    tables = sum(p.numel() for n, p in model.named_parameters() if n.endswith("relative_position_bias_table"))
    assert n_params == 929_628 and n_params - tables == 897_228  # SwinIR paper: SwinIR-light ×4 "897K"
    buffers = dict(model.named_buffers())
    assert sorted(k for k in sd if k in buffers) == sorted(
        [f"layers.{i}.residual_group.blocks.{j}.attn.relative_position_index" for i in range(4) for j in range(6)]
        + [f"layers.{i}.residual_group.blocks.{j}.attn_mask" for i in range(4) for j in (1, 3, 5)])
    assert "mean" in buffers and "mean" not in sd  # the RGB mean is not part of the checkpoint
    assert sd["layers.0.residual_group.blocks.0.attn.relative_position_index"].dtype == torch.int64
    # The index addresses the (2·8−1)² table rows; the mask is 0 within a region and −100 across the shift seam.
    index = sd["layers.2.residual_group.blocks.3.attn.relative_position_index"]
    assert index.min() == 0 and index.max() == 224 and torch.equal(index.diagonal(), torch.full((64,), 112))
    mask = sd["layers.0.residual_group.blocks.1.attn_mask"]
    assert set(mask.unique().tolist()) == {-100.0, 0.0} and (mask[0] == 0).all() and (mask[-1] != 0).any()


def test_other_scales_change_only_the_upsampler() -> None:
    for scale in (2, 3):
        sd = build_generator("swinir", scale=scale).state_dict()
        assert sd["upsample.0.weight"].shape == (3 * scale * scale, 60, 3, 3)
        assert len(sd) == 366


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
def test_the_official_swinir_code_computes_the_same_function() -> None:
    """spandrel's SwinIR is the official SwinIR code: our state dict loads into it strictly, it detects our
    layout as SwinIR-light ×4, and both networks give the same output, padding odd sizes the same way."""
    spandrel = pytest.importorskip("spandrel")
    from spandrel.architectures.SwinIR import SwinIR as OfficialSwinIR

    torch.manual_seed(0)
    ours = SwinIR().eval()
    with torch.no_grad():  # away from the init so every tensor matters
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    official = OfficialSwinIR(upscale=4, img_size=64, window_size=8, img_range=1.0, depths=[6, 6, 6, 6],
                              embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler="pixelshuffledirect",
                              resi_connection="1conv").eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    desc = spandrel.ModelLoader().load_from_state_dict(ours.state_dict())
    assert desc.architecture.id == "SwinIR" and desc.scale == 4
    for shape in ((1, 3, 16, 24), (2, 3, 13, 10)):
        x = torch.rand(*shape)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), official(x), rtol=1e-4, atol=1e-4)


def test_tiny_forward_backward_pads_and_crops() -> None:
    torch.manual_seed(0)
    model = build_generator("swinir", **TINY)
    x = torch.rand(2, 3, 6, 9)  # not multiples of the window (4): padded inside and cropped back
    y = model(x)
    assert y.shape == (2, 3, 24, 36)
    (y - torch.rand_like(y)).abs().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["layers.1.residual_group.blocks.1.attn.relative_position_bias_table"].abs().sum() > 0
    # Stochastic depth acts in training only: eval is deterministic, training is not.
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_shift_mask_separates_regions_the_shift_brought_together() -> None:
    mask = shift_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window lies inside one region
    # The bottom-right window holds tokens of four regions: a token sees only its own region's tokens.
    allowed = (mask[3] == 0).sum(dim=1)
    assert allowed.tolist() == [4] * 16


def test_options_are_checked_with_the_field_named() -> None:
    with pytest.raises(ConfigError, match=r"model\.num_heads: \[2\] has 1 entries, model\.depths \[2, 2\] has 2"):
        SwinIROptions(depths=[2, 2], num_heads=[2])
    with pytest.raises(ConfigError, match=r"model\.num_heads: model\.embed_dim 60 is not divisible by 7 heads"):
        SwinIROptions(num_heads=[6, 7, 6, 6])
    with pytest.raises(ConfigError, match=r"model\.depths: expected a non-empty list of positive integers"):
        SwinIROptions(depths=[], num_heads=[])
    opts = SwinIROptions()
    opts.depths = [2, 2]  # a --set override changes one field at a time; building checks the whole
    with pytest.raises(ConfigError, match=r"model\.num_heads"):
        generator_spec("swinir").build(opts, 4)


def test_the_config_checks_patches_against_the_window(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "swinir.yaml")
    assert isinstance(factory.build_generator(cfg), SwinIR)
    spec = generator_spec("swinir")
    assert spec.side_multiple(4, cfg.model.options) == 8
    with pytest.raises(ConfigError, match=r"data\.patch_size: 128 px gives LR patches of 32 px, but swinir at ×4 "
                                          r"takes LR sides that are multiples of 12"):
        load_config(REPO / "configs" / "swinir.yaml", ["model.window_size=12", "model.img_size=48"])
    assert load_config(REPO / "configs" / "swinir.yaml", ["model.window_size=16"]).model.options.window_size == 16


def test_inference_pads_to_the_window_of_the_built_model() -> None:
    torch.manual_seed(1)
    model = build_generator("swinir", **TINY).eval()
    assert input_multiple(model, 4) == 4
    img = np.random.default_rng(0).integers(0, 256, (11, 7, 3), dtype=np.uint8)
    whole = super_resolve(model, img, 4)
    assert whole.shape == (44, 28, 3)
    with pytest.raises(Exception, match="multiples of 4"):
        super_resolve(model, img, 4, tile=6, overlap=4)
    tiled = super_resolve(model, img, 4, tile=8, overlap=4)
    assert tiled.shape == whole.shape


def test_upscale_takes_swinir_options_as_flags(tmp_path: Path) -> None:
    from PIL import Image

    from easlurm.upscale import main as upscale_main

    torch.manual_seed(2)
    model = build_generator("swinir", **TINY)
    torch.save({"params": model.state_dict()}, tmp_path / "g.pth")
    (tmp_path / "lr").mkdir()
    img = np.random.default_rng(3).integers(0, 256, (9, 10, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "lr" / "a.png")
    args = ["--model", str(tmp_path / "g.pth"), "--input", str(tmp_path / "lr"), "--arch", "swinir",
            "--img-size", "8", "--embed-dim", "12", "--depths", "[2, 2]", "--num-heads=[2,2]", "--window-size", "4"]
    assert upscale_main([*args, "--output", str(tmp_path / "sr")]) == 0
    assert np.asarray(Image.open(tmp_path / "sr" / "a.png")).shape == (36, 40, 3)
    assert upscale_main([*args[:-2], "--window-size", "8", "--output", str(tmp_path / "sr2")]) == 2  # does not fit
