"""PSNR and SSIM: hand-computed values, an independent float64 re-implementation, and scikit-image if present."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iddm_cli.metrics.image import mean_psnr, psnr, ssim

C1, C2 = 0.01**2, 0.03**2


def test_psnr_of_identical_images_is_inf_and_mean_psnr_caps_it():
    a = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    values = psnr(a, a.clone())
    assert values.shape == (3,) and values.dtype == torch.float64
    assert torch.isinf(values).all() and (values > 0).all()
    assert mean_psnr(a, a.clone()) == 100.0


def test_psnr_of_a_known_mse_per_image():
    a = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1, :, :4] += 0.2  # half the pixels off by 0.2: MSE 0.02
    assert psnr(a, b).tolist() == pytest.approx([20.0, 10 * math.log10(50)], abs=1e-9)
    assert psnr(b, a).tolist() == pytest.approx(psnr(a, b).tolist(), abs=0)  # symmetric
    # float32 input, exactly representable difference 1/8: MSE 1/64
    a32, b32 = torch.full((1, 1, 4, 4), 0.25), torch.full((1, 1, 4, 4), 0.375)
    assert psnr(a32, b32).item() == pytest.approx(10 * math.log10(64), abs=1e-12)
    # one exact copy among finite ones: mean_psnr counts it as 100 dB
    b[1] = a[1]
    assert mean_psnr(a, b) == pytest.approx((20.0 + 100.0) / 2, abs=1e-9)


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ssim(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))


def test_ssim_of_identical_images_is_one():
    a = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    values = ssim(a, a.clone())
    assert values.shape == (2,) and values.dtype == torch.float64
    assert values.tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_ssim_of_a_constant_shift_of_a_constant_image():
    # no variance anywhere: the contrast-structure factor is C2 / C2 = 1 and SSIM is the luminance term alone
    mu1, mu2 = 0.3, 0.5
    a = torch.full((1, 2, 16, 16), mu1, dtype=torch.float64)
    expected = (2 * mu1 * mu2 + C1) / (mu1**2 + mu2**2 + C1)
    assert ssim(a, a + (mu2 - mu1)).item() == pytest.approx(expected, abs=1e-12)
    assert expected < 0.9  # and not trivially 1


def test_ssim_of_independent_noise_is_near_zero():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(4, 3, 64, 64, generator=g), torch.rand(4, 3, 64, 64, generator=g)
    values = ssim(a, b)  # each about 0.01 from 0: ~300 independent 11x11 windows a channel, correlation ~0.2 each
    assert values.abs().max().item() < 0.05 and values.mean().abs().item() < 0.02
    # and a mildly noisy copy sits in between
    noisy = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert 0.3 < ssim(a, noisy).min().item() < 0.99


def _reference_ssim(a: np.ndarray, b: np.ndarray, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Wang et al. 2004 written out pixel by pixel: centred weighted moments over each valid window. (B,)"""
    half = size // 2
    g = np.exp(-((np.arange(size) - half) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    out = []
    for x_img, y_img in zip(a, b, strict=True):
        values = []
        for x_ch, y_ch in zip(x_img, y_img, strict=True):
            for i in range(x_ch.shape[0] - size + 1):
                for j in range(x_ch.shape[1] - size + 1):
                    px, py = x_ch[i:i + size, j:j + size], y_ch[i:i + size, j:j + size]
                    mx, my = (w * px).sum(), (w * py).sum()
                    vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                    cxy = (w * (px - mx) * (py - my)).sum()
                    values.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
        out.append(np.mean(values))
    return np.array(out)


def test_ssim_matches_a_direct_float64_implementation():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 20, 23, generator=g)
    b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    expected = _reference_ssim(a.double().numpy(), b.double().numpy())
    assert ssim(a, b).numpy() == pytest.approx(expected, abs=1e-6)


def test_ssim_on_images_smaller_than_the_window_uses_the_largest_odd_window():
    g = torch.Generator().manual_seed(4)
    a = torch.rand(1, 1, 8, 9, generator=g)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    expected = _reference_ssim(a.double().numpy(), b.double().numpy(), size=7)
    assert ssim(a, b).numpy() == pytest.approx(expected, abs=1e-9)
    assert ssim(a[..., :1, :1], a[..., :1, :1]).item() == pytest.approx(1.0)  # a 1x1 window still works


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(5)
    a = torch.rand(2, 3, 32, 32, generator=g)
    b = (a + 0.15 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    expected = [metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                              data_range=1.0, channel_axis=0)
                for x, y in zip(a.double().numpy(), b.double().numpy(), strict=True)]
    assert ssim(a, b).tolist() == pytest.approx(expected, abs=1e-6)
