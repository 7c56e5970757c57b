"""Sample quality per minute of training: train with a profile for a wall-clock budget, then score 1,000 samples of
each sampler at 10 and 20 steps with FID and KID against held-out images.

    python benchmarks/quality.py                                   # Fashion-MNIST (Debian's package), demo profile
    python benchmarks/quality.py --profile demo --budget 600 --num 1000 --out bench-quality
    python benchmarks/quality.py --train DIR --ref DIR --image-size 32
    python benchmarks/quality.py --planned --name adm-xs --train-args "--network adm-xs" --rows dpmpp2m:20

Without --train/--ref it builds both from Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist):
--per-class training images of each class from the train split and --ref-per-class images of each class from the
test split, padded from 28 to 32 px. Training runs `iddm dm train` and is stopped by SIGINT when the budget is
spent (it saves and exits 130, as Ctrl-C does), or with --planned is given the budget as --max-time, so that its
step count and learning-rate schedule are planned to end inside it; --train-args adds training flags (a network,
a learning rate) and --name names the run. The scores come from `iddm eval fid` on the saved checkpoint.
Prints a Markdown table: sampler, steps, network evaluations per sample (NFE, before guidance doubles them), fid,
kid, and the sampling and scoring wall time. --jobs N scores N rows at once, each process on cores/N threads (on 2
CPU cores, two 1-thread processes do 1.2x the work of one 2-thread process); a row's wall time is then its own
process's. Needs the eval extra.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import json
import os
import shlex
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps

from iddm_cli.diffusion.registry import SAMPLERS
from iddm_cli.diffusion.samplers import timesteps
from iddm_cli.diffusion.schedule import Diffusion
from iddm_cli.evaluation import metric_name, reference
from iddm_cli.metrics.fid import InceptionFeatures

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


def iddm(*args: str, threads: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.run([sys.executable, "-m", "iddm_cli", *map(str, args)], capture_output=True, text=True, env=env)


def train(args: argparse.Namespace, data: Path, run_dir: Path) -> tuple[float, int]:
    """Train for the budget (planned with --max-time, or stopped as Ctrl-C would stop it when it is spent); returns
    the wall time and the steps trained."""
    if run_dir.exists():
        sys.exit(f"{run_dir} exists: give another --name, or score it with --checkpoint {run_dir}")
    length = ["--max-time", f"{args.budget:g}s"] if args.planned else ["--epochs", "100000"]
    log = run_dir.parent / f"{run_dir.name}.stderr.log"  # a file, not a pipe that a long run could fill
    start = time.perf_counter()
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "iddm_cli", "dm", "train", "--profile", args.profile,
                                 "--dataset-path", str(data), "--image-size", str(args.image_size), *length,
                                 "--no-vis", "--result-path", str(run_dir.parent), "--run-name", run_dir.name,
                                 *shlex.split(args.train_args)], stdout=subprocess.DEVNULL, stderr=stderr)
        try:  # a planned run ends itself inside its budget; this is the backstop if it hangs
            proc.wait(timeout=1.5 * args.budget + 120 if args.planned else args.budget)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait()
    seconds = time.perf_counter() - start
    if not (run_dir / "ckpt_last.pt").is_file():
        sys.exit(f"training left no checkpoint: {log.read_text()[-2000:]}")
    ckpt = torch.load(run_dir / "ckpt_last.pt", map_location="cpu", weights_only=True)
    return seconds, int(ckpt["progress"]["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds")
    parser.add_argument("--planned", action="store_true", help="give the budget to training as --max-time")
    parser.add_argument("--train-args", default="", help='more training flags, e.g. "--network adm-xs --lr 1e-3"')
    parser.add_argument("--name", help="run name (default: PROFILE-SIZEpx)")
    parser.add_argument("--train", type=Path, help="class-folder training images (default: Fashion-MNIST)")
    parser.add_argument("--ref", type=Path, help="reference images (default: Fashion-MNIST test split)")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--ref-per-class", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of every row (the training seed is a "
                        "--train-args flag)")
    parser.add_argument("--steps", default="10,20")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--out", type=Path, default=Path("bench-quality"))
    parser.add_argument("--checkpoint", type=Path, help="score this checkpoint instead of training")
    parser.add_argument("--jobs", type=int, default=1, help="rows scored at once, each on cores/jobs threads")
    parser.add_argument("--rows", help="sampler:steps,... to score instead of --samplers x --steps (say, the rows "
                        "an interrupted table lacks)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs: expected 1 or more")
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.train or write_split("train", args.out / "train", args.per_class)
    ref = args.ref or write_split("t10k", args.out / "ref", args.ref_per_class)
    os.environ.setdefault("IDDM_CACHE_DIR", str(args.out / "cache"))
    run = args.checkpoint or args.out / (args.name or f"{args.profile}-{args.image_size}px")
    if args.checkpoint is None:
        seconds, steps = train(args, data, run)
        print(f"# trained {args.profile} {args.train_args} on {data} for {seconds:.0f} s, {steps} steps "
              f"({'planned with --max-time' if args.planned else 'stopped by SIGINT'})", flush=True)
    ckpt = torch.load(run if run.is_file() else run / "ckpt_last.pt", map_location="cpu", weights_only=True)
    diffusion = Diffusion(ckpt["diffusion"]["name"], ckpt["diffusion"]["noise_steps"])
    # the reference's statistics at the model's size, cached once here, before the rows time anything
    reference(str(ref), InceptionFeatures(), size=tuple(ckpt["data"]["image_size"]))
    print(f"# reference: {ref} (statistics cached at {'x'.join(map(str, ckpt['data']['image_size']))}); "
          f"{args.num} samples a row, sampling seed {args.seed}", flush=True)
    rows = [(sampler, steps) for sampler in args.samplers.split(",") for steps in map(int, args.steps.split(","))]
    if args.rows:  # given rows instead, in the order given (longest first balances --jobs)
        rows = [(row.split(":")[0], int(row.split(":")[1])) for row in args.rows.split(",")]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    def score(row: tuple[str, int]) -> str:
        sampler, steps = row
        start = time.perf_counter()
        result = iddm("eval", "fid", "--ref", ref, "--ckpt", run, "--sampler", sampler, "--steps", steps,
                      "--num", args.num, "--seed", args.seed, "--json", threads=threads if args.jobs > 1 else None)
        wall = time.perf_counter() - start
        nfe = SAMPLERS[sampler].nfe(len(timesteps(diffusion, steps)))
        if result.returncode:
            why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
            return f"| {sampler} | {steps} | {nfe} | error: {why} | | |"
        scores = json.loads(result.stdout)
        fid = next(v for k, v in scores.items() if k.startswith("fid"))
        kid = next(v for k, v in scores.items() if k.startswith("kid") and not k.endswith("_std"))
        return f"| {sampler} | {steps} | {nfe} | {fid:.2f} | {kid:.4f} | {wall:.0f} |"

    print(f"| sampler | steps | NFE | {metric_name('fid', args.num)} | {metric_name('kid', args.num)} | wall s |",
          "|---|---|---|---|---|---|", sep="\n", flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(score, rows):  # in table order, each as soon as it and those above it are done
            print(line, flush=True)


if __name__ == "__main__":
    main()
