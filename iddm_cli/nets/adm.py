"""An ADM-style U-Net (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 3) with EDM's skip scaling
(Karras et al. 2022, appendix F.2), in named sizes.

Residual blocks GroupNorm -> SiLU -> conv3x3, then GroupNorm modulated by the embedding (scale and shift, ADM's
"AdaGN") -> SiLU -> conv3x3 initialised to zero, added to the (1x1-projected) input and scaled by 1/sqrt(2).
The step goes through sinusoids and a two-layer MLP to a 4x-width embedding; the class embedding (with a learned
null class for classifier-free guidance) is added to it. Self-attention (64-channel heads, zero-initialised output)
only at 1/4 of the input resolution and below, where there are 16x fewer positions. Strided-conv down-sampling,
nearest-neighbour up-sampling followed by a conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from iddm_cli.nets.layers import TIME_DIM, make_act, timestep_embedding

SKIP_SCALE = 1 / math.sqrt(2)  # keeps the residual stream's variance from growing with depth (EDM)
HEAD_CHANNELS = 64


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, act: str):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * cout))  # scale and shift
        self.norm2, self.conv2 = _norm(cout), _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.act = make_act(act)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))  # (B, cout, H, W)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, cout, 1, 1) each
        h = self.act(torch.addcmul(shift, self.norm2(h), scale + 1))
        h = self.conv2(h)
        return (self.skip(x) + h) * SKIP_SCALE


class Attention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.heads = max(1, channels // HEAD_CHANNELS)
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        attn = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return (x + self.out(attn.transpose(-1, -2).reshape(b, c, h, w))) * SKIP_SCALE  # (B, C, H, W)


class Level(nn.Module):
    """The blocks of one resolution: residual blocks, each followed by attention at low resolution."""

    def __init__(self, cins: list[int], cout: int, emb_dim: int, act: str, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(cin, cout, emb_dim, act) for cin in cins)
        self.attns = nn.ModuleList(Attention(cout) if attention else nn.Identity() for _ in cins)


class ADMUNet(nn.Module):
    """``size``: a key of :data:`SIZES`. Takes the same (x, t, y) as the other networks; y = num_classes (or None)
    is the null class. ``time_embedding``: the sinusoid flavour of :func:`timestep_embedding` (new runs: iddm)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_classes: int = 0, act: str = "silu",
                 size: str = "s", time_embedding: str = "iddm"):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"adm size {size!r}: expected one of {', '.join(SIZES)}")
        ch, mults, blocks = SIZES[size]
        self.num_classes, self.time_embedding, emb_dim = num_classes, time_embedding, 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(TIME_DIM, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.inc = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths = [ch * m for m in mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [ch], ch
        for i, width in enumerate(widths):
            level = Level([c] + [width] * (blocks - 1), width, emb_dim, act, i >= 2)
            self.down.append(level)
            skips += [width] * blocks
            c = width
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1, self.mid_attn = ResBlock(c, c, emb_dim, act), Attention(c)
        self.mid2 = ResBlock(c, c, emb_dim, act)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            cins = []
            for _ in range(blocks + 1):
                cins.append(c + skips.pop())
                c = width
            self.up.append(Level(cins, width, emb_dim, act, i >= 2))
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.out = nn.Sequential(_norm(c), make_act(act), _zero(nn.Conv2d(c, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, flavor=self.time_embedding))  # (B, 4ch)
        if self.label_emb is not None:
            if y is None:
                y = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.label_emb(y)
        h = self.inc(x)  # (B, ch, H, W)
        skips = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(h, emb))
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, C, H/2, W/2)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)
        return self.out(h)


SIZES: dict[str, tuple[int, tuple[int, ...], int]] = {
    # name: (channels of the first level, width multiple per level, residual blocks per level)
    "xs": (32, (1, 2, 2), 2),
    "s": (64, (1, 2, 2), 2),
    "m": (128, (1, 2, 2, 2), 2),
}
"""Named sizes (the registry's ``adm-xs``, ``adm-s``, ``adm-m``); the number of levels fixes the down-sampling
(``xs``, ``s``: 4; ``m``: 8)."""
