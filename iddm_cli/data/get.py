"""Standard datasets as class folders (``iddm dataset get``): DIR/<class>/<index>.png, the layout `iddm dm train`
reads (see :func:`iddm_cli.data.folder.class_folders`).

torchvision's own dataset classes read the files; this module only puts them where those classes look (a temporary
folder, removed afterwards) and writes the images. Importing it does not import torch: :data:`SOURCES` is plain
data, so the command line's choices and help come from it at no cost.

Integrity. A download is checked by torchvision against the md5 sums of the official files. With ``--from``:
- CIFAR: torchvision checks every extracted batch file against its md5 sum. When they match, the data is the
  official release. When they do not (a re-packed or hand-made archive), the files are still read by torchvision's
  reader, as the documented format, once we have checked that every file is there: only the md5 comparison is
  skipped, and the result says so (``verified`` False and a note).
- MNIST and Fashion-MNIST: torchvision checks md5 sums only when it downloads; reading raw files it checks that they
  exist and parses their idx headers (magic number, type, shape). We compare ``.gz`` files with the official md5
  sums to say whether they are the official ones (Debian's re-compressed copies are not, byte for byte), and check
  that every label has an image and names a class.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iddm_cli.errors import ConfigError, DataError, StorageError

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(frozen=True)
class Source:
    torchvision: str  # the class in torchvision.datasets that reads it
    kind: str  # "cifar": one tar.gz of python pickles; "idx": MNIST's four idx files
    archive: str = ""  # cifar: the official archive's name
    folder: str = ""  # cifar: the folder inside the archive

    @property
    def official_files(self) -> str:
        """What --from takes, by the official file names."""
        if self.kind == "cifar":
            return f"{self.archive} (or a folder holding it or its {self.folder}/)"
        names = [n + ".gz" for pair in IDX_FILES.values() for n in pair]
        return f"a folder holding {', '.join(names)} (or the same uncompressed)"


SOURCES: dict[str, Source] = {
    "cifar10": Source("CIFAR10", "cifar", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": Source("CIFAR100", "cifar", "cifar-100-python.tar.gz", "cifar-100-python"),
    "mnist": Source("MNIST", "idx"),
    "fashion-mnist": Source("FashionMNIST", "idx"),
}
SPLITS = {"train": ("train",), "test": ("test",), "all": ("train", "test")}


@dataclass
class GotDataset:
    root: Path
    classes: list[str]  # folder names, in label order
    counts: dict[str, int]  # images written per class
    verified: bool  # the files matched the official md5 sums
    notes: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(self.counts.values())


def known_dataset(folder_name: str) -> str | None:
    """The dataset a folder is probably meant to hold, by its name (``cifar10``, ``CIFAR-10``, ``fashion_mnist``)."""
    key = re.sub(r"[-_ ]", "", folder_name.lower())
    return next((name for name in SOURCES if name.replace("-", "") == key), None)


def safe_class_name(name: str) -> str:
    """A class name as a folder name: lower case, a hyphen inside a word dropped, every other run of characters
    outside [a-z0-9_] one hyphen ('T-shirt/top' -> 'tshirt-top', 'Ankle boot' -> 'ankle-boot', '0 - zero' ->
    '0-zero'), as the embedded demo set names its folders."""
    text = re.sub(r"(?<=\w)-(?=\w)", "", name.lower())
    return re.sub(r"[^a-z0-9_]+", "-", text).strip("-") or "class"


def check_target(out: Path) -> None:
    """DIR must be new or an empty folder: nothing is ever overwritten."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; DIR must be a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; DIR must be a new or empty folder (nothing was written)")


def get_dataset(name: str, out: str | Path, split: str = "train", source: str | Path | None = None,
                limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> GotDataset:
    """Write dataset ``name`` to ``out``/<class>/<index>.png (``split`` all: train-<i>.png and test-<i>.png).

    ``source``: the official file(s) (see :attr:`Source.official_files`); None downloads them with torchvision.
    ``limit``: at most this many images per class (the first ones: train before test). ``progress(done, total)``
    is called while images are written. Temporary files go to a folder of the system's temp dir, removed at the
    end; nothing outside ``out`` is written."""
    if name not in SOURCES:
        raise ConfigError(f"unknown dataset '{name}' (available: {', '.join(SOURCES)})")
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}' (available: {', '.join(SPLITS)})")
    spec, out = SOURCES[name], Path(out).expanduser()
    check_target(out)
    src = Path(source).expanduser() if source is not None else None
    if src is not None and not src.exists():
        raise DataError(f"--from {src} does not exist; it takes {spec.official_files}")
    with tempfile.TemporaryDirectory(prefix="iddm-get-") as tmp:
        load = _load_cifar if spec.kind == "cifar" else _load_idx
        classes, parts, verified, notes = load(name, spec, SPLITS[split], src, Path(tmp))
        counts = _write(out, classes, parts, limit, progress)
    return GotDataset(out, list(counts), counts, verified, notes)


# ----------------------------------------------------------------------------------------------- reading
Parts = dict[str, tuple[Any, list[int]]]  # split -> (images (N, H, W) or (N, H, W, 3) uint8, labels)
_BAD_FILE = (OSError, EOFError, ValueError, TypeError, KeyError, AssertionError, RuntimeError,
             pickle.UnpicklingError)  # what a damaged or foreign file makes torchvision's readers raise


def _download(name: str, spec: Source, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision wraps mirror failures in one
        lines = [line for line in str(err).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else type(err).__name__
        raise DataError(f"downloading {name} failed ({reason}); without a network, pass --from with the official "
                        f"files: {spec.official_files}") from None


def _load_cifar(name: str, spec: Source, splits: tuple[str, ...], src: Path | None,
                tmp: Path) -> tuple[list[str], Parts, bool, list[str]]:
    import torchvision.datasets as tvd

    official = getattr(tvd, spec.torchvision)
    reader = _lenient(official)
    root = tmp
    if src is None:  # torchvision checks the archive's md5 sum
        _download(name, spec, lambda: official(str(tmp), train=True, download=True))
    elif src.is_dir():  # a folder holding the archive, its extracted folder, or that folder itself
        if (src / spec.folder).is_dir():
            root = src
        elif src.name == spec.folder:
            root = src.parent
        elif (src / spec.archive).is_file():
            _extract(src / spec.archive, spec, tmp)
        else:
            raise DataError(f"--from {src} holds neither {spec.archive} nor {spec.folder}/")
    else:
        _extract(src, spec, tmp)
    classes, parts, readers = _read_splits(reader, root, splits, src or name, spec)
    verified = all(ds.verified for ds in readers)
    notes = [] if verified else [f"{src}: the files differ from the official release's md5 sums; read as the "
                                 f"documented format without that check"]
    return classes, parts, verified, notes


def _lenient(base: type) -> type:
    """torchvision's CIFAR reader, verifying the md5 sums when the files are the official ones and otherwise
    skipping only that comparison, once every file is known to exist (``verified`` says which happened)."""

    class Reader(base):  # type: ignore[misc, valid-type]
        verified = True

        def _check_integrity(self) -> bool:
            if super()._check_integrity():
                return True
            files = [os.path.join(self.root, self.base_folder, f) for f, _ in self.train_list + self.test_list]
            files.append(os.path.join(self.root, self.base_folder, self.meta["filename"]))
            missing = [f for f in files if not os.path.isfile(f)]
            if missing:  # an OSError: reported below as the file that cannot be read
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                raise FileNotFoundError(f"{os.path.relpath(missing[0], self.root)}{more} missing")
            self.verified = False  # every file is there, but not the official bytes: drop only the md5 sums
            self.train_list = [[f, None] for f, _ in self.train_list]
            self.test_list = [[f, None] for f, _ in self.test_list]
            self.meta = {**self.meta, "md5": None}
            return True

    return Reader


def _extract(archive: Path, spec: Source, tmp: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                tar.extractall(tmp, filter="data")  # no paths outside tmp, no links out, no devices
            else:  # the same guarantee by hand: plain files and folders under tmp only
                members = tar.getmembers()
                if any(not (m.isfile() or m.isdir()) or Path(m.name).is_absolute() or ".." in Path(m.name).parts
                       for m in members):
                    raise tarfile.TarError("it holds links, devices or paths outside its folder")
                tar.extractall(tmp, members)
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"--from {archive}: not a readable tar archive ({_first(err)}); "
                        f"it takes {spec.official_files}") from None
    if not (tmp / spec.folder).is_dir():
        raise DataError(f"--from {archive}: the archive holds no {spec.folder}/ folder; it takes {spec.official_files}")


def _load_idx(name: str, spec: Source, splits: tuple[str, ...], src: Path | None,
              tmp: Path) -> tuple[list[str], Parts, bool, list[str]]:
    import torchvision.datasets as tvd

    reader = getattr(tvd, spec.torchvision)
    raw = tmp / spec.torchvision / "raw"  # where torchvision looks
    verified, notes = True, []
    if src is None:  # torchvision checks each file's md5 sum
        _download(name, spec, lambda: reader(str(tmp), train=True, download=True))
    else:
        verified = _stage_idx(src, spec, reader, raw)
        if not verified:
            notes.append(f"{src}: the files are not byte for byte the official .gz files (re-compressed copies such "
                         "as Debian's are not); read as the documented idx format, whose headers torchvision checks")
    classes, parts, _ = _read_splits(reader, tmp, splits, src or name, spec)
    return classes, parts, verified, notes


def _read_splits(reader: type, root: Path, splits: tuple[str, ...], source: Any,
                 spec: Source) -> tuple[list[str], Parts, list[Any]]:
    """(folder names of the classes, each split's images and labels, the readers) through torchvision's ``reader``,
    once every image of a split has a label that names a class."""
    parts: Parts = {}
    readers = []
    for split in splits:
        try:
            ds = reader(str(root), train=split == "train")
        except _BAD_FILE as err:
            raise DataError(f"{source}: cannot read the {split} files ({_first(err)}); "
                            f"--from takes {spec.official_files}") from None
        images = ds.data.numpy() if hasattr(ds.data, "numpy") else ds.data  # (N, H, W) or (N, H, W, 3) uint8
        labels = [int(y) for y in ds.targets]
        if len(images) != len(labels) or any(not 0 <= y < len(ds.classes) for y in labels):
            raise DataError(f"{source}: the {split} files disagree: {len(images)} images, {len(labels)} labels "
                            f"(labels must be 0 to {len(ds.classes) - 1})")
        parts[split] = (images, labels)
        readers.append(ds)
    return [safe_class_name(c) for c in ds.classes], parts, readers


def _stage_idx(src: Path, spec: Source, reader: type, raw: Path) -> bool:
    """Put the four raw files where torchvision reads them (uncompressed); True when all are the official .gz."""
    if not src.is_dir():
        raise DataError(f"--from {src} is a file; for {spec.torchvision} it takes {spec.official_files}")
    folder = next((d for d in (src, src / spec.torchvision / "raw") if (d / IDX_FILES["train"][0]).exists()
                   or (d / (IDX_FILES["train"][0] + ".gz")).exists()), src)
    official = {f: md5 for f, md5 in reader.resources}
    raw.mkdir(parents=True)
    verified = True
    for stem in (n for pair in IDX_FILES.values() for n in pair):  # torchvision wants all four, whatever the split
        plain, packed = folder / stem, folder / (stem + ".gz")
        try:
            if plain.is_file():
                os.symlink(plain.resolve(), raw / stem)  # read in place
                verified = False  # no official md5 sum of the uncompressed file to compare with
            elif packed.is_file():
                verified = verified and _md5(packed) == official.get(packed.name)
                with gzip.open(packed, "rb") as fin, open(raw / stem, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            else:
                raise DataError(f"--from {src}: {stem}(.gz) is missing; it takes {spec.official_files}")
        except (OSError, EOFError) as err:
            raise DataError(f"--from {src}: cannot read {stem} ({_first(err)})") from None
    return verified


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(err).__name__


# ----------------------------------------------------------------------------------------------- writing
def _write(out: Path, classes: list[str], parts: Parts, limit: int | None,
           progress: Callable[[int, int], None] | None) -> dict[str, int]:
    """Write the images; on any failure remove what was written, so DIR is left as it was found."""
    from PIL import Image

    if len(set(classes)) != len(classes):
        raise DataError(f"two classes share a folder name: {classes}")
    picks, taken = [], [0] * len(classes)  # (split, index, label), the first ``limit`` of each class
    for split, (_, labels) in parts.items():
        for i, y in enumerate(labels):
            if limit is None or taken[y] < limit:
                picks.append((split, i, y))
                taken[y] += 1
    prefixed, made_out = len(parts) > 1, not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in classes:
            (out / name).mkdir()
        for done, (split, i, y) in enumerate(picks, 1):
            file = f"{split}-{i:05d}.png" if prefixed else f"{i:05d}.png"  # the index in the official split
            Image.fromarray(parts[split][0][i]).save(out / classes[y] / file)
            if progress is not None and (done % 100 == 0 or done == len(picks)):
                progress(done, len(picks))
    except BaseException as err:
        for name in classes:
            shutil.rmtree(out / name, ignore_errors=True)
        if made_out:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(err, OSError):
            raise StorageError(f"writing to {out} failed ({_first(err)}); nothing was kept") from None
        raise
    return dict(zip(classes, taken, strict=True))
