"""SwinIR with the lightweight reconstruction head — the paper's third backbone, SwinIR-light (Liang et al., "SwinIR:
Image Restoration Using Swin Transformer", ICCV workshops 2021; EA-Adam's ``models/swinIR`` and its
``configs/swinIR_gan.yml``).

Structure (images NCHW RGB in [0, 1] in, ×``upscale`` out, unclamped):

    pad (reflect, bottom/right) to a multiple of ``window_size`` → (x − RGB mean)·img_range → conv_first (3 → E)
    → tokens (B, H·W, E) → patch_embed.norm → ``len(depths)`` residual Swin groups → norm → conv_after_body
    (+ the conv_first features) → upsample (conv E → 3·s², pixel shuffle ×s) → /img_range + mean → crop

A residual group (``layers.i``) is ``depths[i]`` Swin blocks (``residual_group.blocks.j``: LayerNorm → window
attention with a learned relative-position bias → residual; LayerNorm → MLP (E → mlp_ratio·E → E, GELU) →
residual), then a 3×3 conv on the image layout, plus the group's input. Odd blocks shift the windows by half a
window (``torch.roll``) and mask attention across the shifted borders.

State-dict layout: the keys and shapes of the official SwinIR code and EA-Adam's copy of it, so the public
SwinIR-light checkpoints (``params``) load with ``strict=True``. That includes two kinds of registered buffers —
``attn.relative_position_index`` (int64, every block) and ``attn_mask`` (float 0/−100, blocks with a shift, built
for an ``img_size`` × ``img_size`` LR input; other sizes get their mask computed on the fly). The RGB mean is a
non-persistent buffer (not in the state dict, as in SwinIR where it is a plain attribute). SwinIR-light ×4
(embed 60, depths and heads [6, 6, 6, 6], window 8, mlp ratio 2): 929,628 parameters — 897,228 without the 24
relative-position bias tables, the "897K" of the SwinIR paper — and 366 state-dict entries, 36 of them buffers.

Differences from the reference code that change no weight: attention runs through
``F.scaled_dot_product_attention`` (same maths: softmax(q·kᵀ/√d + bias + mask)·v); inputs narrower than the
padding needs are padded by replication instead of reflection (reflection is impossible there); the
stochastic-depth ("drop path") decay rule and the weight initialisation (truncated normal σ 0.02 for linear weights
and bias tables, zero biases, unit LayerNorms, PyTorch's default for convs) are SwinIR's.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SwinIR", "WindowAttention", "SwinBlock", "window_partition", "window_merge", "shift_mask"]

_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, as SwinIR
_MASKED = -100.0


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) → (B·nW, ws·ws, C): non-overlapping ws×ws windows, image-major then row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_merge(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B·nW, ws·ws, C) → (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shift_mask(h: int, w: int, ws: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """Attention mask of a window shifted by ``shift`` on an h×w map: (nW, ws², ws²), 0 where two tokens come from
    the same region of the unshifted map, −100 where the cyclic shift put them side by side."""
    region = torch.zeros(h, w, device=device)
    label = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            region[hs, wsl] = label
            label += 1
    ids = window_partition(region.view(1, h, w, 1), ws).squeeze(-1)  # (nW, ws²)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(_MASKED, device=device), torch.tensor(0.0, device=device))


def _relative_index(ws: int) -> torch.Tensor:
    """(ws², ws²) int64: the row of the bias table for each (query, key) pair of a window."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, ws²)
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # (2, ws², ws²), each in [0, 2ws-2]
    return rel[0] * (2 * ws - 1) + rel[1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws×ws windows with a learned relative-position bias per head.

    Input (B·nW, ws², C) tokens and an optional (nW, ws², ws²) additive mask; output the same shape as the input.
    """

    def __init__(self, dim: int, ws: int, heads: int) -> None:
        super().__init__()
        self.ws, self.heads = ws, heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.register_buffer("relative_position_index", _relative_index(ws))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """(heads, ws², ws²) bias added to the attention logits."""
        n = self.ws * self.ws
        index = self.relative_position_index.reshape(-1)  # type: ignore[operator]
        return self.relative_position_bias_table[index].view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.position_bias().unsqueeze(0)  # (1, heads, n, n)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        else:
            # Fold the windows into the head axis so one (nW·heads, n, n) bias broadcasts over the images.
            nw = mask.shape[0]
            bias = (bias + mask.unsqueeze(1)).reshape(1, nw * self.heads, n, n).to(q.dtype)
            fold = (bw // nw, nw * self.heads, n, c // self.heads)
            out = F.scaled_dot_product_attention(q.reshape(fold), k.reshape(fold), v.reshape(fold), attn_mask=bias)
            out = out.view(bw, self.heads, n, c // self.heads)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    """fc1 (C → hidden) · GELU · fc2 (hidden → C) on tokens."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: in training, zero a sample's residual branch with probability p (survivors ÷ (1 − p))."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    alive = torch.floor(keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device))
    return x / keep * alive


class SwinBlock(nn.Module):
    """norm1 · (shifted) window attention · residual, norm2 · MLP · residual, on (B, H·W, C) tokens."""

    def __init__(self, dim: int, resolution: int, heads: int, ws: int, shift: int, mlp_ratio: float,
                 drop_path: float) -> None:
        super().__init__()
        if resolution <= ws:  # SwinIR: a window as large as the map is not partitioned nor shifted
            ws, shift = resolution, 0
        self.ws, self.shift, self.resolution, self.drop_path = ws, shift, resolution, drop_path
        self.register_buffer("attn_mask", shift_mask(resolution, resolution, ws, shift) if shift else None)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        mask: torch.Tensor | None = None
        if self.shift:
            stored = self.attn_mask
            mask = stored if (h, w) == (self.resolution,) * 2 and isinstance(stored, torch.Tensor) \
                else shift_mask(h, w, self.ws, self.shift, x.device)
        y = window_merge(self.attn(window_partition(y, self.ws), mask), self.ws, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + _drop_path(y.reshape(b, h * w, c), self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class SwinGroup(nn.Module):
    """The blocks of one residual group (``residual_group.blocks``)."""

    def __init__(self, blocks: Sequence[SwinBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, size)
        return x


def _to_image(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, size[0], size[1])


class ResidualGroup(nn.Module):
    """RSTB: Swin blocks, then a 3×3 conv on the image layout, plus the group's input."""

    def __init__(self, dim: int, blocks: Sequence[SwinBlock]) -> None:
        super().__init__()
        self.residual_group = SwinGroup(blocks)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.conv(_to_image(self.residual_group(x, size), size))
        return y.flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) → tokens (B, H·W, C), then LayerNorm (patch size 1, as SwinIR for SR)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.flatten(2).transpose(1, 2))


class SwinIR(nn.Module):
    """SwinIR with the ``pixelshuffledirect`` head (SwinIR-light at the defaults); see the module docstring.

    Args:
        img_size: LR side the stored attention masks are built for (public SwinIR-light checkpoints: 64).
        embed_dim: token width E. depths / num_heads: blocks and heads per residual group (equal lengths).
        window_size: attention window side; inputs are padded to a multiple of it (and the output cropped).
        mlp_ratio: MLP hidden width ÷ E. img_range: pixel range inside the network (1.0 or 255.0).
        drop_path_rate: stochastic depth, rising linearly from 0 to this over all blocks (training only).
        upscale: the factor (one conv to 3·upscale² channels and a pixel shuffle).
    """

    def __init__(self, img_size: int = 64, embed_dim: int = 60, depths: Sequence[int] = (6, 6, 6, 6),
                 num_heads: Sequence[int] = (6, 6, 6, 6), window_size: int = 8, mlp_ratio: float = 2.0,
                 img_range: float = 1.0, drop_path_rate: float = 0.1, upscale: int = 4) -> None:
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        if not depths or len(depths) != len(num_heads) or min(depths + num_heads) < 1:
            raise ValueError(f"SwinIR: depths {depths} and num_heads {num_heads} must be equally long lists of "
                             f"positive numbers")
        bad = [h for h in num_heads if embed_dim % h]
        if bad:
            raise ValueError(f"SwinIR: embed_dim {embed_dim} is not divisible by {bad[0]} heads")
        self.upscale, self.img_range, self.window_size = upscale, float(img_range), window_size
        self.mean: torch.Tensor
        self.register_buffer("mean", torch.tensor(_RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear from 0 (no tensor: meta)
        self.layers = nn.ModuleList()
        first = 0
        for depth, heads in zip(depths, num_heads):
            blocks = [SwinBlock(embed_dim, img_size, heads, window_size, window_size // 2 if j % 2 else 0,
                                mlp_ratio, rates[first + j]) for j in range(depth)]
            self.layers.append(ResidualGroup(embed_dim, blocks))
            first += depth
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.upsample = nn.Sequential(nn.Conv2d(embed_dim, 3 * upscale * upscale, 3, 1, 1), nn.PixelShuffle(upscale))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.window_size, (-w) % self.window_size
        if not (ph or pw):
            return x
        return F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mean = self.mean.to(x.dtype)
        x = (self._pad(x) - mean) * self.img_range
        feat = self.conv_first(x)
        size = (feat.shape[2], feat.shape[3])
        tokens = self.patch_embed(feat)
        for layer in self.layers:
            tokens = layer(tokens, size)
        body = self.conv_after_body(_to_image(self.norm(tokens), size)) + feat
        out = self.upsample(body) / self.img_range + mean
        return out[..., : h * self.upscale, : w * self.upscale]
