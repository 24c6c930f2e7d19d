"""Dynamic-conv fusion wrapper, attention averaging and weight merging on tiny backbones."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from easlurm.fuse.dynamic import (
    AttentionAverager,
    DynamicConv2d,
    attention_parameters,
    average_attention,
    dynamic_layers,
    make_dynamic,
    set_fixed_attention,
    set_record,
)
from easlurm.fuse.collapse import merge_from_dynamic
from easlurm.fuse.merge import FusionError, merge_state_dicts

K = 3


class ResBlock(nn.Module):
    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class ToyNet(nn.Module):
    """conv → 2 residual blocks → conv + pixel shuffle ×2 → conv, plus a bilinear skip (like MSRResNet)."""

    def __init__(self, nf: int = 6, blocks: int = 2, prelu: bool = False) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.body = nn.Sequential(*[ResBlock(nf) for _ in range(blocks)])
        self.upconv = nn.Conv2d(nf, nf * 4, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU(nf) if prelu else nn.LeakyReLU(0.1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.leaky_relu(self.conv_first(x), 0.1)
        feat = self.body(feat)
        feat = self.act(self.shuffle(self.upconv(feat)))
        return self.conv_last(feat) + F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class OddConvs(nn.Module):
    """Convs with stride, dilation, no bias, a rectangular kernel and asymmetric padding."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False)
        self.b = nn.Conv2d(5, 4, (3, 1), stride=1, padding=(2, 0), dilation=2)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


def _experts(factory=ToyNet, k: int = K, **kwargs) -> list[nn.Module]:
    out = []
    for seed in range(k):
        torch.manual_seed(100 + seed)
        out.append(factory(**kwargs).eval())
    return out


def _one_hot(i: int, k: int = K) -> torch.Tensor:
    v = torch.zeros(k)
    v[i] = 1.0
    return v


@pytest.fixture(autouse=True)
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _lr(n: int = 2, h: int = 9, w: int = 11, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


# --- structure -------------------------------------------------------------------------------------------------

def test_every_conv_becomes_dynamic_and_experts_untouched() -> None:
    experts = _experts()
    before = [copy.deepcopy(e.state_dict()) for e in experts]
    dyn = make_dynamic(experts, att_kernel=3, att_channels=10, att_hidden=4)
    names = [n for n, _ in dynamic_layers(dyn)]
    assert names == ["conv_first", "body.0.conv1", "body.0.conv2", "body.1.conv1", "body.1.conv2", "upconv",
                     "conv_last"]
    # No plain conv left outside the attention branches.
    plain = [n for n, m in dyn.named_modules() if isinstance(m, nn.Conv2d) and ".attention." not in f".{n}."]
    assert plain == []
    for e, sd in zip(experts, before):
        for key, t in e.state_dict().items():
            assert torch.equal(t, sd[key])
    layer = dyn.get_submodule("body.1.conv2")
    assert isinstance(layer, DynamicConv2d)
    assert layer.weight.shape == (K, 6, 6, 3, 3) and layer.bias.shape == (K, 6)
    assert torch.equal(layer.weight[2], experts[2].body[1].conv2.weight)


def test_attention_branch_layout_matches_reference() -> None:
    dyn = make_dynamic(_experts(), att_kernel=5, att_channels=100)
    branch = dyn.get_submodule("upconv").attention
    convs = [m for m in branch.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (6, 64, (5, 5), (1, 1), (2, 2)), (64, 64, (5, 5), (1, 1), (2, 2)), (64, 100, (5, 5), (1, 1), (2, 2))]
    acts = [m for m in branch.features if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 3 and all(a.negative_slope == 0.2 for a in acts)
    lin = [m for m in branch.mapping if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(100, 15), (15, K)]
    att = branch(torch.rand(4, 6, 7, 5))
    assert att.shape == (4, K)
    torch.testing.assert_close(att.sum(dim=1), torch.ones(4))
    assert (att > 0).all()


# --- forward semantics -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("factory", [ToyNet, OddConvs])
def test_one_hot_fixed_attention_equals_that_expert(factory) -> None:
    experts = _experts(factory)
    dyn = make_dynamic(experts, att_channels=8, att_hidden=4).eval()
    x = _lr(3, 10, 13)
    with torch.no_grad():
        for k in range(K):
            set_fixed_attention(dyn, _one_hot(k))
            torch.testing.assert_close(dyn(x), experts[k](x), rtol=0, atol=1e-6)


def test_per_image_attention_uses_grouped_conv_correctly() -> None:
    # One dynamic layer on its own: compare the batched grouped conv with an explicit per-image computation.
    torch.manual_seed(0)
    convs = [nn.Conv2d(4, 5, 3, stride=2, padding=1) for _ in range(K)]
    layer = DynamicConv2d(convs, att_kernel=3, att_channels=6, att_hidden=4, name="solo")
    layer.record = True
    x = torch.randn(3, 4, 9, 8)
    with torch.no_grad():
        out = layer(x)
        att = layer.last_attention
        assert att is not None and att.shape == (3, K)
        assert not torch.allclose(att[0], att[1])  # images get different mixes, so the check below has teeth
        for n in range(3):
            w = sum(att[n, k] * convs[k].weight for k in range(K))
            b = sum(att[n, k] * convs[k].bias for k in range(K))
            ref = F.conv2d(x[n:n + 1], w, b, stride=2, padding=1)
            torch.testing.assert_close(out[n:n + 1], ref, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(layer(x[n:n + 1]), ref, rtol=1e-5, atol=1e-6)


def test_uniform_fixed_attention_equals_uniform_merge() -> None:
    experts = _experts()
    dyn = make_dynamic(experts, att_channels=8, att_hidden=4).eval()
    names = [n for n, _ in dynamic_layers(dyn)]
    merged_sd = merge_from_dynamic(dyn, {n: [1.0 / K] * K for n in names})
    merged = ToyNet()
    merged.load_state_dict(merged_sd, strict=True)
    merged.eval()
    set_fixed_attention(dyn, torch.full((K,), 1.0 / K))
    x = _lr()
    with torch.no_grad():
        got, ref = dyn(x), merged(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # And the uniform merge really differs from every single expert.
    with torch.no_grad():
        assert all(not torch.allclose(ref, e(x), atol=1e-3) for e in experts)


# --- merging ---------------------------------------------------------------------------------------------------

def _conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_merge_one_hot_is_exactly_that_expert() -> None:
    experts = _experts()
    sds = [e.state_dict() for e in experts]
    names = _conv_names(experts[0])
    for k in range(K):
        merged = merge_state_dicts(sds, {n: _one_hot(k).tolist() for n in names}, names)
        assert list(merged) == list(sds[k])
        for key in merged:
            assert torch.equal(merged[key], sds[k][key]), key


def test_merge_uniform_is_parameter_mean_and_mixed_is_per_layer() -> None:
    experts = _experts()
    sds = [e.state_dict() for e in experts]
    names = _conv_names(experts[0])
    merged = merge_state_dicts(sds, {n: np.full(K, 1.0 / K) for n in names}, names)
    for key in merged:
        torch.testing.assert_close(merged[key], torch.stack([sd[key] for sd in sds]).mean(0), rtol=1e-6, atol=1e-7)
    # Different weights per layer: each layer follows its own vector.
    weights = {n: np.roll([0.5, 0.3, 0.2], i) for i, n in enumerate(names)}
    merged = merge_state_dicts(sds, weights, names)
    for n in names:
        w = weights[n]
        for suffix in ("weight", "bias"):
            key = f"{n}.{suffix}"
            ref = sum(float(w[k]) * sds[k][key].double() for k in range(K)).float()
            torch.testing.assert_close(merged[key], ref, rtol=0, atol=1e-7)


def test_merge_from_dynamic_loads_strict_and_one_hot_is_exact() -> None:
    experts = _experts(OddConvs)
    dyn = make_dynamic(experts, att_channels=8, att_hidden=4)
    names = [n for n, _ in dynamic_layers(dyn)]
    sd = merge_from_dynamic(dyn, {n: _one_hot(1).numpy() for n in names})
    plain = OddConvs()
    plain.load_state_dict(sd, strict=True)
    assert list(sd) == list(experts[1].state_dict())
    for key, t in experts[1].state_dict().items():
        assert torch.equal(sd[key], t)


@pytest.mark.parametrize("bad, match", [
    ([0.5, 0.6, -0.1], "non-negative"),
    ([0.5, 0.3, 0.3], "sum to 1"),
    ([0.5, 0.5], "expected 3"),
    ([float("nan"), 0.5, 0.5], "finite"),
])
def test_bad_layer_weights_name_the_layer(bad, match) -> None:
    experts = _experts()
    sds = [e.state_dict() for e in experts]
    names = _conv_names(experts[0])
    weights = {n: [1.0 / K] * K for n in names}
    weights["body.1.conv1"] = bad
    with pytest.raises(ValueError, match=rf"'body\.1\.conv1'.*{match}"):
        merge_state_dicts(sds, weights, names)


def test_missing_or_unknown_layer_weights() -> None:
    experts = _experts()
    sds = [e.state_dict() for e in experts]
    names = _conv_names(experts[0])
    weights = {n: [1.0 / K] * K for n in names}
    del weights["upconv"]
    with pytest.raises(FusionError, match="'upconv'"):
        merge_state_dicts(sds, weights, names)
    weights["upconv"] = [1.0 / K] * K
    weights["upcvon"] = [1.0 / K] * K
    with pytest.raises(FusionError, match="'upcvon'"):
        merge_state_dicts(sds, weights, names)
    # Within the tolerance is accepted.
    weights.pop("upcvon")
    weights["upconv"] = [0.5, 0.5 + 5e-7, 0.0]
    merge_state_dicts(sds, weights, names)


def test_non_conv_entries_identical_kept_differing_averaged() -> None:
    experts = _experts(prelu=True)
    # PReLU slopes differ between experts: the dynamic model and the merge both use their uniform mean.
    for k, e in enumerate(experts):
        with torch.no_grad():
            e.act.weight.fill_(0.1 * (k + 1))
    dyn = make_dynamic(experts, att_channels=8, att_hidden=4).eval()
    torch.testing.assert_close(dyn.act.weight, torch.full((6,), 0.2))
    assert not dyn.act.weight.requires_grad
    names = [n for n, _ in dynamic_layers(dyn)]
    merged = merge_from_dynamic(dyn, {n: _one_hot(0) for n in names})
    torch.testing.assert_close(merged["act.weight"], torch.full((6,), 0.2))
    # Identical slopes are kept bit for bit (no (x+x+x)/3 rounding).
    odd = torch.linspace(0.013, 0.37, 6)
    for e in experts:
        with torch.no_grad():
            e.act.weight.copy_(odd)
    sds = [e.state_dict() for e in experts]
    merged = merge_state_dicts(sds, {n: [1.0 / K] * K for n in names}, names)
    assert torch.equal(merged["act.weight"], odd)


def test_differing_integer_buffers_are_rejected() -> None:
    sds = [{"conv.weight": torch.ones(1, 1, 1, 1) * k, "bn.num_batches_tracked": torch.tensor(k)} for k in range(2)]
    with pytest.raises(FusionError, match="bn.num_batches_tracked"):
        merge_state_dicts(sds, {"conv": [0.5, 0.5]}, ["conv"])
    sds[1]["bn.num_batches_tracked"] = torch.tensor(0)
    out = merge_state_dicts(sds, {"conv": [0.5, 0.5]}, ["conv"])
    assert out["conv.weight"].item() == 0.5 and out["bn.num_batches_tracked"].item() == 0


# --- structure errors ------------------------------------------------------------------------------------------

def test_structure_mismatch_names_first_layer() -> None:
    experts = _experts()
    wide = _experts(k=1)[0]
    wide.upconv = nn.Conv2d(6, 6 * 4, 5, 1, 2)  # same channels, different kernel
    with pytest.raises(FusionError, match=r"expert 1 .*'upconv'"):
        make_dynamic([experts[0], wide, experts[2]])
    longer = ToyNet(blocks=3)
    with pytest.raises(FusionError, match=r"expert 2 .*'body\.2"):
        make_dynamic([experts[0], experts[1], longer])
    strided = copy.deepcopy(experts[1])
    old = strided.body[0].conv2
    strided.body[0].conv2 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
    strided.body[0].conv2.load_state_dict(old.state_dict())
    with pytest.raises(FusionError, match=r"'body\.0\.conv2'.*stride"):
        make_dynamic([experts[0], strided])


def test_shared_conv_is_rejected() -> None:
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
    net.append(net[0])
    with pytest.raises(FusionError, match="same module"):
        make_dynamic([net, copy.deepcopy(net)])


def test_bare_conv_backbone() -> None:
    convs = [nn.Conv2d(3, 4, 3, padding=1) for _ in range(2)]
    dyn = make_dynamic(convs, att_channels=4, att_hidden=4)
    assert isinstance(dyn, DynamicConv2d)
    sd = merge_from_dynamic(dyn, {"": [0.25, 0.75]})
    plain = nn.Conv2d(3, 4, 3, padding=1)
    plain.load_state_dict(sd, strict=True)
    torch.testing.assert_close(plain.weight, 0.25 * convs[0].weight + 0.75 * convs[1].weight)


# --- training-time behaviour -----------------------------------------------------------------------------------

def test_only_attention_trains_and_expert_kernels_stay_frozen() -> None:
    experts = _experts(prelu=True)
    dyn = make_dynamic(experts, att_channels=8, att_hidden=4).train()
    trainable = {n for n, p in dyn.named_parameters() if p.requires_grad}
    assert trainable and all(".attention." in n for n in trainable)
    assert {id(p) for p in attention_parameters(dyn)} == {id(p) for p in dyn.parameters() if p.requires_grad}
    assert not any(b.requires_grad for b in dyn.buffers())
    kernels = {n: b.clone() for n, b in dyn.named_buffers()}
    att_before = [p.detach().clone() for p in attention_parameters(dyn)]
    opt = torch.optim.Adam(attention_parameters(dyn), lr=1e-2)
    x, target = _lr(), torch.rand(2, 3, 18, 22)
    loss = F.l1_loss(dyn(x), target)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in attention_parameters(dyn))
    assert any(p.grad.abs().sum() > 0 for p in attention_parameters(dyn))
    opt.step()
    for n, b in dyn.named_buffers():
        assert torch.equal(b, kernels[n]), n
    assert any(not torch.equal(p, q) for p, q in zip(attention_parameters(dyn), att_before))


# --- averaging -------------------------------------------------------------------------------------------------

def test_average_attention_is_per_image_mean_in_module_order() -> None:
    experts = _experts()
    dyn = make_dynamic(experts, att_channels=8, att_hidden=4).train()
    images = _lr(3, 8, 10, seed=4)
    batches = [images[:2], images[2:]]
    avg = average_attention(dyn, batches)
    names = [n for n, _ in dynamic_layers(dyn)]
    assert list(avg) == names
    assert dyn.training  # mode restored
    assert all(not layer.record and layer.last_attention is None for _, layer in dynamic_layers(dyn))
    # Reference: one image at a time, recorded by hand.
    set_record(dyn, True)
    dyn.eval()
    per_image = {n: [] for n in names}
    with torch.no_grad():
        for i in range(3):
            dyn(images[i:i + 1])
            for n, layer in dynamic_layers(dyn):
                per_image[n].append(layer.last_attention[0].double().numpy())
    for n in names:
        np.testing.assert_allclose(avg[n], np.mean(per_image[n], axis=0), rtol=0, atol=1e-7)
        assert avg[n].shape == (K,) and abs(avg[n].sum() - 1) < 1e-6
    # The averaged dynamic model and the merged backbone compute the same thing.
    set_record(dyn, False)
    set_fixed_attention(dyn, avg)
    merged = ToyNet()
    merged.load_state_dict(merge_from_dynamic(dyn, avg), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(dyn(images), merged.eval()(images), rtol=1e-5, atol=1e-5)


def test_averager_refuses_missing_records() -> None:
    dyn = make_dynamic(_experts(), att_channels=8, att_hidden=4)
    averager = AttentionAverager(dyn)
    with pytest.raises(FusionError, match="recorded nothing"):
        averager.update()
    with pytest.raises(FusionError, match="no images"):
        averager.averages()
    with pytest.raises(FusionError, match="batch 0"):
        average_attention(dyn, [torch.rand(3, 8, 8)])


# --- real backbones (written in parallel; skipped until they exist) ---------------------------------------------

def _backbones():
    out = []
    try:
        from easlurm.models.srresnet import MSRResNet
        out.append(pytest.param(lambda: MSRResNet(num_feat=8, num_block=2, upscale=4), id="msrresnet"))
    except ImportError:
        out.append(pytest.param(None, id="msrresnet", marks=pytest.mark.skip("easlurm.models.srresnet missing")))
    try:
        from easlurm.models.rrdb import RRDBNet
        out.append(pytest.param(lambda: RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4), id="rrdbnet"))
    except ImportError:
        out.append(pytest.param(None, id="rrdbnet", marks=pytest.mark.skip("easlurm.models.rrdb missing")))
    return out


@pytest.mark.parametrize("factory", _backbones())
def test_real_backbones(factory) -> None:
    experts = _experts(factory, k=2)
    dyn = make_dynamic(experts, att_kernel=3, att_channels=8, att_hidden=4).eval()
    convs = _conv_names(experts[0])
    assert [n for n, _ in dynamic_layers(dyn)] == convs
    x = _lr(1, 8, 8)
    with torch.no_grad():
        set_fixed_attention(dyn, _one_hot(1, 2))
        torch.testing.assert_close(dyn(x), experts[1](x), rtol=0, atol=1e-6)
        weights = {n: [0.3, 0.7] for n in convs}
        set_fixed_attention(dyn, weights)
        plain = factory()
        plain.load_state_dict(merge_from_dynamic(dyn, weights), strict=True)
        torch.testing.assert_close(dyn(x), plain.eval()(x), rtol=1e-5, atol=1e-5)
