"""The whole training process, IDDM's trainer against iddm's, on the same CPU, data and command line.

    python benchmarks/vs_iddm.py --iddm PATH/TO/Integrated-Design-Diffusion-Model --data DIR
    python benchmarks/vs_iddm.py --iddm ... --data DIR --epochs 3 --batch-size 8 --image-size 32 --network unet

Both get IDDM's own flags (`--network unet --batch_size 8 --image_size 32 --epochs N --dataset_path DIR ...`,
conditional, no previews), which `iddm dm train` accepts as they are; each runs in its own process and is timed from
start to exit (start-up, data loading, every step and every checkpoint). IDDM refuses to train without CUDA since
1.1.2; here its device function is replaced by one returning the CPU, and `transformers` (which IDDM imports for
its text mode; class conditioning never uses it) by an empty module when it is not installed; nothing else of it
is changed. IDDM needs its own dependencies (matplotlib, coloredlogs, scikit-image, tqdm, requests, tensorboard);
put them in a virtual environment and give its python with --iddm-python. Prints a Markdown table: wall seconds,
images/s over the whole process, and the ratio. --ours-args adds flags to iddm's run only, written with "=" when
they start with a dash (`--ours-args=--channels-last`, `"--ours-args=--amp --compile"`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IDDM_ON_CPU = """
import importlib.util, sys, types, torch
sys.path.insert(0, sys.argv[1])
if importlib.util.find_spec("transformers") is None:  # for IDDM's text mode only; class conditioning never calls it
    clip = types.ModuleType("transformers")
    clip.CLIPTextModel = clip.CLIPTokenizer = None
    sys.modules["transformers"] = clip
sys.argv = ["train.py", *sys.argv[2:]]
import iddm.model.trainers.base as base
base.device_initializer = lambda device_id=0, is_train=False: torch.device("cpu")
from iddm.tools.train import init_train_args, main
main(init_train_args())
"""


def timed(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{cmd[0]} ... exited {result.returncode}; the end of {log}:\n{log.read_text()[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iddm", type=Path, required=True, help="a checkout of IDDM (the folder holding iddm/)")
    parser.add_argument("--iddm-python", default=sys.executable, help="the python that has IDDM's dependencies")
    parser.add_argument("--data", type=Path, required=True, help="class folders of images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--network", default="unet")
    parser.add_argument("--ours-args", default="", help="more flags for iddm's run only")
    parser.add_argument("--out", type=Path, help="run folders and logs (default: a temporary folder)")
    args = parser.parse_args()
    if not (args.iddm / "iddm" / "tools" / "train.py").is_file():
        parser.error(f"--iddm: {args.iddm} holds no iddm/tools/train.py; give the folder of an IDDM checkout")
    images = sum(1 for p in args.data.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    out = args.out or Path(tempfile.mkdtemp(prefix="vs-iddm-"))
    out.mkdir(parents=True, exist_ok=True)
    flags = ["--network", args.network, "--batch_size", str(args.batch_size), "--image_size", str(args.image_size),
             "--epochs", str(args.epochs), "--dataset_path", str(args.data), "--num_workers", "0", "--conditional"]
    threads = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count())
    rows = []
    for name, log, cmd in (
            ("IDDM", "reference", [args.iddm_python, "-c", IDDM_ON_CPU, str(args.iddm.resolve()), *flags,
                                   "--result_path", str(out / "reference"), "--run_name", "bench"]),
            ("iddm", "ours", [sys.executable, "-m", "iddm_cli", "dm", "train", *flags, "--device", "cpu",
                              "--result_path", str(out / "ours"), "--run_name", "bench",
                              *shlex.split(args.ours_args)])):
        seconds = timed(cmd, out / f"{log}.log")
        rows.append((name, seconds, args.epochs * images / seconds))
        print(f"# {name}: {seconds:.1f} s", flush=True)
    print(f"# {args.network}, {args.image_size} px, batch {args.batch_size}, {args.epochs} epochs of {images} images, "
          f"CPU threads {threads}; iddm flags: {args.ours_args or '(none)'}; logs in {out}")
    print("| trainer | wall s | images/s (whole process) | speed-up |", "|---|---|---|---|", sep="\n")
    for name, seconds, ips in rows:
        print(f"| {name} | {seconds:.1f} | {ips:.2f} | {rows[0][1] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
