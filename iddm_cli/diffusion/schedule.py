"""Noise schedules, the forward (noising) process and what the network predicts.

The network predicts the noise (epsilon, Ho et al. 2020; IDDM's), the velocity v = alpha eps - sigma x0 (Salimans &
Ho 2022) or the clean image x0, with alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar). Samplers work with noise
predictions: :meth:`Diffusion.to_eps` converts the others, exactly (the conversions are linear in the output, so
classifier-free guidance may combine either).

Indexing: step t in 0..T-1 uses beta[t]; alpha_bar[t] = prod_{s<=t} (1 - beta[s]) (Ho et al. 2020, eq. 4).
"""

from __future__ import annotations

import math

import torch

PREDICTIONS = ("epsilon", "v", "x0")  # iddm_cli.choices.PREDICTIONS


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
    abar = [max(1 - math.sqrt(i / T + s), 1e-12) for i in range(T + 1)]  # > 0: from T = 10,000 one would be 0
    return torch.tensor([min(1 - abar[i + 1] / abar[i], 0.999) for i in range(T)], dtype=torch.float64)


SCHEDULES = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "sqrt_linear": sqrt_linear_betas,
    "sqrt": sqrt_betas,
}


class Diffusion:
    """alpha_bar for a schedule and the closed-form forward process q(x_t | x_0) (Ho et al. 2020, eq. 4)."""

    def __init__(self, schedule: str = "linear", noise_steps: int = 1000, prediction: str = "epsilon"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}: one of {', '.join(PREDICTIONS)}")
        self.schedule = schedule
        self.prediction = prediction
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
        self._log_abar_on = {self.log_abar.device: self.log_abar}

    def describe(self) -> dict[str, object]:
        return {"name": self.schedule, "noise_steps": self.T, "prediction": self.prediction}

    def sample_t(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.T, (n,), device=device, generator=generator)

    def abar_at(self, t: torch.Tensor | float) -> torch.Tensor:
        """alpha_bar at a real-valued step, interpolating log(alpha_bar) between integer steps (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.T - 1)
        log_abar = self._log_abar_on.get(t.device)
        if log_abar is None:  # one copy per device: samplers ask on the host and on the model's device every step
            log_abar = self._log_abar_on[t.device] = self.log_abar.to(t.device)
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
        abar = self._abar(t, x0)  # (B, 1, 1, 1), copied once per device, not every step (blocking on CUDA)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer steps t (B,), on like's device, shaped (B, 1, ...) to broadcast over like."""
        if self._abar_on.device != like.device:
            self._abar_on = self.alpha_bar.to(like.device)
        return self._abar_on[t].view(-1, *([1] * (like.dim() - 1)))

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network learns to output for x_t = q_sample(x0, t, noise)."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        abar = self._abar(t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0  # v

    def min_snr_weight(self, t: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma loss weights (Hang et al. 2023), (B,): each sample's loss counts as an x0 loss weighted by
        min(SNR, gamma), whatever the network predicts (SNR = alpha_bar / (1 - alpha_bar))."""
        abar = self._abar(t, t)  # (B,)
        snr = abar / (1 - abar)
        clipped = snr.clamp(max=gamma)
        if self.prediction == "epsilon":  # |eps error|^2 = SNR |x0 error|^2
            return clipped / snr
        if self.prediction == "v":  # |v error|^2 = (SNR + 1) |x0 error|^2
            return clipped / (snr + 1)
        return clipped

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise prediction equal to the network's output ``out`` at x_t and real-valued steps t (B,)."""
        if self.prediction == "epsilon":
            return out
        # in float32 at least (in bf16, alpha_bar at t = 0 rounds to 1), on t's device (no copy to the host)
        abar = self.abar_at(t).to(torch.promote_types(out.dtype, torch.float32)).view(-1, *([1] * (out.dim() - 1)))
        a, s = abar.sqrt(), (1 - abar).sqrt()
        if self.prediction == "v":
            return s * x_t + a * out  # eps = sigma x_t + alpha v
        return (x_t - a * out) / s  # from x0
