"""The KL autoencoder: shapes, argument checks, sampling, parameter count, KL and loss values, and that it learns."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from iddm_cli.nets import count_parameters
from iddm_cli.nets.autoencoder import Autoencoder, kl_divergence, norm_groups, vae_loss
from iddm_cli.nets.layers import ACTIVATIONS


@pytest.mark.parametrize("downsample", [4, 8])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(downsample, channels):
    torch.manual_seed(0)
    model = Autoencoder(in_channels=channels, latent_channels=4, base_channels=8, downsample=downsample)
    x = torch.randn(2, channels, 32, 16)
    recon, mean, logvar = model(x)
    assert recon.shape == x.shape
    assert mean.shape == logvar.shape == (2, 4, 32 // downsample, 16 // downsample)
    assert model.downsample == downsample and model.latent_channels == 4
    assert model.decode(mean).shape == x.shape


@pytest.mark.parametrize("downsample", [0, 1, 3, 6, 12, 8.0, True])
def test_downsample_must_be_a_power_of_two(downsample):
    with pytest.raises(ValueError, match="downsample .*power of two"):
        Autoencoder(base_channels=8, downsample=downsample)


def test_encode_refuses_a_size_not_divisible_by_downsample():
    model = Autoencoder(in_channels=1, base_channels=8, downsample=8)
    with pytest.raises(ValueError, match=r"image size 36x32: .*divisible by .* 8"):
        model.encode(torch.zeros(1, 1, 36, 32))
    with pytest.raises(ValueError, match=r"image size 32x20"):
        model(torch.zeros(1, 1, 32, 20))


def test_sample_false_decodes_the_mean_and_a_generator_makes_sampling_reproducible():
    torch.manual_seed(0)
    model = Autoencoder(in_channels=3, base_channels=8, downsample=4).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        recon, mean, logvar = model(x, sample=False)
        assert torch.equal(recon, model.decode(mean))
        first = model(x, generator=torch.Generator().manual_seed(7))[0]
        again = model(x, generator=torch.Generator().manual_seed(7))[0]
        other = model(x, generator=torch.Generator().manual_seed(8))[0]
        # the draw is mean + exp(logvar / 2) * N(0, 1) with exactly this noise
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
        by_hand = model.decode(mean + torch.exp(0.5 * logvar) * noise)
    assert torch.equal(first, again) and torch.equal(first, by_hand)
    assert not torch.allclose(first, other) and not torch.allclose(first, recon)


def test_logvar_is_clamped():
    model = Autoencoder(in_channels=1, base_channels=8, downsample=4)
    with torch.no_grad():
        model.encoder[-1].bias[4:] = 1e3  # the log-variance half of the last conv's output
        assert model.encode(torch.zeros(1, 1, 8, 8))[1].max().item() == 20.0
        model.encoder[-1].bias[4:] = -1e3
        assert model.encode(torch.zeros(1, 1, 8, 8))[1].min().item() == -30.0


def test_parameter_count_is_in_iddm_vae_range():
    n = count_parameters(Autoencoder())  # 3 channels, latent 4, base 64, downsample 8; IDDM's vae: about 6.1 M
    assert 5.5e6 < n < 7.0e6
    assert n == 6_308_107
    assert count_parameters(Autoencoder(in_channels=1, latent_channels=4, base_channels=32, downsample=4)) == 396_937


def test_group_norm_groups():
    assert [norm_groups(c) for c in (8, 32, 64, 256, 48, 40, 3)] == [8, 32, 32, 32, 24, 20, 3]


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_the_activation_follows_every_norm(act):
    model = Autoencoder(in_channels=1, base_channels=8, downsample=4, act=act)
    modules = list(model.modules())
    acts = [m for m in modules if isinstance(m, tuple(type(f()) for f in ACTIVATIONS.values()))]
    norms = [m for m in modules if isinstance(m, nn.GroupNorm)]
    assert {type(m) for m in acts} == {type(ACTIVATIONS[act]())}
    assert len(acts) == len(norms) == 2 * 6 + 2  # 6 residual blocks, 2 output heads


def test_kl_divergence():
    assert kl_divergence(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)).item() == 0.0
    # one element at mean 1, logvar log 2: 0.5 (1 + 2 - 1 - log 2); one at mean -2, logvar 0: 0.5 * 4
    mean, logvar = torch.tensor([1.0, -2.0]), torch.tensor([math.log(2.0), 0.0])
    kl = kl_divergence(mean, logvar)
    assert kl.dtype == torch.float32
    assert kl.item() == pytest.approx(0.5 * (2 - math.log(2)) + 2.0, rel=1e-6)


def test_vae_loss_by_hand():
    x = torch.zeros(1, 1, 2, 2)
    recon = torch.tensor([[[[1.0, 0.0], [0.0, -1.0]]]], dtype=torch.bfloat16)  # MSE (1 + 1) / 4 = 0.5
    mean, logvar = torch.full((1, 1, 1, 1), 2.0), torch.zeros(1, 1, 1, 1)  # KL sum 0.5 * 4 = 2
    total, recon_mse, kl_per_element = vae_loss(recon, x, mean, logvar, kl_weight=0.1)
    assert all(t.dtype == torch.float32 for t in (total, recon_mse, kl_per_element))
    assert recon_mse.item() == pytest.approx(0.5)
    assert kl_per_element.item() == pytest.approx(2.0 / 4)
    assert total.item() == pytest.approx(0.5 + 0.1 * 0.5)


def _shapes(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Gray images in [-1, 1]: a horizontal gradient of random slope with a bright square at a random place."""
    ramp = torch.linspace(-1, 1, size)
    slopes = torch.rand(n, 1, 1, generator=generator) * 0.6
    images = (slopes * ramp[None, None, :]).expand(n, size, size).clone()
    for img, (r, c) in zip(images, torch.randint(0, size - 6, (n, 2), generator=generator).tolist(), strict=True):
        img[r:r + 6, c:c + 6] = 0.8
    return images[:, None]  # (N, 1, H, W)


def test_a_tiny_autoencoder_learns_to_reconstruct():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = _shapes(16, 16, g)
    model = Autoencoder(in_channels=1, latent_channels=4, base_channels=8, downsample=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def recon_mse() -> float:
        with torch.no_grad():
            return torch.mean((model(x, sample=False)[0] - x) ** 2).item()

    before = recon_mse()
    for _ in range(30):
        recon, mean, logvar = model(x, generator=g)
        loss = vae_loss(recon, x, mean, logvar, kl_weight=1e-4)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = recon_mse()
    mean_image_mse = (x - x.mean(dim=0, keepdim=True)).square().mean().item()  # about 0.076
    assert after < before / 4, (before, after)  # about 0.21 -> 0.026
    assert after < mean_image_mse / 2, (after, mean_image_mse)  # more than the mean image: it sees each input
