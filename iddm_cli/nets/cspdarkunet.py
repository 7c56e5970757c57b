"""IDDM's lighter ``cspdarkunet``: YOLO-style CSP stages in a U-Net, self-attention after every stage.

Widths are base/2, base, 2*base, 4*base, 8*base (32..512 at the default base 64). Unlike IDDM's up block, ours
uses its CSP layer after the skip concatenation instead of applying the same 1x1 convolution twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from iddm_cli.nets.layers import Denoiser, EmbProjection, SelfAttention, make_act


class BaseConv(nn.Sequential):
    """conv (no bias) -> GroupNorm(1) -> act."""

    def __init__(self, cin: int, cout: int, act: str, kernel: int = 1, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.GroupNorm(1, cout),
                         make_act(act))


class Bottleneck(nn.Module):
    def __init__(self, channels: int, act: str):
        super().__init__()
        self.convs = nn.Sequential(BaseConv(channels, channels, act, 1), BaseConv(channels, channels, act, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.convs(x)


class CSPLayer(nn.Module):
    """Cross-stage partial layer (Wang et al. 2020): half the channels through n bottlenecks, half around them."""

    def __init__(self, cin: int, cout: int, n: int, act: str):
        super().__init__()
        hidden = cout // 2
        self.main = nn.Sequential(BaseConv(cin, hidden, act), *(Bottleneck(hidden, act) for _ in range(n)))
        self.short = BaseConv(cin, hidden, act)
        self.fuse = BaseConv(2 * hidden, cout, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.main(x), self.short(x)], dim=1))


class CSPDown(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, act: str):
        super().__init__()
        self.convs = nn.Sequential(BaseConv(cin, cout, act, 3, 2), CSPLayer(cout, cout, n, act))
        self.emb = EmbProjection(cout, act)
        self.sa = SelfAttention(cout, act)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.sa(self.emb(self.convs(x), emb))


class CSPUp(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, act: str):
        super().__init__()
        self.reduce = BaseConv(cin, cout, act)
        self.csp = CSPLayer(2 * cout, cout, n, act)
        self.emb = EmbProjection(cout, act)
        self.sa = SelfAttention(cout, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=skip.shape[-2:], mode="nearest")
        return self.sa(self.emb(self.csp(torch.cat([skip, x], dim=1)), emb))


class CSPDarkUNet(Denoiser):
    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 64,
                 num_classes: int = 0, act: str = "gelu"):
        super().__init__(num_classes)
        c = [base_channels // 2, base_channels, 2 * base_channels, 4 * base_channels, 8 * base_channels]
        self.inc = BaseConv(in_channels, c[0], act)
        self.downs = nn.ModuleList(CSPDown(c[i], c[i + 1], n, act) for i, n in enumerate((1, 3, 3, 1)))
        self.ups = nn.ModuleList(CSPUp(c[i + 1], c[i], 3, act) for i in reversed(range(4)))
        self.outc = nn.Conv2d(c[0], out_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, y)
        skips = [self.inc(x)]  # (B, c0, H, W)
        for down in self.downs:
            skips.append(down(skips[-1], emb))  # halves H, W each stage
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop(), emb)
        return self.outc(x)
