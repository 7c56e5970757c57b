"""Autoencoder and latent-diffusion training throughput, beside pixel diffusion at the same image size.

    python benchmarks/latent_throughput.py                       # 64 and 128 px, RGB, batch 8
    python benchmarks/latent_throughput.py --sizes 64 --steps 5

For each image size it times the real training step (forward, backward, clip, optimizer, EMA) of:
- the autoencoder (``iddm vae train``: vae base 64, 8x down-sampling, 4 latent channels);
- pixel diffusion (``iddm dm train``: unet base 64 on the images);
- latent diffusion with the encoder run every step, and with cached latents (``--cache-latents``), the same unet
  on the 4 x H/8 x W/8 latents.
Prints images/s on the device present (CUDA if available, else CPU). The autoencoder is untrained: its speed, not
its quality, is what is measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from iddm_cli.config import resolve
from iddm_cli.config.schema import VAE
from iddm_cli.core.reporting import SilentReporter
from iddm_cli.core.rundir import RunLogger
from iddm_cli.train.engine import Session, plan_training
from tests.conftest import make_dataset


def session_for(flags: dict, tmp: Path, schema=None) -> Session:
    plan = plan_training(resolve(flags=flags, **({"schema": schema} if schema else {})).config)
    plan.run_dir.mkdir(parents=True)
    return Session(plan, SilentReporter(), RunLogger(plan.run_dir))


def images_per_s(session: Session, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        session.train_step(x, y, 0)
    if session.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        session.train_step(x, y, 0)
    if session.device.type == "cuda":
        torch.cuda.synchronize()
    return x.shape[0] * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"# batch {args.batch_size}, fp32; {name}; torch {torch.__version__}")
    print(f"{'size':>6}{'autoencoder':>14}{'pixel DM':>12}{'latent DM':>12}{'cached':>12}   (images/s)")
    b = args.batch_size
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for size in map(int, args.sizes.split(",")):
            data = make_dataset(tmp / f"data{size}", ["a", "b"], per_class=b, size=size)
            x = torch.rand(b, 3, size, size) * 2 - 1
            y = torch.randint(0, 2, (b,))
            common = {"image_size": size, "batch_size": b, "augment": "resize", "result_path": str(tmp)}
            ae = session_for({**common, "train_dataset_path": str(data), "val_dataset_path": str(data),
                              "run_name": f"ae{size}"}, tmp, VAE)
            ae_ips = images_per_s(ae, x, y, args.steps, args.warmup)
            ae.save(0)
            dm = {**common, "dataset_path": str(data), "base_channels": 64}
            pixel_ips = images_per_s(session_for({**dm, "run_name": f"px{size}"}, tmp), x, y, args.steps,
                                     args.warmup)
            latent = {**dm, "latent": True, "autoencoder_ckpt": str(ae.plan.run_dir / "ckpt_last.pt")}
            online_ips = images_per_s(session_for({**latent, "run_name": f"ld{size}"}, tmp), x, y, args.steps,
                                      args.warmup)
            cached = session_for({**latent, "cache_latents": True, "run_name": f"lc{size}"}, tmp)
            pairs = cached.task.dataset()[0][0].expand(b, -1, -1, -1).contiguous()
            cached_ips = images_per_s(cached, pairs, y, args.steps, args.warmup)
            print(f"{size:>6}{ae_ips:>14.1f}{pixel_ips:>12.1f}{online_ips:>12.1f}{cached_ips:>12.1f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
