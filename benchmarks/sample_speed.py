"""Sampler speed and accuracy.

    python benchmarks/sample_speed.py [--checkpoint RUN_DIR] [--images 80]

1. images/s of every sampler at its default step count, with a small network (unet base 16, 1x16x16,
   10 classes, guidance 2.0). Speed does not depend on the weights, so without --checkpoint a fresh network is used.
2. Error against network evaluations (NFE) on Gaussian data N(0.3, 0.2^2) with the exact noise predictor:
   |mean - 0.3| + |std - 0.2| of 4000 samples, linear schedule, T = 1000.
"""

from __future__ import annotations

import argparse
import time

import torch

from iddm_cli.core.checkpoint import load_checkpoint, load_stored, resolve_checkpoint
from iddm_cli.diffusion.oracle import GaussianOracle
from iddm_cli.diffusion.samplers import SAMPLER_FNS, SAMPLERS, guided_eps, sample, timesteps
from iddm_cli.diffusion.schedule import Diffusion
from iddm_cli.nets import build_network


def speed_table(args: argparse.Namespace) -> None:
    if args.checkpoint:
        path = resolve_checkpoint(args.checkpoint)
        ckpt = load_checkpoint(path)
        model = load_stored(ckpt["network"], ckpt["ema"], path)  # an older checkpoint computes as it was trained
    else:
        model = build_network("unet", in_channels=1, out_channels=1, base_channels=16, num_classes=10, act="gelu")
    model.eval()
    d = Diffusion("linear", 1000)
    labels = torch.arange(10).repeat_interleave(args.images // 10)
    noise = torch.randn(labels.numel(), 1, 16, 16)
    print(f"## speed: {labels.numel()} images of 1x16x16, batch {labels.numel()}, guidance 2.0, "
          f"{torch.get_num_threads()} CPU threads")
    print("| sampler | steps | NFE | seconds | images/s |\n|---|---|---|---|---|")
    for name, spec in SAMPLERS.items():
        start = time.perf_counter()
        sample(model, d, noise, labels, sampler=name, cfg_scale=2.0)
        secs = time.perf_counter() - start
        nfe = spec.nfe(len(timesteps(d, spec.default_steps)))
        print(f"| {name} | {spec.default_steps} | {nfe} | {secs:.1f} | {labels.numel() / secs:.1f} |")


def accuracy_table() -> None:
    d = Diffusion("linear", 1000)
    oracle = GaussianOracle(d, 0.3, 0.2)
    noise = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    target_mean, target_std = 0.3 + 0.2 * noise.mean().item(), 0.2 * noise.std().item()
    nfes = [10, 20, 50, 100]
    print("\n## error |mean - mu| + |std - s| on N(0.3, 0.2^2) against NFE (linear schedule, T=1000)")
    print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |\n|---|" + "---|" * len(nfes))
    for name, spec in SAMPLERS.items():
        cells = []
        for nfe in nfes:
            steps = max(1, (nfe + 1) // 2 if spec.nfe_per_step == 2 else nfe)
            out = SAMPLER_FNS[name](guided_eps(oracle, None, 1.0), d, noise, timesteps(d, steps),
                          noise=lambda: torch.randn_like(noise))
            err = abs(out.mean().item() - target_mean) + abs(out.std().item() - target_std)
            cells.append(f"{err:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a run directory whose ckpt_last.pt to time")
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--accuracy-only", action="store_true", help="skip the speed table")
    args = parser.parse_args()
    torch.manual_seed(0)
    if not args.accuracy_only:
        speed_table(args)
    accuracy_table()


if __name__ == "__main__":
    main()
