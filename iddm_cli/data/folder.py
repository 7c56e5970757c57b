"""Image folders: layout detection (class subfolders or a flat folder), channel detection, and the Dataset.

Labels are indices into the sorted class-folder names (ImageFolder semantics, as in IDDM). Gray datasets give
1-channel tensors and colour ones 3-channel, in [-1, 1].
"""

from __future__ import annotations

import math
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler
from torchvision import transforms

from iddm_cli.data.get import known_dataset
from iddm_cli.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
BUILTIN_PREFIX = "builtin:"
_DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data"
BUILTIN_DATASETS = {"fashion-mnist": _DEMO_DATA / "fashion-mnist",
                    "fashion-mnist-val": _DEMO_DATA / "fashion-mnist-val"}  # 20 test images a class
CACHE_LIMIT_BYTES = 1 << 30  # keep pre-resized images in RAM when they fit in this


@dataclass
class DatasetInfo:
    root: Path
    conditional: bool
    class_names: list[str]
    samples: list[tuple[Path, int]]  # (file, label); label 0 when unconditional
    channels: int
    class_counts: dict[str, int]
    notes: list[str] = field(default_factory=list)  # things worth telling the user (ignored files, ...)
    size_stats: tuple[int, int, int] = (0, 0, 0)  # min, median, max of the shorter side

    def to_json(self) -> dict[str, Any]:
        """Plain data (paths as strings): how a launcher hands its scan to the worker that plans the run."""
        return {"root": str(self.root), "conditional": self.conditional, "class_names": self.class_names,
                "samples": [[str(path), label] for path, label in self.samples], "channels": self.channels,
                "class_counts": self.class_counts, "notes": self.notes, "size_stats": list(self.size_stats)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetInfo:
        return cls(Path(data["root"]), data["conditional"], data["class_names"],
                   [(Path(path), label) for path, label in data["samples"]], data["channels"], data["class_counts"],
                   data["notes"], tuple(data["size_stats"]))

    def summary(self) -> str:
        kind = f"conditional, {len(self.class_names)} classes" if self.conditional else "unconditional"
        mode = "gray" if self.channels == 1 else "RGB"
        return f"{len(self.samples)} images in {self.root} ({kind}, {mode})"


def resolve_dataset_path(value: str, key: str = "data.dataset_path") -> Path:
    if value.startswith(BUILTIN_PREFIX):
        name = value[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_DATASETS:
            raise ConfigError(f"{key}: unknown built-in dataset '{name}' "
                              f"(available: {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_DATASETS)})")
        return BUILTIN_DATASETS[name]
    return Path(value).expanduser()


def _visible(path: Path | str) -> bool:
    return not (path.name if isinstance(path, Path) else path).startswith(".")


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    """Image files by name, and dangling links so named (the header check reports them as unreadable, as
    `iddm dataset check` does, rather than leaving them out unsaid)."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.suffix.lower() in IMAGE_EXTENSIONS
                  and (p.is_file() or (p.is_symlink() and not p.exists()))
                  and all(_visible(part) for part in p.relative_to(folder).parts))


def class_folders(root: Path, conditional: bool | str = "auto") -> list[Path] | None:
    """The one layout rule, for training and for `iddm dataset check`: the class folders of a conditional dataset,
    or None for an unconditional one. ``auto``: conditional when ``root`` holds two or more visible subfolders,
    each a class, empty ones included (an empty class is an error, never a silent switch to an unconditional
    model); one subfolder (IDDM's ``images/``) or none: unconditional. ``True``: every subfolder is a class.
    ``False``: unconditional."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    if conditional is False or (conditional == "auto" and len(subdirs) < 2):
        return None
    return subdirs


def scan_dataset(dataset_path: str, conditional: bool | str = "auto", num_classes: int = 0,
                 strict: bool = False, classes: list[str] | None = None, key: str = "data.dataset_path") -> DatasetInfo:
    """The quick check before training: find the images and decide the layout. Data that cannot train is a
    DataError (exit 3) pointing at `iddm dataset check`; unreadable files are left out and noted (an error when
    ``strict``). ``classes``: a resumed run's own class names ([] = unconditional), which replace the layout rule,
    so that a run started under another rule continues on the same classes. ``key``: the setting that named the
    folder, for messages."""
    try:
        return _scan(dataset_path, conditional, num_classes, strict, classes, key)
    except DataError as err:
        hint = f"; `iddm dataset check {shlex.quote(dataset_path)}` lists every problem"
        raise DataError(*[p + hint for p in err.problems]) from None


def _scan(dataset_path: str, conditional: bool | str, num_classes: int, strict: bool,
          known: list[str] | None, key: str) -> DatasetInfo:
    if not dataset_path and key.startswith("--"):  # a command's own flag (iddm eval), not a training setting
        raise ConfigError(f"{key} is not set: give {key} DIR")
    if not dataset_path:
        flag = "--" + key.rpartition(".")[2].replace("_", "-")
        raise ConfigError(f"{key} is not set: pass {flag} DIR or use a profile (--profile demo trains on the "
                          "embedded dataset)")
    root = resolve_dataset_path(dataset_path, key)
    if not root.exists():
        known = known_dataset(root.name)  # a folder named after a standard dataset: say how to make it
        hint = f"; `iddm dataset get {known} {shlex.quote(dataset_path)}` makes it" if known else ""
        raise DataError(f"dataset path {root} does not exist ({key}){hint}")
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder ({key})")

    notes: list[str] = []
    if known:  # a resumed run's classes: each must be there; another class folder cannot join the model
        missing = [name for name in known if not (root / name).is_dir()]
        if missing:
            raise DataError(f"class folder {root / missing[0]} is missing"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                            + f": the run trains on {len(known)} classes ({_first(known)}); restore "
                            + ("it" if len(missing) == 1 else "them") + " to continue the run")
        extra = [p.name for p in class_folders(root, True) or [] if p.name not in known]
        if extra:
            notes.append(f"{_first(extra)} in {root} {'is not a class' if len(extra) == 1 else 'are not classes'}"
                         " of this run and left out (a new class needs a new run)")
    classes = class_folders(root, conditional) if known is None else [root / name for name in known] or None
    if conditional is True and not classes:
        raise DataError(f"--conditional needs one subfolder per class, but {root} holds its images directly; "
                        "drop --conditional to train an unconditional model")
    if classes is None:
        class_names: list[str] = []
        samples = [(p, 0) for p in _images_in(root, recursive=True)]
    else:
        per_class = {d.name: _images_in(d, recursive=True) for d in classes}
        _refuse_empty_classes(root, [name for name, imgs in per_class.items() if not imgs], "images")
        class_names = list(per_class)
        samples = [(p, i) for i, name in enumerate(class_names) for p in per_class[name]]
        loose = _images_in(root, recursive=False)
        if loose:
            notes.append(f"{len(loose)} images directly in {root} are ignored (they belong to no class)")

    if not samples:
        raise DataError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found in {root}")
    is_conditional = bool(class_names)
    if is_conditional and num_classes and num_classes != len(class_names):
        raise DataError(f"data.num_classes is {num_classes} but {root} has {len(class_names)} class folders "
                        f"({_first(class_names)})")
    channels, sizes, bad = _inspect_headers(samples)
    if bad and strict:
        raise DataError(f"{len(bad)} file(s) cannot be read as images, first: {bad[0]} (--strict-data)")
    if bad:
        samples = [s for s in samples if s[0] not in set(bad)]
        notes += [f"skipped, cannot be read as an image: {p}" for p in bad]
        if not samples:
            raise DataError(f"no readable images in {root}")
    counts = {name: sum(1 for _, label in samples if label == i) for i, name in enumerate(class_names)}
    _refuse_empty_classes(root, [name for name, n in counts.items() if not n], "readable images")
    return DatasetInfo(root, is_conditional, class_names, samples, channels, counts, notes, sizes)


def _first(names: list[str], n: int = 5) -> str:
    """The first ``n`` names, for a message."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _refuse_empty_classes(root: Path, empty: list[str], what: str) -> None:
    """A class without training images would be sampled yet never learned: a data error, as in `dataset check`."""
    if empty:
        raise DataError(f"class folder {root / empty[0]} has no {what}"
                        + (f" (and {len(empty) - 1} more such class folders)" if len(empty) > 1 else "")
                        + "; add images, remove the folder, or train unconditionally with --no-conditional")


def _inspect_headers(samples: list[tuple[Path, int]]) -> tuple[int, tuple[int, int, int], list[Path]]:
    """Open every header (cheap: no pixel decoding): 1 channel when all images are gray, else 3."""
    gray, short_sides, bad = True, [], []
    for path, _ in samples:
        try:
            with Image.open(path) as img:
                gray = gray and img.mode in GRAY_MODES
                short_sides.append(min(img.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            bad.append(path)
    stats = (min(short_sides), int(statistics.median(short_sides)), max(short_sides)) if short_sides else (0, 0, 0)
    return (1 if gray else 3), stats, bad


def load_image(path: Path, channels: int) -> Image.Image:
    """Decode and convert to L or RGB; transparent pixels are composited over white, EXIF rotation applied."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            img = img.point(lambda v: v / 256).convert("L") if img.mode != "F" else img.convert("L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        return img.convert("L" if channels == 1 else "RGB")


def build_transforms(augment: str, size: tuple[int, int]) -> tuple[transforms.Compose, transforms.Compose]:
    """(deterministic part, random part). The deterministic resize is what the RAM cache stores."""
    h, w = size
    if augment == "iddm":  # IDDM: Resize(1.25x) then RandomResizedCrop(scale 0.8-1.0), no flips
        pre = transforms.Resize((int(h * 1.25), int(w * 1.25)), antialias=True)
        rand = [transforms.RandomResizedCrop((h, w), scale=(0.8, 1.0), antialias=True)]
    else:
        pre = transforms.Resize((h, w), antialias=True)
        rand = [transforms.RandomHorizontalFlip()] if augment == "hflip" else []
    return transforms.Compose([pre]), transforms.Compose(rand)


class ImageFolderDataset(Dataset):
    """Yields (image in [-1, 1] of shape (C, H, W), label, paths that failed to decode and were replaced)."""

    def __init__(self, info: DatasetInfo, augment: str, size: tuple[int, int], strict: bool = False,
                 seed: int = 0):
        self.samples = info.samples
        self.strict = strict
        self.seed = seed
        self.channels = info.channels
        self.pre, self.rand = build_transforms(augment, size)
        h, w = size
        self.cache_enabled = len(self.samples) * int(h * 1.25) * int(w * 1.25) * self.channels < CACHE_LIMIT_BYTES
        self.cache: dict[int, Image.Image] = {}
        self.failed: set[int] = set()  # indices that failed to decode in this process

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, list[str]]:
        """(image, label, paths that failed to decode on the way). A file that fails to decode is replaced by the
        next one that does (index + 1, + 2, ...), so a batch never shrinks: under DDP every rank must take every
        step. With ``strict`` the failure is a DataError instead.

        ``key`` is an index or (epoch, index): the augmentation of a sample then depends only on (seed, epoch,
        index), not on the worker that loads it or on where in the epoch a resumed run starts."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        bad: list[str] = []
        for i in (j % len(self.samples) for j in range(index, index + len(self.samples))):
            img = self._decoded(i)
            if img is not None:
                break
            bad.append(str(self.samples[i][0]))
        else:
            raise DataError(f"no image of the dataset decodes (first: {bad[0]}); `iddm dataset check` lists them")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63)  # torch takes 64 bits
            x = TF.to_tensor(self.rand(img))  # (C, H, W) in [0, 1]
        return x * 2 - 1, self.samples[i][1], bad

    def fill_cache(self) -> None:
        """Decode every image into the RAM cache now (when it fits), in this process: DataLoader workers forked
        afterwards share it, instead of each decoding and keeping its own copy."""
        if self.cache_enabled:
            for index in range(len(self.samples)):
                self._decoded(index)

    def _decoded(self, index: int) -> Image.Image | None:
        """The resized image, from the RAM cache when it fits; None for a file that fails to decode."""
        if index in self.failed:
            return None
        img = self.cache.get(index)
        if img is None:
            path = self.samples[index][0]
            try:
                img = self.pre(load_image(path, self.channels))
            except (OSError, ValueError, SyntaxError) as err:
                if self.strict:
                    raise DataError(f"cannot decode {path}: {err} (--strict-data)") from None
                self.failed.add(index)
                return None
            if self.cache_enabled:
                self.cache[index] = img
        return img


class EpochSampler(Sampler):
    """Yields (epoch, index) in an order that depends only on (seed, epoch), from any position in the epoch.

    With several processes it is a DistributedSampler with ``set_epoch``: the epoch's permutation is padded (by
    wrapping) to a multiple of ``world`` and rank r takes every world-th item from r. It is our own because a run
    must resume mid-epoch and each item carries its epoch for the per-sample augmentation seed.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.per_rank = math.ceil(n / world)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed((self.seed * 7919 + self.epoch) % 2**63))
        if self.world > 1:
            order = order.repeat(math.ceil(self.per_rank * self.world / self.n))[:self.per_rank * self.world]
            order = order[self.rank::self.world]
        for index in order[self.start:].tolist():
            yield self.epoch, index

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def collate(items: list[tuple[torch.Tensor, int, list[str]]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack a batch; the paths that failed to decode (and were replaced) come alongside."""
    return (torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items]),
            [path for _, _, bad in items for path in bad])
