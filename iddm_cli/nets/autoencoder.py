"""A KL-regularised convolutional autoencoder: images to a small Gaussian latent and back.

The AutoencoderKL of Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models" (sec. 3,
appendix G), simplified to IDDM's ``vae`` layout: no attention, no quant convs, one residual block per stage. The
encoder is a stem conv, then per stage a stride-2 conv and a residual block, a middle residual block, and a conv to
2 * latent_channels split into mean and log-variance; the decoder mirrors it with nearest x2 + conv3x3 upsampling.
At base_channels=64, downsample=8 and 3 image channels this has about 6.3 M parameters (IDDM's ``vae``: about 6.1 M).
The decoder ends in a plain conv (no tanh, unlike IDDM): its output is unbounded and the caller clamps images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from iddm_cli.nets.layers import make_act

CHANNEL_MULT = (1, 2, 4, 4)  # width of each stride-2 stage / base_channels; deeper stages repeat the last one
LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the log-variance, as in LDM's DiagonalGaussianDistribution


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """min(32, channels) GroupNorm groups when that divides ``channels``, else the largest divisor below it."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def norm_act(channels: int, act: str) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(norm_groups(channels), channels), make_act(act))


class ResBlock(nn.Module):
    """norm -> act -> conv3x3 -> norm -> act -> conv3x3, plus the input (through a 1x1 conv if the width changes)."""

    def __init__(self, cin: int, cout: int, act: str):
        super().__init__()
        self.block = nn.Sequential(norm_act(cin, act), nn.Conv2d(cin, cout, 3, padding=1),
                                   norm_act(cout, act), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)  # (B, cout, H, W)


class Upsample(nn.Module):
    """nearest x2 -> conv3x3 (LDM's Upsample with conv; avoids the checkerboard of transposed convs)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, cout, 2H, 2W)


class Autoencoder(nn.Module):
    def __init__(self, in_channels: int = 3, latent_channels: int = 4, base_channels: int = 64,
                 downsample: int = 8, act: str = "silu"):
        super().__init__()
        if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 2 \
                or downsample & (downsample - 1):
            raise ValueError(f"downsample {downsample!r}: expected a power of two >= 2 (usually 4 or 8)")
        stages = downsample.bit_length() - 1  # log2(downsample) stride-2 stages
        mult = CHANNEL_MULT[:stages] + CHANNEL_MULT[-1:] * max(0, stages - len(CHANNEL_MULT))
        widths = [base_channels * m for m in mult]  # channels after each stage
        self.downsample, self.latent_channels = downsample, latent_channels

        # encoder: stem, then per stage a stride-2 conv (width change) and a residual block
        enc: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 3, padding=1)]
        cin = base_channels
        for c in widths:
            enc += [nn.Conv2d(cin, c, 3, stride=2, padding=1), ResBlock(c, c, act)]  # H/2 each
            cin = c
        enc += [ResBlock(cin, cin, act), norm_act(cin, act), nn.Conv2d(cin, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        # decoder: the mirror image, each stage a residual block then nearest x2 + conv (width change)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, cin, 3, padding=1), ResBlock(cin, cin, act)]
        for c, cout in zip(widths[::-1], [*widths[-2::-1], base_channels], strict=True):
            dec += [ResBlock(c, c, act), Upsample(c, cout)]  # 2H each
        dec += [norm_act(base_channels, act), nn.Conv2d(base_channels, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> mean, logvar, each (B, latent_channels, H/downsample, W/downsample)."""
        h, w = x.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"image size {h}x{w}: height and width must be divisible by the autoencoder's "
                             f"downsample factor {self.downsample}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_channels, h, w) -> (B, C, h*downsample, w*downsample), unbounded."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """recon, mean, logvar. z = mean + exp(logvar / 2) * noise (the reparameterisation trick, Kingma and
        Welling 2014, eq. 10), or z = mean when ``sample`` is False."""
        mean, logvar = self.encode(x)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise  # (B, latent, h, w)
        return self.decode(z), mean, logvar


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over every element (Kingma and Welling 2014, appendix B), float32."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum()


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, recon_mse, kl_per_element), float32: total = mse(recon, x) + kl_weight * KL_sum / x.numel().

    The KL sum is divided by the number of image elements, as IDDM's MSEKLLoss does, so that ``kl_weight``
    (the caller's choice, typically 1e-4) weighs it against a per-pixel MSE whatever the image size.
    """
    recon_mse = F.mse_loss(recon.float(), x.float())
    kl_per_element = kl_divergence(mean, logvar) / x.numel()
    return recon_mse + kl_weight * kl_per_element, recon_mse, kl_per_element
