"""Quality measures: image fidelity (PSNR, SSIM) and sample quality (FID, KID)."""
