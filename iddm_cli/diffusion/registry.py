"""The sampler registry's metadata: name -> default steps, network calls per step and a one-line summary.

Free of torch, so ``--help`` and completion read the choices and default step counts from here; the functions
themselves are in :data:`iddm_cli.diffusion.samplers.SAMPLER_FNS`, keyed by the same names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerSpec:
    default_steps: int
    nfe_per_step: int  # network evaluations per step (before the x2 of classifier-free guidance)
    stochastic: bool
    summary: str
    first_step_extra: int = 0  # PLMS evaluates twice on its first step
    eta: bool = False  # takes --eta (how much fresh noise each step adds)

    def nfe(self, grid_len: int) -> int:
        """Evaluations for a grid of ``grid_len`` steps; the final move to the clean image takes one."""
        return self.nfe_per_step * (grid_len - 1) + 1 + (self.first_step_extra if grid_len > 1 else 0)


# Default step counts follow IDDM.
SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(1000, 1, True, "ancestral DDPM (Ho et al. 2020), respaced below T steps"),
    "ddim": SamplerSpec(100, 1, False, "DDIM (Song et al. 2021); --eta > 0 adds noise", eta=True),
    "plms": SamplerSpec(100, 1, False, "pseudo linear multistep, PNDM (Liu et al. 2022)", first_step_extra=1),
    "dpm2": SamplerSpec(50, 2, False, "DPM-Solver-2 (Lu et al. 2022)"),
    "dpmpp": SamplerSpec(20, 2, False, "DPM-Solver++(2S) (Lu et al. 2022b)"),
    "dpmpp2m": SamplerSpec(20, 1, False, "DPM-Solver++(2M) (Lu et al. 2022b)"),
    "dpmpp3m": SamplerSpec(50, 1, False, "DPM-Solver++(3M) (Lu et al. 2022b)"),
}


def default_steps_text() -> str:
    """'ddpm 1000, ddim/plms 100, ...': the default step counts, grouped, for help texts."""
    groups: dict[int, list[str]] = {}
    for name, spec in SAMPLERS.items():
        groups.setdefault(spec.default_steps, []).append(name)
    return ", ".join(f"{'/'.join(names)} {steps}" for steps, names in groups.items())
