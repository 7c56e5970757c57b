"""IDDM's U-Net: double-conv stages, 4-head self-attention at six places, time (and class) embedding per stage.

At base_channels=64 and 3 image channels this has the layout and parameter count of IDDM's ``unet``
(about 23.3 M); base_channels scales every width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from iddm_cli.nets.layers import Denoiser, DoubleConv, EmbProjection, SelfAttention


class Down(nn.Module):
    """maxpool /2 -> residual DoubleConv -> DoubleConv(cin->cout) -> + embedding."""

    def __init__(self, cin: int, cout: int, act: str, time_embedding: str):
        super().__init__()
        self.convs = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cin, act, residual=True),
                                   DoubleConv(cin, cout, act))
        self.emb = EmbProjection(cout, act, time_embedding)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.emb(self.convs(x), emb)


class Up(nn.Module):
    """bilinear x2 -> concat skip -> residual DoubleConv -> DoubleConv(cin->cout, mid cin/2) -> + embedding."""

    def __init__(self, cin: int, cout: int, act: str, time_embedding: str):
        super().__init__()
        self.convs = nn.Sequential(DoubleConv(cin, cin, act, residual=True), DoubleConv(cin, cout, act, cin // 2))
        self.emb = EmbProjection(cout, act, time_embedding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.emb(self.convs(torch.cat([skip, x], dim=1)), emb)


class UNet(Denoiser):
    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 64,
                 num_classes: int = 0, act: str = "gelu", time_embedding: str = "iddm"):
        super().__init__(num_classes, time_embedding)
        c1, c2, c3, c4 = base_channels, 2 * base_channels, 4 * base_channels, 8 * base_channels
        te = time_embedding
        self.inc = DoubleConv(in_channels, c1, act)
        self.down1, self.sa1 = Down(c1, c2, act, te), SelfAttention(c2, act)  # 1/2
        self.down2, self.sa2 = Down(c2, c3, act, te), SelfAttention(c3, act)  # 1/4
        self.down3, self.sa3 = Down(c3, c3, act, te), SelfAttention(c3, act)  # 1/8
        self.bot = nn.Sequential(DoubleConv(c3, c4, act), DoubleConv(c4, c4, act), DoubleConv(c4, c3, act))
        self.up1, self.sa4 = Up(2 * c3, c2, act, te), SelfAttention(c2, act)  # 1/4
        self.up2, self.sa5 = Up(2 * c2, c1, act, te), SelfAttention(c1, act)  # 1/2
        self.up3, self.sa6 = Up(2 * c1, c1, act, te), SelfAttention(c1, act)  # 1/1
        self.outc = nn.Conv2d(c1, out_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, y)  # (B, 256)
        x1 = self.inc(x)  # (B, c1, H, W)
        x2 = self.sa1(self.down1(x1, emb))  # (B, c2, H/2, W/2)
        x3 = self.sa2(self.down2(x2, emb))  # (B, c3, H/4, W/4)
        x4 = self.sa3(self.down3(x3, emb))  # (B, c3, H/8, W/8)
        x = self.bot(x4)
        x = self.sa4(self.up1(x, x3, emb))  # (B, c2, H/4, W/4)
        x = self.sa5(self.up2(x, x2, emb))  # (B, c1, H/2, W/2)
        x = self.sa6(self.up3(x, x1, emb))  # (B, c1, H, W)
        return self.outc(x)
