"""The exact noise predictor for Gaussian data, to check samplers without training (tests and benchmarks).

For x0 ~ N(mu, s^2) and x_t = alpha x0 + sigma eps: E[eps | x_t] = sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2).
A sampler that integrates correctly turns N(0, 1) noise into N(mu, s^2).
"""

from __future__ import annotations

import torch
from torch import nn

from iddm_cli.diffusion.schedule import Diffusion


class GaussianOracle(nn.Module):
    num_classes = 0

    def __init__(self, diffusion: Diffusion, mu: float, s: float):
        super().__init__()
        self.d, self.mu, self.s = diffusion, mu, s

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        abar = self.d.abar_at(t).float().view(-1, *([1] * (x.dim() - 1)))
        return (1 - abar).sqrt() * (x - abar.sqrt() * self.mu) / (abar * self.s**2 + 1 - abar)
