"""Sample quality per minute of training: train with a profile for a wall-clock budget, then score 1,000 samples of
each sampler at 10 and 20 steps with FID and KID against held-out images.

    python benchmarks/quality.py                                   # Fashion-MNIST (Debian's package), demo profile
    python benchmarks/quality.py --profile demo --budget 600 --num 1000 --out bench-quality
    python benchmarks/quality.py --train DIR --ref DIR --image-size 32

Without --train/--ref it builds both from Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist):
--per-class training images of each class from the train split and --ref-per-class images of each class from the
test split, padded from 28 to 32 px. Training runs `iddm dm train` and is stopped by SIGINT when the budget is
spent (it saves and exits 130, as Ctrl-C does); the scores come from `iddm eval fid` on the saved checkpoint.
Prints a Markdown table: sampler, steps, fid, kid, and the sampling and scoring wall times. Needs the eval extra.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

from iddm_cli.diffusion.registry import SAMPLERS

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["tshirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def idx(path: Path) -> tuple[list[bytes], list[int]]:
    with gzip.open(path) as fh:
        _, n, h, w = struct.unpack(">IIII", fh.read(16))
        data = fh.read()
    with gzip.open(str(path).replace("images-idx3", "labels-idx1")) as fh:
        labels = list(fh.read()[8:])
    return [data[i * h * w:(i + 1) * h * w] for i in range(n)], labels


def write_split(split: str, out: Path, per_class: int) -> Path:
    """Fashion-MNIST images padded 28 -> 32 px as out/<class>/<index>.png, the first per_class of each class."""
    if out.is_dir():
        return out
    images, labels = idx(FASHION / f"{split}-images-idx3-ubyte.gz")
    counts = [0] * 10
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        if counts[label] >= per_class:
            continue
        counts[label] += 1
        folder = out / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        ImageOps.expand(Image.frombytes("L", (28, 28), pixels), border=2, fill=0).save(folder / f"{i:05d}.png")
    return out


def iddm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iddm_cli", *map(str, args)], capture_output=True, text=True)


def train(args: argparse.Namespace, data: Path, run_dir: Path) -> float:
    """Train until the budget is spent, then stop it as Ctrl-C would; returns the wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "iddm_cli", "dm", "train", "--profile", args.profile,
                             "--dataset-path", str(data), "--image-size", str(args.image_size), "--epochs", "100000",
                             "--no-vis", "--result-path", str(run_dir.parent), "--run-name", run_dir.name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=args.budget)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait()
    if not (run_dir / "ckpt_last.pt").is_file():
        sys.exit(f"training left no checkpoint: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds")
    parser.add_argument("--train", type=Path, help="class-folder training images (default: Fashion-MNIST)")
    parser.add_argument("--ref", type=Path, help="reference images (default: Fashion-MNIST test split)")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--ref-per-class", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--steps", default="10,20")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--out", type=Path, default=Path("bench-quality"))
    parser.add_argument("--checkpoint", type=Path, help="score this checkpoint instead of training")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.train or write_split("train", args.out / "train", args.per_class)
    ref = args.ref or write_split("t10k", args.out / "ref", args.ref_per_class)
    os.environ.setdefault("IDDM_CACHE_DIR", str(args.out / "cache"))
    run = args.checkpoint or args.out / f"{args.profile}-{args.image_size}px"
    if args.checkpoint is None:
        seconds = train(args, data, run)
        print(f"# trained {args.profile} on {data} for {seconds:.0f} s", flush=True)
    cached = json.loads(iddm("eval", "fid", "--ref", ref, "--images", ref, "--json").stdout or "{}")  # caches it
    print(f"# reference: {ref} ({cached.get('samples', '?')} images, statistics cached)", flush=True)
    print("| sampler | steps | fid | kid | wall s |\n|---|---|---|---|---|", flush=True)
    for sampler in args.samplers.split(","):
        for steps in map(int, args.steps.split(",")):
            start = time.perf_counter()
            result = iddm("eval", "fid", "--ref", ref, "--ckpt", run, "--sampler", sampler, "--steps", steps,
                          "--num", args.num, "--json")
            wall = time.perf_counter() - start
            if result.returncode:
                print(f"| {sampler} | {steps} | error: {result.stderr.strip().splitlines()[-1]} | | |", flush=True)
                continue
            scores = json.loads(result.stdout)
            fid = next(v for k, v in scores.items() if k.startswith("fid"))
            kid = next(v for k, v in scores.items() if k.startswith("kid") and not k.endswith("_std"))
            print(f"| {sampler} | {steps} | {fid:.2f} | {kid:.4f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
