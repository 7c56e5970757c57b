"""The frozen autoencoder of latent diffusion: a checkpoint of ``iddm vae train`` loaded and verified, images
encoded to their posterior (mean, std), latents decoded, and the record a diffusion checkpoint keeps of it (the
file's path and SHA-256, its network and settings), so that ``iddm sample`` finds the same autoencoder again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iddm_cli.core.checkpoint import check_format, load_stored, read_checkpoint_file
from iddm_cli.errors import CheckpointError, ConfigError
from iddm_cli.nets import build_stored


def autoencoder_file(value: str | Path) -> Path:
    """A checkpoint file, or a run directory of ``iddm vae train`` (its ckpt_best.pt, else ckpt_last.pt)."""
    path = Path(value).expanduser()
    if path.is_dir():
        for name in ("ckpt_best.pt", "ckpt_last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no ckpt_best.pt or ckpt_last.pt (is it an `iddm vae train` run?)")
    return path


@dataclass
class LatentCodec:
    """A frozen autoencoder (evaluation mode, no gradients) and its record."""

    model: nn.Module
    record: dict[str, Any]  # path, sha256, network, config, channels, validation

    @property
    def latent_channels(self) -> int:
        return int(self.record["network"]["kwargs"]["latent_channels"])

    @property
    def downsample(self) -> int:
        return int(self.record["network"]["kwargs"]["downsample"])

    @property
    def channels(self) -> int:
        return int(self.record["network"]["kwargs"]["in_channels"])

    def latent_shape(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        h, w = image_size
        return self.latent_channels, h // self.downsample, w // self.downsample

    def to(self, device: torch.device) -> LatentCodec:
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(posterior mean, posterior std), each (B, latent_channels, H/f, W/f), from images in [-1, 1]."""
        mean, logvar = self.model.encode(images)
        return mean.float(), torch.exp(0.5 * logvar.float())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from (unscaled) latents."""
        return self.model.decode(latents).float().clamp(-1, 1)


def load_autoencoder(path: str | Path, key: str = "model.autoencoder_ckpt", expect_sha256: str | None = None,
                     device: torch.device | str = "cpu", hint: str = "") -> LatentCodec:
    """Load an ``iddm vae train`` checkpoint (its EMA weights, which are the weights when the run kept no EMA).
    ``expect_sha256``: the hash a diffusion checkpoint recorded; a different file is refused (``hint``: what to do
    then)."""
    file = autoencoder_file(path)
    if not file.is_file():
        raise CheckpointError(f"{key}: autoencoder checkpoint {file} does not exist")
    content = file.read_bytes()  # read once: the weights loaded are the bytes hashed
    sha = hashlib.sha256(content).hexdigest()
    data = read_checkpoint_file(file, device, content)
    if isinstance(data, dict) and "latent_channel" in data and data.get("format") != "iddm":
        raise ConfigError(f"{key}: {file} is an IDDM 1.x autoencoder, which does not convert (its architecture "
                          "differs); train one with `iddm vae train`")
    ckpt = check_format(data, file)
    if ckpt.get("kind") != "vae":
        raise ConfigError(f"{key}: {file} is a diffusion-model checkpoint, not an autoencoder one: give the "
                          "ckpt_best.pt of an `iddm vae train` run")
    if expect_sha256 is not None and sha != expect_sha256:
        raise CheckpointError(f"{key}: {file} is not the autoencoder the model was trained with (SHA-256 "
                              f"{sha[:12]}, recorded {expect_sha256[:12]}); {hint}")
    model = load_stored(ckpt["network"], ckpt.get("ema") or ckpt["model"], f"{key}: {file}")
    model.to(device).eval().requires_grad_(False)
    record = {"path": str(file.resolve()), "sha256": sha, "network": ckpt["network"], "config": ckpt["config"],
              "image_size": ckpt["data"]["image_size"], "validation": ckpt.get("validation")}
    return LatentCodec(model, record)


def codec_from_record(record: dict[str, Any], state: dict[str, torch.Tensor]) -> LatentCodec:
    """The codec rebuilt from its record and weights (how rank 0 hands its loaded autoencoder to the others)."""
    model = build_stored(record["network"])
    model.load_state_dict(state)
    return LatentCodec(model.eval().requires_grad_(False), record)
