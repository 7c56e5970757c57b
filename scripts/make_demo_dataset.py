"""Build the embedded demo dataset from Debian's ``dataset-fashion-mnist`` package.

    apt-get install dataset-fashion-mnist
    python scripts/make_demo_dataset.py [--per-class 120]

Writes ``iddm_cli/demo_data/fashion-mnist/<class>/<index>.png`` (28x28 gray), taking the first N training images
of each class, plus the licence and attribution. Deterministic: running it again gives the same files.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import struct
from pathlib import Path

from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
TARGET = Path(__file__).resolve().parents[1] / "iddm_cli" / "demo_data" / "fashion-mnist"
CLASSES = ["tshirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
LICENSE = """Fashion-MNIST subset, embedded as iddm's demo dataset.

Source: Fashion-MNIST by Zalando Research (https://github.com/zalandoresearch/fashion-mnist),
taken from Debian's dataset-fashion-mnist package; the first {n} training images of each class, 28x28 gray PNG.

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of
the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def read_idx(path: Path) -> tuple[tuple[int, ...], bytes]:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return shape, data[4 + 4 * ndim:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=120)
    args = parser.parse_args()
    (n, h, w), pixels = read_idx(SOURCE / "train-images-idx3-ubyte.gz")
    _, labels = read_idx(SOURCE / "train-labels-idx1-ubyte.gz")
    shutil.rmtree(TARGET, ignore_errors=True)
    counts = [0] * len(CLASSES)
    for i in range(n):
        label = labels[i]
        if counts[label] >= args.per_class:
            continue
        folder = TARGET / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.frombytes("L", (w, h), pixels[i * h * w:(i + 1) * h * w])
        img.save(folder / f"{i:05d}.png", optimize=True)
        counts[label] += 1
        if min(counts) >= args.per_class:
            break
    (TARGET / "LICENSE.txt").write_text(LICENSE.format(n=args.per_class), encoding="utf-8")
    print(f"wrote {sum(counts)} images to {TARGET}")


if __name__ == "__main__":
    main()
