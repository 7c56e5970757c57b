"""Building blocks shared by the denoising networks (shapes at line ends: B batch, C channels)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TIME_DIM = 256  # sinusoidal time-embedding width, as in IDDM
ATTN_HEADS = 4

ACTIVATIONS = {
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "lrelu": lambda: nn.LeakyReLU(0.2),
}


def make_act(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


TIME_EMBEDDINGS = ("iddm", "legacy")
"""How the step is embedded. ``iddm``: IDDM's sinusoid frequencies ``1 / 10000^(2i/dim)`` and a SiLU before every
block's projection, whatever ``act`` (new runs and imported IDDM checkpoints). ``legacy``: what iddm 0.1 checkpoints
computed, frequencies ``exp(-ln(10000) 2i/dim)`` (equal in exact arithmetic, up to 6e-5 apart in float32 angles at
t=999) and ``act`` before each projection. Checkpoints whose network kwargs lack the key are ``legacy``."""


def timestep_embedding(t: torch.Tensor, dim: int = TIME_DIM, flavor: str = "iddm") -> torch.Tensor:
    """Transformer sinusoids of the integer step (Vaswani et al. 2017, sec. 3.5): [sin, cos]. (B,) -> (B, dim)."""
    i = torch.arange(0, dim, 2, device=t.device, dtype=torch.float32)
    if flavor == "iddm":  # IDDM's BaseNet.pos_encoding, operation for operation
        inv_freq = 1.0 / (10000 ** (i / dim))
    else:
        inv_freq = torch.exp(-math.log(10000.0) * i / dim)
    angles = t.float()[:, None] * inv_freq[None]  # (B, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class DoubleConv(nn.Module):
    """conv3x3 -> GroupNorm(1) -> act -> conv3x3 -> GroupNorm(1), optionally residual: act(x + f(x))."""

    def __init__(self, cin: int, cout: int, act: str, mid: int | None = None, residual: bool = False):
        super().__init__()
        mid = mid or cout
        self.residual = residual
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.GroupNorm(1, mid), make_act(act),
            nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.GroupNorm(1, cout),
        )
        self.out_act = make_act(act) if residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_act(x + self.block(x)) if self.residual else self.block(x)


class EmbProjection(nn.Module):
    """SiLU (``legacy``: act) -> Linear(TIME_DIM, C), broadcast over H, W and added to a feature map."""

    def __init__(self, cout: int, act: str, time_embedding: str = "iddm"):
        super().__init__()
        self.proj = nn.Sequential(make_act("silu" if time_embedding == "iddm" else act), nn.Linear(TIME_DIM, cout))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return x + self.proj(emb)[:, :, None, None]  # (B, C, H, W)


class SelfAttention(nn.Module):
    """Pre-LN multi-head self-attention over all H*W positions, then a pre-LN feed-forward; both residual."""

    def __init__(self, channels: int, act: str, heads: int = ATTN_HEADS):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        self.ff = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, channels), make_act(act),
                                nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(self.norm(tokens)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, h * w, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        tokens = tokens + self.out(attn.transpose(1, 2).reshape(b, h * w, c))
        tokens = tokens + self.ff(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class Denoiser(nn.Module):
    """Base class: time embedding plus an optional class embedding with a learned null class.

    Label ``num_classes`` is the null class used for classifier-free guidance, so the embedding is always in the
    graph (no unused parameters under DDP) and the unconditional prediction is a learned one. (An imported IDDM
    checkpoint gets a zero null row: IDDM adds nothing for y=None.)
    """

    def __init__(self, num_classes: int, time_embedding: str = "iddm"):
        super().__init__()
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding {time_embedding!r}: expected one of {', '.join(TIME_EMBEDDINGS)}")
        self.num_classes, self.time_embedding = num_classes, time_embedding
        self.label_emb = nn.Embedding(num_classes + 1, TIME_DIM) if num_classes > 0 else None

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = timestep_embedding(t, flavor=self.time_embedding)  # (B, TIME_DIM)
        if self.label_emb is not None:
            if y is None:
                y = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.label_emb(y)
        return emb
