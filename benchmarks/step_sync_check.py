"""Checks that the training step never makes the host wait for the GPU: runs steps of a small network (one with a
non-finite batch, which is skipped on the device) under torch.cuda.set_sync_debug_mode("error"), which turns every
synchronising CUDA call (a copy to the host, .item(), a blocking copy) into an error. The readings that are allowed
to wait (Session.settle, the progress display's loss) run outside it.

    python benchmarks/step_sync_check.py                 # adm-xs at 32 px, batch 32, fp32 and bf16, on CUDA
    python benchmarks/step_sync_check.py --network unet --steps 20
    python benchmarks/step_sync_check.py --device cpu    # the same steps and skip count, nothing to synchronise

Prints one line per precision and exits 1 if a step synchronised or the non-finite step was not the one skipped.
Asked for CUDA where there is none, it says there is nothing to check and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from train_throughput import make_data  # this folder is on sys.path when run as a script

from iddm_cli.config import resolve
from iddm_cli.train.engine import open_session, plan_training


def check(args: argparse.Namespace, amp: bool, tmp: Path) -> str | None:
    """None when no step synchronised and exactly the non-finite step was skipped, else what went wrong."""
    name = f"sync-{args.network}-{amp}"
    flags = {"dataset_path": str(make_data(tmp / name, args.image_size)), "result_path": str(tmp), "run_name": name,
             "image_size": args.image_size, "batch_size": args.batch_size, "network": args.network, "amp": amp,
             "augment": "resize", "device": args.device, "devices": 1}
    cuda = args.device == "cuda"
    x0 = torch.rand(args.batch_size, 3, args.image_size, args.image_size) * 2 - 1
    y = torch.randint(0, 10, (args.batch_size,))
    bad = torch.full_like(x0, float("nan"))
    if cuda:  # pinned, as the data loader's batches are on CUDA
        x0, y, bad = x0.pin_memory(), y.pin_memory(), bad.pin_memory()
    with open_session(plan_training(resolve(flags=flags).config)) as session:
        for _ in range(3):  # allocations, cuDNN and autotuning choices: allowed to wait
            session.train_step(x0, y, 0)
        session.settle()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            for i in range(args.steps):
                session.train_step(bad if i == args.steps // 2 else x0, y, i)
        except RuntimeError as err:
            return f"a step synchronised: {str(err).splitlines()[0]}"
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
        session.settle()
        if session.skipped != 1:
            return f"expected the one non-finite step to be skipped, counted {session.skipped}"
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="adm-xs")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (the CPU does not queue work)")
        return
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for amp in (False, True):
            error = check(args, amp, Path(tmp))
            label = "--amp" if amp else "fp32"
            verdict = f"FAILED, {error}" if error else f"{args.steps} steps, the non-finite one skipped, no wait"
            print(f"{args.network} {label} on {args.device}: {verdict}")
            failed |= error is not None
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
