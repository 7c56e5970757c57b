"""Shared fixtures: tiny real image folders made on the fly, and a CLI runner."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from iddm_cli.cli.app import app

# The signal tests expect Python's own Ctrl-C handling. A suite started in the background of a non-interactive shell
# (`cmd &`) inherits SIGINT ignored, and the trainer rightly restores whatever it found: start from Python's default.
signal.signal(signal.SIGINT, signal.default_int_handler)

# Flags that make any training tiny: 8 px, 4 base channels, 20 diffusion steps, one epoch.
TINY = ["--image-size", "8", "--base-channels", "4", "--noise-steps", "20", "--epochs", "1", "--batch-size", "4",
        "--augment", "resize", "--log-every", "1"]
STRUCTURE = {"network": {"name": "unet", "kwargs": {}}, "model": {}, "data": {}, "config": {}, "diffusion": {}}


def _image(rng: random.Random, mode: str, size: int, shade: int) -> Image.Image:
    """A simple but non-constant picture: a bright square on a darker background."""
    fill = (shade, 255 - shade, 128) if mode == "RGB" else shade
    img = Image.new(mode, (size, size), fill)
    x0 = rng.randrange(0, size // 2)
    img.paste((255, 255, 255) if mode == "RGB" else 255, (x0, x0, x0 + size // 3, x0 + size // 3))
    return img


def make_dataset(root: Path, classes: list[str] | None, per_class: int = 6, mode: str = "RGB",
                 size: int = 12, ext: str = "png") -> Path:
    """classes=None gives a flat folder (unconditional); otherwise one subfolder per class."""
    rng = random.Random(0)
    folders = [root / c for c in classes] if classes else [root]
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            _image(rng, mode, size, 40 + 60 * i).save(folder / f"{j}.{ext}")
    return root


@pytest.fixture
def cond_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "cond", ["cat", "dog", "owl"])


@pytest.fixture
def flat_gray(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "flat", None, per_class=8, mode="L")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(runner: CliRunner):
    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return run
