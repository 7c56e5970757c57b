"""Noise schedules and the forward (noising) process, epsilon parameterisation.

Indexing: step t in 0..T-1 uses beta[t]; alpha_bar[t] = prod_{s<=t} (1 - beta[s]) (Ho et al. 2020, eq. 4).
"""

from __future__ import annotations

import math

import torch


def linear_betas(T: int) -> torch.Tensor:
    """Ho et al. 2020: beta from 1e-4 to 0.02, scaled so other T keep the same endpoints' product (sec. 4)."""
    scale = 1000 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64).clamp(max=0.999)


def cosine_betas(T: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2)."""
    f = [math.cos(((i / T) + s) / (1 + s) * math.pi / 2) ** 2 for i in range(T + 1)]
    return torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(T)], dtype=torch.float64)


def sqrt_linear_betas(T: int) -> torch.Tensor:
    """Latent-diffusion's "scaled linear": betas linear in sqrt space, sqrt(1e-4)..sqrt(0.02), squared."""
    scale = 1000 / T
    roots = torch.linspace(math.sqrt(scale * 1e-4), math.sqrt(scale * 0.02), T, dtype=torch.float64)
    return roots.pow(2).clamp(max=0.999)


def sqrt_betas(T: int, s: float = 1e-4) -> torch.Tensor:
    """Li et al. 2022 (Diffusion-LM), sec. 4.2: alpha_bar(t) = 1 - sqrt(t/T + s).

    IDDM's "sqrt" takes the square root of the linear betas (0.01..0.14), which destroys the signal within a few
    dozen steps; this is the published schedule of that name.
    """
    abar = [1 - math.sqrt(i / T + s) for i in range(T + 1)]
    return torch.tensor([min(1 - abar[i + 1] / abar[i], 0.999) for i in range(T)], dtype=torch.float64)


SCHEDULES = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "sqrt_linear": sqrt_linear_betas,
    "sqrt": sqrt_betas,
}


class Diffusion:
    """alpha_bar for a schedule and the closed-form forward process q(x_t | x_0) (Ho et al. 2020, eq. 4)."""

    def __init__(self, schedule: str = "linear", noise_steps: int = 1000):
        self.schedule = schedule
        self.T = noise_steps
        betas = SCHEDULES[schedule](noise_steps)
        self.betas = betas.float()
        # The schedules clamp beta at 0.999; where they do (the last step of cosine and sqrt), alpha_bar falls by
        # orders of magnitude in one step. ``t_top``: the last step before that clamped tail (T-1 when none).
        top, clamped = noise_steps - 1, (betas >= 0.999).tolist()
        while top > 0 and clamped[top]:
            top -= 1
        self.t_top = top
        self.alpha_bar = torch.cumprod(1 - betas, dim=0).float()  # (T,)
        self._abar_on = self.alpha_bar  # alpha_bar on the device q_sample last ran on
        # log alpha_bar in float64 for real-valued steps; computed once, samplers query it every step
        self.log_abar = torch.cumsum(torch.log1p(-self.betas.double()), 0)

    def describe(self) -> dict[str, object]:
        return {"name": self.schedule, "noise_steps": self.T, "prediction": "epsilon"}

    def sample_t(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.T, (n,), device=device, generator=generator)

    def abar_at(self, t: torch.Tensor | float) -> torch.Tensor:
        """alpha_bar at a real-valued step, interpolating log(alpha_bar) between integer steps (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.T - 1)
        log_abar = self.log_abar
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=self.T - 1)
        w = t - lo
        return torch.exp((1 - w) * log_abar[lo] + w * log_abar[hi])

    def lambda_at(self, t: torch.Tensor | float) -> torch.Tensor:
        """Half log-SNR, lambda = log(alpha / sigma) (Lu et al. 2022, sec. 3.1)."""
        abar = self.abar_at(t)
        return 0.5 * (torch.log(abar) - torch.log1p(-abar))

    def t_of_lambda(self, lam: torch.Tensor | float) -> torch.Tensor:
        """Inverse of lambda_at on [0, T-1] (lambda decreases with t), by bisection."""
        lo, hi = torch.zeros((), dtype=torch.float64), torch.full((), self.T - 1.0, dtype=torch.float64)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = self.lambda_at(mid) > lam
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        if self._abar_on.device != x0.device:  # copied once per device, not every step (a blocking copy on CUDA)
            self._abar_on = self.alpha_bar.to(x0.device)
        abar = self._abar_on[t].view(-1, *([1] * (x0.dim() - 1)))  # (B, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
