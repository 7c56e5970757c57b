"""Dataset validation: everything wrong with an image folder, each problem with its path and severity.

Errors cannot train (unreadable, truncated, empty or non-image files, no images, empty class folders); warnings
train but change or lose something (conversions, small or extreme images, duplicates, ignored files). The quick
mode reads headers; the deep mode decodes every image fully. Decoding runs in a thread pool (Pillow releases the
GIL while decoding).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from iddm_cli.data.folder import GRAY_MODES, IMAGE_EXTENSIONS, class_folders, resolve_dataset_path
from iddm_cli.errors import DataError

ASPECT_LIMIT = 2.0  # wider or taller than this is squashed by the resize to the training size
IMBALANCE_LIMIT = 3.0  # largest class / smallest class
CONVERSIONS = {
    "CMYK": "CMYK: converted to RGB",
    "I;16": "16-bit: reduced to 8 bit", "I;16B": "16-bit: reduced to 8 bit", "I;16L": "16-bit: reduced to 8 bit",
    "I": "32-bit integer: reduced to 8 bit", "F": "32-bit float: reduced to 8 bit",
    "LA": "gray with alpha: transparent pixels become white", "RGBA": "alpha: transparent pixels become white",
    "PA": "palette with alpha: transparent pixels become white", "1": "1-bit: expanded to 8-bit gray",
    "YCbCr": "YCbCr: converted to RGB", "LAB": "LAB: converted to RGB", "HSV": "HSV: converted to RGB",
}


@dataclass
class Problem:
    severity: str  # "error" | "warning"
    code: str
    path: str
    message: str


@dataclass
class ClassStats:
    name: str
    count: int = 0
    sizes: dict[str, list[int]] = field(default_factory=dict)  # min / median / max as [width, height] by area
    modes: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    path: str
    kind: str
    layout: str  # conditional | unconditional | autoencoder
    deep: bool
    images: int
    classes: list[ClassStats]
    problems: list[Problem]
    seconds: float

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def usable(self) -> int:
        """The images that load, over every class (or group): the files checked less those that fail."""
        return sum(c.count for c in self.classes)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "layout": self.layout, "mode": "deep" if self.deep else "quick",
                "images": self.images, "usable": self.usable, "errors": len(self.errors),
                "warnings": len(self.warnings), "images_per_s": round(self.images_per_s, 1),
                "classes": [asdict(c) for c in self.classes],
                "problems": [asdict(p) for p in self.problems]}


@dataclass
class _FileInfo:
    path: Path
    group: str
    size: tuple[int, int] | None = None
    mode: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    problem: Problem | None = None


def _inspect(path: Path, group: str, deep: bool) -> _FileInfo:
    out = _FileInfo(path, group)
    try:
        data = path.read_bytes()
    except OSError as err:
        out.problem = Problem("error", "unreadable", str(path), f"cannot read the file: {err.strerror}")
        return out
    if not data:
        out.problem = Problem("error", "empty-file", str(path), "zero-byte file")
        return out
    out.digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(path) as img:
            out.size, out.mode, out.info = img.size, img.mode, dict(img.info)
            if deep:
                img.load()
    except Image.UnidentifiedImageError:
        out.problem = Problem("error", "not-an-image", str(path), "the content is not an image")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        out.problem = Problem("error", "corrupt", str(path), f"truncated or corrupt: {str(err)[:120]}")
    return out


def _layout(root: Path, kind: str) -> tuple[str, dict[str, Path], list[Problem]]:
    """(layout, {group name: folder}, problems). Groups are classes, the flat root, or train/val."""
    problems: list[Problem] = []
    if kind == "vae":
        groups = {}
        for split in ("train", "val"):
            folder = root / split
            if not folder.is_dir():
                problems.append(Problem("error", "missing-split", str(folder),
                                        f"the autoencoder needs a {split}/ folder"))
            else:
                groups[split] = folder / "images" if (folder / "images").is_dir() else folder
        return "autoencoder", groups, problems
    classes = class_folders(root)  # the rule training applies
    if classes is not None:
        return "conditional", {d.name: d for d in classes}, problems
    return "unconditional", {"(all)": root}, problems


def _walk(root: Path, groups: dict[str, Path], layout: str) -> tuple[list[tuple[Path, str]], list[Problem]]:
    """Image files with their group, and warnings for what training will ignore or treat specially."""
    files, problems = [], []
    flat = layout == "unconditional"
    for name, folder in groups.items():
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if any(part.startswith(".") for part in rel.parts):
                if path.is_file() or path.name.startswith("."):
                    problems.append(Problem("warning", "hidden", str(path), "hidden file or folder: ignored"))
                continue
            if path.is_dir():
                if not flat:
                    problems.append(Problem("warning", "nested-folder", str(path),
                                            f"nested folder: its images count as {name}"))
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                problems.append(Problem("warning", "not-an-image-file", str(path), "not an image extension: ignored"))
                continue
            files.append((path, name))
    if layout == "conditional":
        for path in sorted(p for p in root.iterdir() if p.is_file()):
            problems.append(Problem("warning", "loose-file", str(path), "file outside the class folders: ignored"))
    return files, problems


def check_dataset(path: str, image_size: tuple[int, int] | None = None, kind: str = "dm", deep: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> Report:
    """Inspect a dataset folder. Raises DataError only when the path itself is unusable."""
    root = resolve_dataset_path(path)
    if not root.is_dir():
        raise DataError(f"{root} {'is not a folder' if root.exists() else 'does not exist'}")
    start = time.perf_counter()
    layout, groups, problems = _layout(root, kind)
    files, walk_problems = _walk(root, groups, layout)
    problems += walk_problems
    infos: list[_FileInfo] = []
    workers = min(32, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, info in enumerate(pool.map(lambda f: _inspect(f[0], f[1], deep), files, chunksize=16)):
            infos.append(info)
            if progress is not None:
                progress(i + 1, len(files))
    classes = _stats(groups, infos)
    problems += _file_problems(infos, image_size)
    problems += _dataset_problems(root, layout, classes, infos)
    order = {"error": 0, "warning": 1}
    problems.sort(key=lambda p: (order[p.severity], p.path))
    return Report(str(root), kind, layout, deep, len(files), classes, problems, time.perf_counter() - start)


def _stats(groups: dict[str, Path], infos: list[_FileInfo]) -> list[ClassStats]:
    stats = {name: ClassStats(name) for name in groups}
    for name in stats:
        good = [i for i in infos if i.group == name and i.problem is None]
        stats[name].count = len(good)
        if good:
            by_area = sorted((i.size for i in good), key=lambda s: s[0] * s[1])
            median = by_area[len(by_area) // 2]
            stats[name].sizes = {"min": list(by_area[0]), "median": list(median), "max": list(by_area[-1])}
            stats[name].modes = dict(Counter(i.mode for i in good))
    return list(stats.values())


def _file_problems(infos: list[_FileInfo], image_size: tuple[int, int] | None) -> list[Problem]:
    problems = [i.problem for i in infos if i.problem is not None]
    for i in (i for i in infos if i.problem is None):
        p = str(i.path)
        if i.mode == "P" and "transparency" in i.info:
            problems.append(Problem("warning", "mode", p, "palette with transparency: transparent pixels become white"))
        elif i.mode in CONVERSIONS:
            problems.append(Problem("warning", "mode", p, CONVERSIONS[i.mode]))
        w, h = i.size
        if image_size and (w < image_size[1] or h < image_size[0]):
            problems.append(Problem("warning", "small", p, f"{w}x{h} is smaller than the training size "
                                                           f"{image_size[1]}x{image_size[0]}: upscaled"))
        if max(w, h) / min(w, h) > ASPECT_LIMIT:
            problems.append(Problem("warning", "aspect", p, f"{w}x{h}: aspect ratio above {ASPECT_LIMIT:g}, "
                                                            "distorted by the resize"))
    by_digest: dict[str, list[_FileInfo]] = {}
    for i in infos:
        if i.digest:
            by_digest.setdefault(i.digest, []).append(i)
    for same in by_digest.values():
        for dup in same[1:]:
            problems.append(Problem("warning", "duplicate", str(dup.path), f"same content as {same[0].path}"))
    return problems


def _dataset_problems(root: Path, layout: str, classes: list[ClassStats], infos: list[_FileInfo]) -> list[Problem]:
    problems = []
    if not any(i.problem is None for i in infos):
        problems.append(Problem("error", "no-images", str(root), "no readable images "
                                f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found"))
    if layout != "unconditional":
        for c in classes:
            if c.count == 0:
                problems.append(Problem("error", "empty-class", str(root / c.name), "folder has no usable images"))
        counts = [c.count for c in classes if c.count]
        if layout == "conditional" and len(counts) >= 2 and max(counts) / min(counts) > IMBALANCE_LIMIT:
            big = max(classes, key=lambda c: c.count)
            small = min((c for c in classes if c.count), key=lambda c: c.count)
            problems.append(Problem("warning", "imbalance", str(root), f"classes are imbalanced: {big.name} has "
                                    f"{big.count} images, {small.name} {small.count}"))
    modes = {i.mode for i in infos if i.problem is None}
    gray, colour = modes & GRAY_MODES, modes - GRAY_MODES
    if gray and colour:
        problems.append(Problem("warning", "mixed-color", str(root), f"gray ({', '.join(sorted(gray))}) and colour "
                                f"({', '.join(sorted(colour))}) images: gray ones are converted to RGB"))
    return problems


def summarise(report: Report) -> str:
    """One line: the usable images (of the image files checked, when some fail), errors, warnings, speed."""
    usable = report.usable
    images = f"{usable} images" if usable == report.images else f"{usable} of {report.images} image files usable"
    errors, warnings = len(report.errors), len(report.warnings)
    return (f"{images}, {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)} "
            f"({report.images_per_s:.0f} images/s, {'deep' if report.deep else 'quick'})")

