"""Sample quality: FID and KID of a folder of images, or of samples drawn from a checkpoint with the shared samplers,
against a reference (an image folder, whose statistics are cached once, or a statistics file).

Metric names carry the sample count (``fid1k``, ``kid1k``), because FID depends on it: fewer samples read higher.
The network and the preprocessing are the standard ones (:mod:`iddm_cli.metrics.fid`); nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF

from iddm_cli.config.commands import COMMANDS, FID_SAMPLING, FidConfig, ReconstructionEvalConfig
from iddm_cli.core.checkpoint import resolve_checkpoint
from iddm_cli.core.devices import use_device
from iddm_cli.core.latent import load_autoencoder
from iddm_cli.data.folder import IMAGE_EXTENSIONS, DatasetInfo, ImageFolderDataset, collate, load_image, scan_dataset
from iddm_cli.errors import ConfigError, DataError, StorageError, first_line
from iddm_cli.metrics.fid import (
    InceptionFeatures,
    feature_stats,
    fid_from_features,
    kid,
    load_stats,
    save_stats,
    stats_key,
)
from iddm_cli.metrics.image import PSNR_CAP, psnr, ssim
from iddm_cli.sampling import (
    check_request,
    draw,
    load_diffusion_checkpoint,
    load_for_sampling,
    select_device,
    selected_classes,
)

Progress = Callable[[str, int, int], None]  # (what, done, total)
PREPROCESSING = "files decoded as L or RGB at their own size; [0, 1]"  # part of every reference cache key
DRAW_CHUNK = 256  # samples drawn (and scored) at a time, so that 50k samples never sit in memory


def cache_dir() -> Path:
    """Where reference statistics are cached: $IDDM_CACHE_DIR, else $XDG_CACHE_HOME/iddm/fid (~/.cache/iddm/fid)."""
    if os.environ.get("IDDM_CACHE_DIR"):
        return Path(os.environ["IDDM_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "iddm" / "fid"


def metric_name(metric: str, n: int) -> str:
    """fid1k for 1000 samples, fid50k for 50,000, fid500 for 500."""
    return f"{metric}{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{metric}{n}"


@dataclass
class Reference:
    mu: torch.Tensor
    sigma: torch.Tensor
    features: torch.Tensor  # (N, 2048)
    labels: list[int] | None  # the class of each image (a class-folder reference), else None
    class_names: list[str]
    source: str  # how it was obtained, for the user


def file_features(paths: Sequence[Path], net: InceptionFeatures, progress: Progress | None = None,
                  what: str = "images", size: tuple[int, int] | None = None) -> torch.Tensor:
    """Features (N, 2048) of image files, in order; consecutive images of one shape go through the network
    together. ``size``: resize each image to it first, as training does (antialiased bilinear). A file that does not
    decode is a DataError naming it."""
    out: list[torch.Tensor] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        if batch:
            out.append(net(torch.stack(batch)))
            batch.clear()
            if progress is not None:
                progress(what, sum(len(f) for f in out), len(paths))

    for path in paths:
        try:
            image = load_image(path, 3)
        except (OSError, ValueError, SyntaxError) as err:
            raise DataError(f"cannot decode {path}: {first_line(err)}") from None
        if size is not None:
            image = TF.resize(image, list(size), antialias=True)
        x = TF.to_tensor(image)  # (3, H, W) in [0, 1]; gray files become 3 equal channels
        if batch and (x.shape != batch[0].shape or len(batch) == net.batch_size):
            flush()
        batch.append(x)
    flush()
    return torch.cat(out) if out else torch.empty(0, 2048, dtype=torch.float64)


def reference_files(ref: str, key: str = "--ref") -> DatasetInfo | None:
    """The images of a reference folder (checked: at least 2), or None for a statistics file. Cheap: headers only."""
    if Path(ref).expanduser().is_file():
        if Path(ref).suffix.lower() in IMAGE_EXTENSIONS:
            raise DataError(f"{key} {ref}: is one image; give the folder of reference images, or a statistics "
                            "file (.pt) that an earlier evaluation cached")
        return None
    info = scan_dataset(ref, "auto", key=key)
    if len(info.samples) < 2:
        raise DataError(f"{key} {info.root}: FID needs at least 2 reference images, found {len(info.samples)}")
    return info


def reference(ref: str, net: InceptionFeatures, progress: Progress | None = None, size: tuple[int, int] | None = None,
              key: str = "--ref") -> Reference:
    """A statistics file as it is, or an image folder's statistics (each image resized to ``size`` when given),
    from the cache when its files are unchanged. The cache is a convenience: when it cannot be read or written,
    the statistics are computed and the scores stand."""
    info = reference_files(ref, key)
    if info is None:
        path = Path(ref).expanduser()
        mu, sigma, features = load_stats(path)
        return Reference(mu, sigma, features, None, [], f"statistics file {path}")
    files = [p for p, _ in info.samples]
    preprocessing = PREPROCESSING + (f", resized to {size[0]}x{size[1]}" if size else "")
    cached = cache_dir() / f"{stats_key(files, preprocessing)}.pt"
    labels = [label for _, label in info.samples] if info.conditional else None
    what = f"{len(files)} images in {info.root}" + (f" at {size[0]}x{size[1]}" if size else "")
    try:
        mu, sigma, features = load_stats(cached, cached=True)
        if features.shape[0] == len(files):
            return Reference(mu, sigma, features, labels, info.class_names, f"{what} (statistics cached in {cached})")
    except (DataError, OSError):
        pass  # not there, damaged, or not readable: computed again below
    features = file_features(files, net, progress, "reference", size)
    mu, sigma = feature_stats(features)
    note = f"statistics cached in {cached}"
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_stats(cached, mu, sigma, features)
    except (OSError, StorageError) as err:  # a read-only or full cache: only the cache is missing
        note = f"statistics not cached: {err.problems[0] if isinstance(err, StorageError) else first_line(err)}"
    return Reference(mu, sigma, features, labels, info.class_names, f"{what} ({note})")


@dataclass
class Scores:
    n: int
    fid: float
    kid: float
    kid_std: float
    reference: str
    per_class: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{metric_name('fid', self.n)}: {self.fid:.2f}",
               f"{metric_name('kid', self.n)}: {self.kid:.4f} +- {self.kid_std:.4f}"]
        return out + [f"{name}: {value:.2f}" for name, value in self.per_class.items()]

    def to_json(self) -> dict[str, Any]:
        return {metric_name("fid", self.n): self.fid, metric_name("kid", self.n): self.kid,
                metric_name("kid", self.n) + "_std": self.kid_std, "samples": self.n, "reference": self.reference,
                "per_class": self.per_class}


def scores(features: torch.Tensor, ref: Reference, labels: list[int] | None, class_names: list[str],
           subsets: int, subset_size: int, seed: int = 0) -> Scores:
    """FID and KID of ``features`` against the reference; per class where ``labels`` (into ``class_names``) and
    a class-folder reference are both given."""
    n = features.shape[0]
    if n < 2:
        raise ConfigError(f"FID needs at least 2 samples, got {n}")
    kid_mean, kid_std = kid(features, ref.features, subsets, subset_size, seed)
    result = Scores(n, fid_from_features(features, ref.mu, ref.sigma), kid_mean, kid_std, ref.source)
    if labels is not None and ref.labels is not None:
        for i in sorted(set(labels)):  # the classes drawn; evaluate_fid checked 2 or more of each on both sides
            mine = features[[k for k, label in enumerate(labels) if label == i]]
            j = ref.class_names.index(class_names[i])
            theirs = ref.features[[k for k, label in enumerate(ref.labels) if label == j]].double()
            mu, sigma = feature_stats(theirs)  # named with the class's own sample count
            result.per_class[f"{metric_name('fid', mine.shape[0])}/{class_names[i]}"] = fid_from_features(mine, mu,
                                                                                                          sigma)
    return result


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def sample_grid(folder: Path) -> Path | None:
    """The grid file `iddm sample` wrote into ``folder`` (named in its manifest.json), or None."""
    try:
        name = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("grid")
    except (OSError, ValueError, AttributeError):
        return None
    return folder / name if isinstance(name, str) and (folder / name).is_file() else None


def evaluate_fid(req: FidConfig, progress: Progress | None = None) -> Scores:
    """``iddm eval fid``: everything about the checkpoint is checked before any image is scored."""
    if bool(req.images) == bool(req.checkpoint):
        raise ConfigError("give what to score: --images DIR (a folder of images) or --ckpt CKPT (samples drawn from "
                          "a checkpoint), not both")
    device, device_note = select_device(req.device, req.use_gpu)
    use_device(device)
    notes = [device_note] if device_note else []
    loaded, labels, sampler, steps, cfg_scale, class_names = None, None, "", 0, 1.0, []
    images: list[Path] = []
    if req.checkpoint:
        path = resolve_checkpoint(req.checkpoint)
        ckpt, converted = load_diffusion_checkpoint(path, req)
        notes += [converted] if converted else []
        sampler, steps, cfg_scale = check_request(req, ckpt)
        class_names = ckpt["data"]["class_names"]
        ids = selected_classes(req, ckpt["data"])
        if ids is not None:  # the same number of every selected class, in a fixed interleaved order
            labels = [ids[k % len(ids)] for k in range(req.num)]
        if req.per_class and ids is not None and req.num < 2 * len(ids):
            raise ConfigError(f"--per-class: --num {req.num} draws fewer than 2 samples of some of the {len(ids)} "
                              f"classes; give --num {2 * len(ids)} or more")
        loaded = load_for_sampling(ckpt, req, device, path)
        notes += loaded.notes
    else:
        if req.per_class:
            raise ConfigError("--per-class: scores per class need a conditional --ckpt (a folder of images has no "
                              "classes to draw)")
        specs = [COMMANDS["eval fid"][name] for name in FID_SAMPLING]  # given: a value other than the default
        given = [(spec.off or f"--no-{spec.flag[2:]}") if getattr(req, spec.name) is False else spec.flag
                 for spec in specs if getattr(req, spec.name) != spec.default]
        if given:
            raise ConfigError(f"{', '.join(given)}: {'these apply' if len(given) > 1 else 'it applies'} to samples "
                              "drawn from --ckpt; --images are scored as they are")
        info = scan_dataset(req.images, False, key="--images")
        grid = sample_grid(info.root)
        images = [p for p, _ in info.samples if p != grid]
        notes += info.notes + ([f"left out {grid.name}: the grid of `iddm sample`, not a sample"] if grid else [])
        if len(images) < 2:
            raise DataError(f"--images {info.root}: FID needs at least 2 images, found {len(images)}")
    ref_info = reference_files(req.ref)  # checked before any image is scored
    notes += ref_info.notes if ref_info is not None else []
    if req.per_class:
        if labels is None:
            raise ConfigError("--per-class: the checkpoint is unconditional")
        missing = [name for name in class_names if ref_info is None or name not in ref_info.class_names]
        if ref_info is None or not ref_info.conditional or missing:
            raise ConfigError(f"--per-class: the reference {req.ref} needs one folder per class of the checkpoint"
                              + (f" (missing: {', '.join(missing)})" if ref_info is not None and ref_info.conditional
                                 else ""))
        few = [class_names[i] for i in sorted(set(labels)) if ref_info.class_counts.get(class_names[i], 0) < 2]
        if few:
            raise DataError(f"--per-class: the reference {req.ref} has fewer than 2 images of {', '.join(few)}; a "
                            "class's FID needs 2 or more")
    net = InceptionFeatures(device)
    size = tuple(loaded.ckpt["data"]["image_size"]) if loaded is not None else None  # compared at the model's size
    ref = reference(req.ref, net, progress, size)
    if loaded is None:
        features = file_features(images, net, progress, "images")
    else:
        parts = []
        for start, stop in _chunks(req.num, DRAW_CHUNK):
            x = draw(loaded, labels[start:stop] if labels is not None else None, stop - start, sampler=sampler,
                     steps=steps, cfg_scale=cfg_scale, eta=req.eta, seed=req.seed, batch_size=req.batch_size,
                     device=device, first=start)
            parts.append(net((x + 1) / 2))
            if progress is not None:
                progress("samples", stop, req.num)
        features = torch.cat(parts)
    result = scores(features, ref, labels if req.per_class else None, class_names, req.kid_subsets,
                    req.kid_subset_size)
    result.notes = notes
    return result


@torch.no_grad()
def evaluate_reconstructions(req: ReconstructionEvalConfig, progress: Progress | None = None) -> dict[str, Any]:
    """``iddm eval vae``: PSNR (peak 1 on [0, 1] images), SSIM and, with ``fid``, the reconstruction FID of an
    autoencoder on a folder, reconstructing from the posterior mean as validation does."""
    device, _ = select_device(req.device)
    use_device(device)
    codec = load_autoencoder(req.checkpoint, "CKPT", device=device)
    net = InceptionFeatures(device) if req.fid else None  # a missing extra is reported before any work
    info = scan_dataset(req.images, False, key="--images")
    if info.channels != codec.channels:
        raise DataError(f"--images {info.root}: {'gray' if info.channels == 1 else 'colour'} images, and the "
                        f"autoencoder was trained on {'gray' if codec.channels == 1 else 'colour'} ones")
    size = tuple(codec.record["image_size"])
    loader = torch.utils.data.DataLoader(ImageFolderDataset(info, "resize", size), batch_size=req.batch_size,
                                         collate_fn=collate)
    totals, originals, recons, done = torch.zeros(2, dtype=torch.float64), [], [], 0
    for x, _, _ in loader:
        x = x.to(device)
        mean, _ = codec.encode(x)
        a, b = (x + 1) / 2, (codec.decode(mean) + 1) / 2
        totals += torch.stack([psnr(a, b).clamp(max=PSNR_CAP).sum(), ssim(a, b).sum()]).cpu()
        if net is not None:
            originals.append(net(a))
            recons.append(net(b))
        done += len(x)
        if progress is not None:
            progress("images", done, len(info.samples))
    out: dict[str, Any] = {"images": done, "psnr": totals[0].item() / done, "ssim": totals[1].item() / done,
                           "image_size": list(size), "checkpoint": codec.record["path"]}
    if net is not None:
        if done < 2:
            raise DataError(f"--images {info.root}: the reconstruction FID needs at least 2 images (or --no-fid)")
        reference_features = torch.cat(originals)
        mu, sigma = feature_stats(reference_features)
        out[metric_name("rfid", done)] = fid_from_features(torch.cat(recons), mu, sigma)
    return out
