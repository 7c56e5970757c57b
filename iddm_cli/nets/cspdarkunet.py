"""IDDM's lighter ``cspdarkunet``: YOLO-style CSP stages in a U-Net, self-attention after every stage.

Widths are base/2, base, 2*base, 4*base, 8*base (32..512 at the default base 64). Unlike IDDM's up block, ours
uses its CSP layer after the skip concatenation instead of applying the same 1x1 convolution twice; ``up_block="iddm"``
reproduces IDDM's (for imported IDDM checkpoints), and then has no CSP layer, since IDDM never calls its own.
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


UP_BLOCKS = ("csp", "iddm")


class CSPDown(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, act: str, time_embedding: str):
        super().__init__()
        self.convs = nn.Sequential(BaseConv(cin, cout, act, 3, 2), CSPLayer(cout, cout, n, act))
        self.emb = EmbProjection(cout, act, time_embedding)
        self.sa = SelfAttention(cout, act)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.sa(self.emb(self.convs(x), emb))


class CSPUp(nn.Module):
    """1x1 reduce -> nearest x2 -> concat skip -> CSP layer (``iddm``: the same 1x1 reduce again) -> + embedding."""

    def __init__(self, cin: int, cout: int, n: int, act: str, time_embedding: str, up_block: str):
        super().__init__()
        self.reduce = BaseConv(cin, cout, act)
        # IDDM's CSPDarkUpBlock.forward calls self.conv twice and never self.csp (IDDM 1.3.1 modules/block.py)
        self.csp = CSPLayer(2 * cout, cout, n, act) if up_block == "csp" else None
        self.emb = EmbProjection(cout, act, time_embedding)
        self.sa = SelfAttention(cout, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=skip.shape[-2:], mode="nearest")
        fuse = self.csp if self.csp is not None else self.reduce
        return self.sa(self.emb(fuse(torch.cat([skip, x], dim=1)), emb))


class CSPDarkUNet(Denoiser):
    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 64,
                 num_classes: int = 0, act: str = "gelu", time_embedding: str = "iddm", up_block: str = "csp"):
        super().__init__(num_classes, time_embedding)
        if up_block not in UP_BLOCKS:
            raise ValueError(f"up_block {up_block!r}: expected one of {', '.join(UP_BLOCKS)}")
        c = [base_channels // 2, base_channels, 2 * base_channels, 4 * base_channels, 8 * base_channels]
        self.inc = BaseConv(in_channels, c[0], act)
        self.downs = nn.ModuleList(CSPDown(c[i], c[i + 1], n, act, time_embedding)
                                   for i, n in enumerate((1, 3, 3, 1)))
        self.ups = nn.ModuleList(CSPUp(c[i + 1], c[i], 3, act, time_embedding, up_block) for i in reversed(range(4)))
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
