"""The sampler family: one registry, one signature, shared by training previews and ``iddm sample``.

Every sampler has the signature ``fn(eps_fn, diffusion, x, ts, *, eta, noise) -> x0`` where ``eps_fn(x, t)``
returns the (guided) noise prediction for real-valued steps ``t`` of shape (B,), ``x`` is the starting noise,
``ts`` the decreasing step grid from :func:`timesteps`, and ``noise()`` draws fresh standard-normal noise shaped like
``x`` (per-sample seeded by the caller, so results do not depend on the batch size).

Notation (Lu et al. 2022): alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), lambda_t = log(alpha_t /
sigma_t). After the last grid step every sampler makes a final first-order move to the clean image (alpha = 1,
sigma = 0), which is the clipped x0 prediction. Predicted x0 is clipped to the data range [-1, 1] wherever a method
forms it (all but dpm2, which works with noise predictions only), and so is the result, so nothing can wrap around
when converted to 8 bit. Latents have no such range: with ``clip=None`` nothing is clipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from iddm_cli.diffusion.registry import SAMPLERS
from iddm_cli.diffusion.schedule import Diffusion

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[], torch.Tensor]
CLEAN = -1  # the grid's implicit last point: alpha_bar = 1


def timesteps(diffusion: Diffusion, steps: int) -> list[float]:
    """The step grid, from T-1 (pure noise) down to 0, then the final move to the clean image.

    With ``steps >= T`` every integer step is visited (T-1, ..., 0). Fewer steps are spaced uniformly in
    lambda = log-SNR/2 (Lu et al. 2022, sec. 3.4; the models take real-valued steps), which puts them where the
    image changes most; uniform-in-t spacing leaves the low-noise end coarse and, on the Gaussian test, shrinks
    the sample spread by up to 25 % at 20 steps.

    Where the schedule clamps beta at its end (cosine, sqrt: alpha_bar drops 1000-fold in the last step), one move
    crosses that tail and the rest are uniform in lambda from the step below it (``Diffusion.t_top``); spread over
    the whole range, 5 of 20 steps would land between t = 998 and 999.
    """
    T = diffusion.T
    if steps >= T:
        return [float(t) for t in range(T - 1, -1, -1)]
    if steps <= 1:
        return [float(T - 1)]
    top = diffusion.t_top if steps > 3 else T - 1  # below the clamped tail, if there is one and steps to spare
    head = [float(T - 1)] if top < T - 1 else []
    n = steps - len(head)  # grid points from top down to 0, both included
    lam_hi, lam_lo = float(diffusion.lambda_at(top)), float(diffusion.lambda_at(0))
    inner = [float(diffusion.t_of_lambda(lam_hi + (lam_lo - lam_hi) * i / (n - 1))) for i in range(1, n - 1)]
    return [*head, float(top), *inner, 0.0]


class _Coef:
    """alpha, sigma and lambda at a step (CLEAN included), as float64 scalars."""

    def __init__(self, diffusion: Diffusion):
        self.d = diffusion

    def __call__(self, t: float) -> tuple[float, float, float]:
        if t == CLEAN:
            return 1.0, 0.0, math.inf
        abar = float(self.d.abar_at(t))
        return math.sqrt(abar), math.sqrt(1 - abar), 0.5 * (math.log(abar) - math.log1p(-abar))


def _t(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device)


def _x0(x: torch.Tensor, eps: torch.Tensor, a: float, s: float, clip: float | None) -> torch.Tensor:
    return _clip((x - s * eps) / a, clip)


def _clip(x: torch.Tensor, clip: float | None) -> torch.Tensor:
    return x if clip is None else x.clamp(-clip, clip)


def _grid(ts: list[float]) -> list[tuple[float, float]]:
    return list(zip(ts, ts[1:] + [CLEAN], strict=True))


# ----------------------------------------------------------------------------------------------- DDPM / DDIM
def ddim(eps_fn: EpsFn, diffusion: Diffusion, x: torch.Tensor, ts: list[float], *, eta: float = 0.0,
         noise: NoiseFn | None = None, clip: float | None = 1.0) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12 with sigma from eq. 16): eta = 0 is deterministic, eta = 1 is DDPM-like."""
    coef = _Coef(diffusion)
    for t, s in _grid(ts):
        (a_t, s_t, _), (a_s, s_s, _) = coef(t), coef(s)
        eps = eps_fn(x, _t(x, t))
        x0 = _x0(x, eps, a_t, s_t, clip)
        sigma = eta * (s_s / s_t) * math.sqrt(max(1 - (a_t / a_s) ** 2, 0.0)) if s != CLEAN else 0.0
        x = a_s * x0 + math.sqrt(max(s_s**2 - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * noise()
    return _clip(x, clip)


def ddpm(eps_fn: EpsFn, diffusion: Diffusion, x: torch.Tensor, ts: list[float], *, eta: float = 1.0,
         noise: NoiseFn | None = None, clip: float | None = 1.0) -> torch.Tensor:
    """Ancestral sampling from the posterior q(x_s | x_t, x0) (Ho et al. 2020, eqs. 6-7), with the respaced betas
    beta = 1 - alpha_bar_t / alpha_bar_s of Nichol & Dhariwal 2021 (sec. 4) when fewer than T steps are used."""
    coef = _Coef(diffusion)
    for t, s in _grid(ts):
        (a_t, s_t, _), (a_s, s_s, _) = coef(t), coef(s)
        x0 = _x0(x, eps_fn(x, _t(x, t)), a_t, s_t, clip)
        if s == CLEAN:
            x = x0
            continue
        beta = 1 - (a_t / a_s) ** 2
        mean = (a_s * beta / s_t**2) * x0 + ((a_t / a_s) * s_s**2 / s_t**2) * x
        x = mean + math.sqrt(beta * s_s**2 / s_t**2) * noise()
    return _clip(x, clip)


# ----------------------------------------------------------------------------------------------- PLMS
def plms(eps_fn: EpsFn, diffusion: Diffusion, x: torch.Tensor, ts: list[float], *, eta: float = 0.0,
         noise: NoiseFn | None = None, clip: float | None = 1.0) -> torch.Tensor:
    """Pseudo linear multistep (PNDM, Liu et al. 2022, eqs. 11-13): the DDIM transfer driven by an Adams-Bashforth
    combination of past eps; the first step uses a pseudo improved-Euler estimate (2 evaluations)."""
    coef = _Coef(diffusion)
    history: list[torch.Tensor] = []

    def transfer(x: torch.Tensor, eps: torch.Tensor, t: float, s: float) -> torch.Tensor:
        (a_t, s_t, _), (a_s, s_s, _) = coef(t), coef(s)
        return a_s * _x0(x, eps, a_t, s_t, clip) + s_s * eps

    for t, s in _grid(ts):
        eps = eps_fn(x, _t(x, t))
        if not history and s != CLEAN:
            eps_next = eps_fn(transfer(x, eps, t, s), _t(x, s))
            e = (eps + eps_next) / 2
        elif len(history) == 1:
            e = (3 * eps - history[-1]) / 2
        elif len(history) == 2:
            e = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        elif len(history) >= 3:
            e = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        else:
            e = eps
        history.append(eps)
        x = transfer(x, e, t, s)
    return _clip(x, clip)


# ----------------------------------------------------------------------------------------------- DPM-Solver
def _mid(diffusion: Diffusion, lam_t: float, lam_s: float) -> float:
    return float(diffusion.t_of_lambda((lam_t + lam_s) / 2))


def dpm2(eps_fn: EpsFn, diffusion: Diffusion, x: torch.Tensor, ts: list[float], *, eta: float = 0.0,
         noise: NoiseFn | None = None, clip: float | None = 1.0) -> torch.Tensor:
    """DPM-Solver-2 (Lu et al. 2022, Algorithm 1, r1 = 1/2): a midpoint step in lambda with noise predictions."""
    coef = _Coef(diffusion)
    for t, s in _grid(ts):
        a_t, s_t, l_t = coef(t)
        eps = eps_fn(x, _t(x, t))
        if s == CLEAN:
            x = _x0(x, eps, a_t, s_t, clip)
            continue
        a_s, s_s, l_s = coef(s)
        t_mid = _mid(diffusion, l_t, l_s)
        a_m, s_m, l_m = coef(t_mid)
        u = (a_m / a_t) * x - s_m * math.expm1(l_m - l_t) * eps
        x = (a_s / a_t) * x - s_s * math.expm1(l_s - l_t) * eps_fn(u, _t(x, t_mid))
    return _clip(x, clip)


def dpmpp(eps_fn: EpsFn, diffusion: Diffusion, x: torch.Tensor, ts: list[float], *, eta: float = 0.0,
          noise: NoiseFn | None = None, clip: float | None = 1.0) -> torch.Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1, r = 1/2): single-step second order with data predictions."""
    coef = _Coef(diffusion)
    for t, s in _grid(ts):
        a_t, s_t, l_t = coef(t)
        x0 = _x0(x, eps_fn(x, _t(x, t)), a_t, s_t, clip)
        if s == CLEAN:
            x = x0
            continue
        a_s, s_s, l_s = coef(s)
        t_mid = _mid(diffusion, l_t, l_s)
        a_m, s_m, l_m = coef(t_mid)
        u = (s_m / s_t) * x - a_m * math.expm1(-(l_m - l_t)) * x0
        x0_mid = _x0(u, eps_fn(u, _t(x, t_mid)), a_m, s_m, clip)
        x = (s_s / s_t) * x - a_s * math.expm1(-(l_s - l_t)) * x0_mid
    return _clip(x, clip)


def _multistep(order: int) -> Callable[..., torch.Tensor]:
    def sampler(eps_fn: EpsFn, diffusion: Diffusion, x: torch.Tensor, ts: list[float], *, eta: float = 0.0,
                noise: NoiseFn | None = None, clip: float | None = 1.0) -> torch.Tensor:
        """Multistep DPM-Solver++ (Lu et al. 2022b, Algorithm 2 and its third-order extension, appendix B):
        lower orders while the history fills up, first order for the final move to the clean image."""
        coef = _Coef(diffusion)
        hist: list[tuple[torch.Tensor, float]] = []  # (x0 prediction, lambda), newest last
        for t, s in _grid(ts):
            a_t, s_t, l_t = coef(t)
            hist = (hist + [(_x0(x, eps_fn(x, _t(x, t)), a_t, s_t, clip), l_t)])[-3:]
            if s == CLEAN:
                x = hist[-1][0]
                continue
            a_s, s_s, l_s = coef(s)
            h = l_s - l_t
            phi1 = math.expm1(-h)
            x = (s_s / s_t) * x - a_s * phi1 * hist[-1][0]
            k = min(order, len(hist))
            if k >= 2:
                (m1, l1), (m0, l0) = hist[-2], hist[-1]
                r0 = (l0 - l1) / h
                d1_0 = (m0 - m1) / r0
                if k == 2:
                    x = x - 0.5 * a_s * phi1 * d1_0
                else:
                    m2, l2 = hist[-3]
                    r1 = (l1 - l2) / h
                    d1_1 = (m1 - m2) / r1
                    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    phi2 = phi1 / h + 1
                    phi3 = phi2 / h - 0.5
                    x = x + a_s * phi2 * d1 - a_s * phi3 * d2
        return _clip(x, clip)

    return sampler


SAMPLER_FNS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": ddpm, "ddim": ddim, "plms": plms, "dpm2": dpm2, "dpmpp": dpmpp,
    "dpmpp2m": _multistep(2), "dpmpp3m": _multistep(3),
}
assert SAMPLER_FNS.keys() == SAMPLERS.keys(), "every sampler needs its metadata in diffusion/registry.py"


def guided_eps(model: torch.nn.Module, labels: torch.Tensor | None, cfg_scale: float,
               diffusion: Diffusion | None = None) -> EpsFn:
    """eps_u + s (eps_c - eps_u) (Ho & Salimans 2022, eq. 6), both predictions in one batched forward pass;
    a single pass when the model is unconditional or s = 1. A network that predicts v or x0 (``diffusion``'s
    prediction) is guided on its own output, then converted: the same, since the conversion is linear."""

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if labels is None or cfg_scale == 1.0:
            out = model(x, t, labels).float()
        else:
            null = torch.full_like(labels, model.num_classes)
            out_c, out_u = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).float().chunk(2)
            out = out_u + cfg_scale * (out_c - out_u)
        return out if diffusion is None else diffusion.to_eps(out, x, t)

    return eps_fn


@torch.no_grad()
def sample(model: torch.nn.Module, diffusion: Diffusion, noise: torch.Tensor, labels: torch.Tensor | None, *,
           sampler: str = "ddim", steps: int | None = None, cfg_scale: float = 1.0, eta: float | None = None,
           generators: list[torch.Generator] | None = None, clip: float | None = 1.0) -> torch.Tensor:
    """Images in [-1, 1] from start noise (B, C, H, W). ``generators`` (one per sample) drive stochastic samplers.
    ``clip``: the data range x0 predictions and the result are clipped to (None for latents, which have no range)."""
    spec = SAMPLERS[sampler]
    ts = timesteps(diffusion, steps or spec.default_steps)

    def fresh_noise() -> torch.Tensor:
        if generators is None:
            return torch.randn_like(noise)
        return torch.stack([torch.randn(noise.shape[1:], generator=g) for g in generators]).to(noise.device)

    kwargs = {} if eta is None else {"eta": eta}
    eps_fn = guided_eps(model, labels, cfg_scale, diffusion)
    return SAMPLER_FNS[sampler](eps_fn, diffusion, noise, ts, noise=fresh_noise, clip=clip, **kwargs)
