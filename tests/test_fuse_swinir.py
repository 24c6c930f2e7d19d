"""Fusion of transformer experts: dynamic linear and LayerNorm layers (easlurm.fuse.token_layers), built by module type
from SwinIR, and the collapse of 3 tiny SwinIR experts into one plain SwinIR-light that loads strictly."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from easlurm.fuse.collapse import merge_from_dynamic
from easlurm.fuse.dynamic import (
    DynamicConv2d, DynamicLayerNorm, DynamicLinear, average_attention, dynamic_layers, make_dynamic,
    set_fixed_attention, set_record,
)
from easlurm.fuse.merge import FusionError
from easlurm.models.specs import build_generator, generator_spec

K = 3
TINY = generator_spec("swinir").tiny


pytestmark = pytest.mark.usefixtures("one_thread")


def _experts(k: int = K, same_tables: bool = False) -> list[nn.Module]:
    out = []
    for seed in range(k):
        torch.manual_seed(300 + seed)
        m = build_generator("swinir", **TINY).eval()
        with torch.no_grad():  # away from the init (zero biases, unit norms) so every tensor tells experts apart
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out.append(m)
    if same_tables:  # the bias tables are no layer: they are averaged uniformly, so make them equal
        for m in out[1:]:
            for name, p in m.named_parameters():
                if name.endswith("relative_position_bias_table"):
                    p.data.copy_(out[0].get_parameter(name))
    return out


def _lr(n: int = 2, h: int = 8, w: int = 12) -> torch.Tensor:
    torch.manual_seed(7)
    return torch.rand(n, 3, h, w)


def test_every_conv_linear_and_layernorm_of_swinir_becomes_dynamic() -> None:
    experts = _experts()
    dyn = make_dynamic(experts, att_kernel=5, att_channels=8, att_hidden=4)
    kinds = {nn.Conv2d: DynamicConv2d, nn.Linear: DynamicLinear, nn.LayerNorm: DynamicLayerNorm}
    expected = [(n, kinds[type(m)]) for n, m in experts[0].named_modules() if type(m) in kinds]
    assert [(n, type(m)) for n, m in dynamic_layers(dyn)] == expected
    assert len(expected) == 31  # 6 token layers × 4 blocks, 2 group convs, 2 norms, 3 convs
    qkv = dyn.get_submodule("layers.1.residual_group.blocks.1.attn.qkv")
    assert qkv.weight.shape == (K, 36, 12) and qkv.bias.shape == (K, 36)
    assert torch.equal(qkv.weight[2], experts[2].get_submodule("layers.1.residual_group.blocks.1.attn.qkv").weight)
    # No plain layer of those kinds is left outside the attention branches; bias tables and buffers stay plain.
    plain = [n for n, m in dyn.named_modules() if type(m) in kinds and ".attention." not in f".{n}."]
    assert plain == []
    own = dict(dyn.named_parameters())
    assert "layers.0.residual_group.blocks.0.attn.relative_position_bias_table" in own
    assert all(".attention." in n for n, p in own.items() if p.requires_grad)
    assert not any(p.requires_grad for n, p in own.items() if ".attention." not in n)


def test_dynamic_linear_mixes_per_image_on_window_batches() -> None:
    """qkv sees (B·windows, ws², C): the layer groups the windows by image when told the batch size."""
    torch.manual_seed(0)
    linears = [nn.Linear(6, 5) for _ in range(K)]
    layer = DynamicLinear(linears, att_hidden=4, att_channels=8, name="qkv")
    layer.record = True
    b, windows = 3, 4
    x = torch.randn(b * windows, 16, 6)
    layer.batch_size = b
    with torch.no_grad():
        out = layer(x)
        att = layer.last_attention
        assert att is not None and att.shape == (b, K) and not torch.allclose(att[0], att[1])
        for n in range(b):
            w = sum(att[n, k] * linears[k].weight for k in range(K))
            bias = sum(att[n, k] * linears[k].bias for k in range(K))
            rows = slice(n * windows, (n + 1) * windows)
            torch.testing.assert_close(out[rows], F.linear(x[rows], w, bias), rtol=1e-5, atol=1e-6)
    layer.batch_size = 5
    with pytest.raises(FusionError, match="layer 'qkv': input \\(12, 16, 6\\) is not a batch of 5 images"):
        layer(x)


def test_dynamic_layernorm_normalises_then_scales_per_image() -> None:
    torch.manual_seed(1)
    norms = [nn.LayerNorm(6) for _ in range(K)]
    with torch.no_grad():
        for m in norms:
            m.weight.normal_()
            m.bias.normal_()
    layer = DynamicLayerNorm(norms, att_hidden=4, att_channels=8, name="norm1")
    layer.record = True
    x = 3 * torch.randn(2, 10, 6) + 1
    with torch.no_grad():
        out = layer(x)
        att = layer.last_attention
        assert att is not None
        for n in range(2):
            w = sum(att[n, k] * norms[k].weight for k in range(K))
            b = sum(att[n, k] * norms[k].bias for k in range(K))
            torch.testing.assert_close(out[n], F.layer_norm(x[n], (6,), w, b, 1e-5), rtol=1e-5, atol=1e-5)
        layer.fixed_attention = torch.tensor([0.0, 1.0, 0.0])
        torch.testing.assert_close(layer(x), norms[1](x), rtol=0, atol=0)


def test_one_hot_attention_is_that_expert_when_the_bias_tables_agree() -> None:
    experts = _experts(same_tables=True)
    dyn = make_dynamic(experts, att_channels=8, att_hidden=4).eval()
    x = _lr()
    with torch.no_grad():
        for k in range(K):
            set_fixed_attention(dyn, torch.eye(K)[k])
            torch.testing.assert_close(dyn(x), experts[k](x), rtol=0, atol=1e-6)


def test_the_fusion_network_mixes_per_image_as_its_attention_says() -> None:
    """With its attention branches on, the fusion network's output for each image of a batch equals a plain SwinIR
    whose every layer is that image's attention-weighted combination of the experts."""
    experts = _experts()
    dyn = make_dynamic(experts, att_kernel=5, att_channels=8, att_hidden=4).eval()
    x = _lr(n=2)
    set_record(dyn, True)
    with torch.no_grad():
        out = dyn(x)
    per_image = [{name: layer.last_attention[n] for name, layer in dynamic_layers(dyn)} for n in range(2)]
    assert not torch.allclose(per_image[0]["norm"], per_image[1]["norm"])
    set_record(dyn, False)
    for n in range(2):
        plain = build_generator("swinir", **TINY).eval()
        plain.load_state_dict(merge_from_dynamic(dyn, per_image[n]), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(out[n:n + 1], plain(x[n:n + 1]), rtol=1e-4, atol=1e-5)


def test_three_experts_collapse_into_a_plain_swinir_equal_to_the_averaged_fusion_network() -> None:
    experts = _experts()
    dyn = make_dynamic(experts, att_kernel=5, att_channels=8, att_hidden=4).eval()
    crops = [_lr(1, 8, 8), _lr(2, 12, 8), _lr(1, 16, 12)]  # training crops of different sizes
    averages = average_attention(dyn, crops)
    assert len(averages) == 31 and all(abs(v.sum() - 1) < 1e-6 for v in averages.values())
    fused = build_generator("swinir", **TINY).eval()
    fused.load_state_dict(merge_from_dynamic(dyn, averages), strict=True)
    set_fixed_attention(dyn, averages)
    x = _lr(2, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), dyn(x), rtol=1e-5, atol=1e-5)
        assert all(not torch.allclose(fused(x), e(x), atol=1e-3) for e in experts)
    sd = fused.state_dict()
    table = "layers.1.residual_group.blocks.0.attn.relative_position_bias_table"
    torch.testing.assert_close(sd[table], sum(e.state_dict()[table] for e in experts) / K)  # uniform: no layer
    assert torch.equal(sd["layers.0.residual_group.blocks.1.attn_mask"],
                       experts[0].state_dict()["layers.0.residual_group.blocks.1.attn_mask"])


def test_the_full_size_fusion_network_builds_on_the_meta_device() -> None:
    """The bill sizes the fusion files from a dynamic SwinIR-light built without weights."""
    with torch.device("meta"):
        g = build_generator("swinir")
        dyn = make_dynamic([g] * 5, att_kernel=5, att_channels=100)
    layers = dynamic_layers(dyn)
    assert len(layers) == 6 * 24 + 2 + 7
    assert all(layer.weight.is_meta and layer.weight.shape[0] == 5 for _, layer in layers)
