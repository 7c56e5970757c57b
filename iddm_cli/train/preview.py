"""Training previews: deterministic DDIM samples from the EMA weights, sharded over the ranks of a DDP run."""

from __future__ import annotations

import math

import torch
from torch import nn

from iddm_cli.core.devices import World
from iddm_cli.diffusion.samplers import sample
from iddm_cli.diffusion.schedule import Diffusion
from iddm_cli.train import distributed as dist

PREVIEW_BATCH = 64
PREVIEW_SAMPLER = "ddim"  # deterministic, one network call per step


def sharded_sample(model: nn.Module, diffusion: Diffusion, noise: torch.Tensor, labels: torch.Tensor | None,
                   world: World, *, steps: int, cfg_scale: float, clip: float | None = 1.0) -> torch.Tensor | None:
    """Deterministic DDIM samples from ``noise`` (N, C, H, W). Under DDP each rank samples a contiguous share and
    rank 0 gathers them, so no rank waits long for another; returns the images on rank 0, None elsewhere.
    ``clip``: the data range (None for latents)."""
    n = noise.shape[0]
    share = math.ceil(n / world.size)
    lo, hi = world.rank * share, min(n, (world.rank + 1) * share)
    mine = torch.zeros(share, *noise.shape[1:], device=noise.device)
    for i in range(lo, hi, PREVIEW_BATCH):
        j = min(hi, i + PREVIEW_BATCH)
        y = labels[i:j] if labels is not None else None
        mine[i - lo:j - lo] = sample(model, diffusion, noise[i:j], y, sampler=PREVIEW_SAMPLER, steps=steps,
                                     cfg_scale=cfg_scale, clip=clip)
    if not world.launched:
        return mine[:n]
    gathered = dist.all_gather_tensor(mine, world)
    return torch.cat(gathered)[:n] if world.is_main else None
