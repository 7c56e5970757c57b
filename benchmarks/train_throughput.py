"""Training throughput of the real training step (forward, backward, clip, optimizer, EMA).

    python benchmarks/train_throughput.py                       # unet, 32x32, batch 8, fp32 and --amp
    python benchmarks/train_throughput.py --base-channels 16 --steps 20
    python benchmarks/train_throughput.py --channels-last --compile   # GPU options
    python benchmarks/train_throughput.py --table                # every network at 32 and 64 px, every variant

Prints images/s, peak memory and achieved GFLOP/s (FLOPs of one step counted with torch.utils.flop_counter)
for each precision, on the device that is present (CUDA if available, else CPU). --table prints one Markdown row
per network, image size and variant: fp32; bf16 (--amp where it means bf16 autocast; elsewhere, fp16 on GPUs before
Ampere or fp32 on CPUs without bf16, the row says so and is not measured); channels_last (fp32); compile (fp32,
torch.compile, timed after its compilation). A row that fails (out of memory, a compile error) prints its error
and the table goes on. IDDM's networks run at their default width (--base-channels 64), the ADM sizes at their own.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from iddm_cli.config import resolve
from iddm_cli.train.engine import Session, open_session, plan_training


def make_data(root: Path, size: int, classes: int = 10) -> Path:
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)  # a variant listed twice reuses it
        Image.new("RGB", (size, size), (20 * c, 128, 200)).save(root / f"c{c}" / "0.png")
    return root


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB, whole process


def bench(args: argparse.Namespace, amp: bool, tmp: Path) -> dict[str, float | str]:
    name = f"{args.network}-{args.image_size}-{amp}-{args.channels_last}-{args.compile}"
    flags = {"dataset_path": str(make_data(tmp / f"data-{name}", args.image_size)), "result_path": str(tmp),
             "run_name": f"bench-{name}", "image_size": args.image_size, "batch_size": args.batch_size,
             "network": args.network, "base_channels": args.base_channels, "amp": amp, "augment": "resize"}
    plan = plan_training(resolve(flags=flags).config)
    if amp and plan.amp_dtype is not torch.bfloat16 and args.table:  # fp16 on a GPU older than Ampere, or fp32
        return {"precision": "bf16", "skipped": "no bf16 on this device"}
    try:
        with open_session(plan) as session:
            return measure(args, plan, session, amp)
    finally:  # nothing of this row stays for the next (the session and its task refer to each other)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def measure(args: argparse.Namespace, plan: Any, session: Session, amp: bool) -> dict[str, float | str]:
    if args.channels_last:
        session.model.to(memory_format=torch.channels_last)
    if args.compile:
        session.net = torch.compile(session.model)
    device = plan.device
    x0 = torch.rand(args.batch_size, 3, args.image_size, args.image_size) * 2 - 1
    y = torch.randint(0, 10, (args.batch_size,))
    if args.channels_last:
        x0 = x0.to(memory_format=torch.channels_last)

    with FlopCounterMode(display=False) as counter:  # one step, before compilation effects matter
        session.train_step(x0, y, 0)
    flops = counter.get_total_flops()
    for _ in range(args.warmup):
        session.train_step(x0, y, 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        session.train_step(x0, y, 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[plan.amp_dtype]
    label = f"--amp ({precision})" if amp else precision  # --amp stays fp32 where there is no bf16 or CUDA fp16
    return {"precision": label, "gflop_per_image": flops / args.batch_size / 1e9,
            "images_per_s": args.batch_size / seconds, "ms_per_step": 1000 * seconds,
            "peak_mb": peak_memory_mb(device), "gflops": flops / seconds / 1e9,
            "device": str(device)}


VARIANTS = {"fp32": {}, "bf16": {"amp": True}, "channels_last": {"channels_last": True}, "compile": {"compile": True}}


def table(args: argparse.Namespace, name: str) -> None:
    """One Markdown row per network x image size x variant."""
    print(f"# batch {args.batch_size}, {args.steps} timed steps after {args.warmup}; {name}; torch {torch.__version__}")
    print("| network | px | variant | GFLOP/image (train step) | images/s | GFLOP/s | peak MiB |",
          "|---|---|---|---|---|---|---|", sep="\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for network in args.networks.split(","):
            for size in map(int, args.sizes.split(",")):
                for variant in args.variants.split(","):
                    options = VARIANTS[variant]
                    run = argparse.Namespace(**{**vars(args), "network": network, "image_size": size,
                                                "channels_last": options.get("channels_last", False),
                                                "compile": options.get("compile", False)})
                    torch.manual_seed(0)
                    try:
                        r = bench(run, options.get("amp", False), Path(tmp))
                    except Exception as err:  # one row's failure (out of memory, a compile error) is that row's
                        print(f"| {network} | {size} | {variant} | | error: {str(err).splitlines()[0][:120]} | | |",
                              flush=True)
                        continue
                    finally:
                        if run.compile:
                            torch._dynamo.reset()
                    if "skipped" in r:
                        print(f"| {network} | {size} | {variant} | | {r['skipped']} | | |", flush=True)
                        continue
                    peak = f"{r['peak_mb']:.0f}" if r["device"].startswith("cuda") else "-"  # CPU: no per-row peak
                    print(f"| {network} | {size} | {variant} | {_figure(r['gflop_per_image'])} | "
                          f"{_figure(r['images_per_s'])} | {_figure(r['gflops'])} | {peak} |", flush=True)


def _figure(x: float) -> str:
    """One decimal, or three significant digits below 10: a tiny network's GFLOP never prints as 0.0."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="unet")
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--precisions", default="fp32,amp", help="comma list of fp32, amp")
    parser.add_argument("--table", action="store_true", help="a Markdown table over --networks, --sizes, --variants")
    parser.add_argument("--networks", default="unet,cspdarkunet,adm-xs,adm-s,adm-m")
    parser.add_argument("--sizes", default="32,64")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    if args.table:
        unknown = set(args.variants.split(",")) - set(VARIANTS)
        if unknown:
            parser.error(f"--variants: unknown {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
        table(args, name)
        return
    print(f"# {args.network} base {args.base_channels}, {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"channels_last={args.channels_last}, compile={args.compile}; {name}; "
          f"torch {torch.__version__}")
    print(f"{'precision':<16}{'images/s':>10}{'ms/step':>10}{'peak MiB':>10}{'GFLOP/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for which in args.precisions.split(","):
            r = bench(args, which == "amp", Path(tmp))
            print(f"{r['precision']:<16}{r['images_per_s']:>10.1f}{r['ms_per_step']:>10.1f}{r['peak_mb']:>10.0f}"
                  f"{r['gflops']:>10.1f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
