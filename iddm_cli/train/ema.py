"""Exponential moving average of the weights, kept in fp32, with a warm-up and a saved update count.

Two ways to set how long it remembers: a decay per step (``ema_decay``, IDDM's, with TensorFlow's warm-up), or a
half-life in training images (``ema_halflife_kimg``, EDM's; Karras et al. 2022, training/training_loop.py), which
means the same for any batch size and number of devices: each step of B images decays the average by
0.5^(B / half-life), the half-life ramped up as min(half-life, ema_rampup x images seen so far).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, halflife_kimg: float = 0.0, rampup: float = 0.0):
        self.decay = decay
        self.halflife_images = halflife_kimg * 1000
        self.rampup = rampup
        self.updates = 0
        self.images = 0  # training images the average has seen (all ranks together)
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self, batch: int) -> float:
        """The decay of the next update, which averages in a step of ``batch`` images (all ranks together).
        Per step: min(decay, (1 + n) / (10 + n)) at update n (from 1), early averages following the weights closely
        (TensorFlow's num_updates). By half-life: 0.5^(batch / h), h = min(half-life, rampup x images so far) (0 at
        the start, so the first update copies the weights)."""
        if not self.halflife_images:
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        h = min(self.halflife_images, self.images * self.rampup) if self.rampup else self.halflife_images
        return 0.5 ** (batch / max(h, 1e-8))

    @torch.no_grad()
    def update(self, model: nn.Module, batch: int, applied: torch.Tensor) -> None:
        """Average in the weights after a step of ``batch`` images. ``applied``: a 0-d bool on the weights' device,
        False for a skipped step, which leaves the average as it was, decided on the device: the weight is a list
        of 0-d tensors (one 0-d tensor alone would be read on the host, a copy that waits for the GPU), and lerp
        reads and writes each average once. Every step counts, skipped or not, so the counts never wait for the
        device."""
        self.updates += 1  # counts this update: the per-step warm-up starts at 2/11
        d = self.current_decay(batch)
        self.images += batch  # after: the half-life ramp-up counts the images before this step
        ema_params = list(self.model.parameters())
        weight = applied.to(torch.float32) * (1.0 - d)
        # ema += (1 - d) (p - ema), or += 0 for a skipped step
        torch._foreach_lerp_(ema_params, [p.detach().float() for p in model.parameters()], [weight] * len(ema_params))
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int, images: int) -> None:
        self.model.load_state_dict(state)
        self.updates, self.images = updates, images


def make_ema(model: nn.Module, config: object) -> EMA:
    """The EMA a run's optimisation settings ask for."""
    o = config.optim
    return EMA(model, o.ema_decay, o.ema_halflife_kimg, o.ema_rampup)
