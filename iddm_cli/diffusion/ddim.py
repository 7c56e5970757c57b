"""Deterministic DDIM sampling with classifier-free guidance, used for training previews.

The full sampler family (and ``iddm sample``) comes in a later release; this one is shared by them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from iddm_cli.diffusion.schedule import Diffusion

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def timesteps(T: int, steps: int) -> list[int]:
    """``steps`` evenly spaced steps from T-1 down to 0 ("trailing" spacing, Lin et al. 2024, table 2)."""
    steps = max(1, min(steps, T))
    return sorted({round(T - 1 - i * T / steps) for i in range(steps)}, reverse=True)


def guided_eps(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
               cfg_scale: float) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u) (Ho & Salimans 2022, eq. 6), both predictions in one batched forward pass."""
    if y is None or cfg_scale == 1.0:
        return model(x, t, y)
    null = torch.full_like(y, model.num_classes)
    eps_c, eps_u = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
    return eps_u + cfg_scale * (eps_c - eps_u)


@torch.no_grad()
def ddim_sample(model: torch.nn.Module, diffusion: Diffusion, noise: torch.Tensor, labels: torch.Tensor | None,
                steps: int = 50, cfg_scale: float = 1.0) -> torch.Tensor:
    """DDIM with eta = 0 (Song et al. 2021, eq. 12), the predicted x0 clipped to [-1, 1]. Returns [-1, 1] images."""
    abar = diffusion.alpha_bar.to(noise.device)
    x = noise
    ts = timesteps(diffusion.T, steps)
    for i, t in enumerate(ts):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = guided_eps(model, x, t_batch, labels, cfg_scale).float()
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=x.device)
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        # The direction term keeps the model's own eps. Re-deriving eps from the clipped x0 (improved-diffusion's
        # choice) turns the large x0 errors of the first, nearly pure-noise steps into saturated speckle that
        # survives to the end on small, briefly trained models; diffusers' DDIM default keeps it, as here.
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x.clamp(-1, 1)
