"""Image fidelity of a reconstruction: PSNR and SSIM per image, for images in [0, 1] shaped (B, C, H, W).

Both compute in float64 (a PSNR near 40 dB is an MSE near 1e-4, where float32 sums lose digits) and return float64
tensors of shape (B,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_CAP = 100.0  # dB that mean_psnr gives an exact reconstruction (an MSE of 1e-10)
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. 2004, sec. III-C
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(f"expected two image batches of one shape (B, C, H, W), got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, peak 1: 10 log10(1 / MSE), the MSE over C, H, W. (B,) float64.

    Identical images have an MSE of 0 and give +inf; average the finite values, or use :func:`mean_psnr`.
    """
    _check_pair(a, b)
    mse = (a.double() - b.double()).square().mean(dim=(1, 2, 3))  # (B,)
    return 10.0 * torch.log10(1.0 / mse)  # 1 / 0 = inf -> inf dB


def mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """The batch's mean PSNR in dB, each image's capped at PSNR_CAP (100 dB) so that exact copies count finitely."""
    return psnr(a, b).clamp(max=PSNR_CAP).mean().item()


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """Normalised 2-D Gaussian, (1, 1, size, size), the outer product of two normalised 1-D ones."""
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004, eq. 13), averaged over channels and pixels. (B,) float64.

    The standard settings: an 11x11 Gaussian window of sigma 1.5, C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1,
    each channel on its own, local statistics only where the window fits inside the image ('valid'), population
    (not sample) variances. This is scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``. An image smaller than 11 px a side gets a window of the largest
    odd size that fits (sigma still 1.5, the weights renormalised), so a single mean-SSIM over the whole image is
    what remains at 1 or 2 px.
    """
    _check_pair(a, b)
    n, c, h, w = a.shape
    x = a.double().reshape(n * c, 1, h, w)  # each channel on its own
    y = b.double().reshape(n * c, 1, h, w)
    size = min(SSIM_WINDOW, min(h, w) - (1 - min(h, w) % 2))  # largest odd size <= the shorter side
    window = _gaussian_window(size, SSIM_SIGMA, x).expand(5, 1, size, size)
    stats = F.conv2d(torch.cat([x, y, x * x, y * y, x * y], dim=1), window, groups=5)  # (B*C, 5, H', W')
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.unbind(dim=1)
    var_x, var_y, cov = e_xx - mu_x.square(), e_yy - mu_y.square(), e_xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # L = 1
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(n, -1).mean(dim=1)
