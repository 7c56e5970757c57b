"""Labelled sample grids and image files: one row per class (conditional) or a square block (unconditional)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF"}
MIN_CELL = 64  # small images are enlarged (nearest neighbour) to at least this many pixels
PAD = 2


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8, clamped first so nothing wraps around. (N, C, H, W)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def _cell(img: torch.Tensor, scale: int) -> Image.Image:
    array = img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()
    pil = Image.fromarray(array, mode="RGB" if img.shape[0] == 3 else "L").convert("RGB")
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def save_grid(images: torch.Tensor, path: Path, rows: int, row_labels: list[str] | None = None,
              image_format: str = "png") -> Path:
    """Write ``images`` (N, C, H, W) in [-1, 1] as a grid of ``rows`` rows, labelled on the left when given."""
    pixels = to_uint8(images)
    n, _, h, w = pixels.shape
    cols = math.ceil(n / rows)
    scale = max(1, math.ceil(MIN_CELL / max(h, w)))
    ch, cw = h * scale, w * scale
    font = ImageFont.load_default(size=max(12, min(ch // 3, 20)))
    label_w = 0
    if row_labels:
        label_w = max(int(font.getlength(label)) for label in row_labels) + 3 * PAD
    grid = Image.new("RGB", (label_w + cols * (cw + PAD) + PAD, rows * (ch + PAD) + PAD), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        r, c = divmod(i, cols)
        grid.paste(_cell(pixels[i], scale), (label_w + PAD + c * (cw + PAD), PAD + r * (ch + PAD)))
    for r, label in enumerate(row_labels or []):
        draw.text((PAD, PAD + r * (ch + PAD) + ch // 2), label, fill="black", font=font, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format=PIL_FORMATS[image_format])
    return path
