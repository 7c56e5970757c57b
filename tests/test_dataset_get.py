"""`iddm dataset get`: standard datasets written as class folders, offline (--from), pixel for pixel, and its errors."""

from __future__ import annotations

import gzip
import pickle
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iddm_cli.cli.app import app
from iddm_cli.data.folder import BUILTIN_DATASETS
from iddm_cli.data.get import known_dataset, safe_class_name
from tests.conftest import TINY

DEBIAN_FM = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def get(*args):
    return CliRunner().invoke(app, ["dataset", "get", *[str(a) for a in args]], catch_exceptions=False)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format: magic, dims as big-endian uint32, then uint8 data), read without torchvision."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = np.frombuffer(data[4:4 + 4 * ndim], dtype=">u4").astype(int)
    return np.frombuffer(data[4 + 4 * ndim:], dtype=np.uint8).reshape(shape)


@pytest.mark.skipif(not (DEBIAN_FM / "train-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_files_trains(tmp_path):
    out = tmp_path / "fm"
    result = get("fashion-mnist", out, "--from", DEBIAN_FM, "--limit", 5)
    assert result.exit_code == 0, result.output
    assert "wrote 50 images" in result.output and "not byte for byte the official" in result.output
    demo = BUILTIN_DATASETS["fashion-mnist"]
    names = sorted(p.name for p in demo.iterdir() if p.is_dir())
    assert sorted(p.name for p in out.iterdir()) == names  # tshirt-top, ankle-boot, ... as the demo set
    images = read_idx(DEBIAN_FM / "train-images-idx3-ubyte.gz")  # (60000, 28, 28)
    labels = read_idx(DEBIAN_FM / "train-labels-idx1-ubyte.gz")
    order = ["tshirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
    for label, name in enumerate(order):
        files = sorted((out / name).iterdir())
        first = np.flatnonzero(labels == label)[:5]  # --limit takes the first images of each class
        assert [int(f.stem) for f in files] == first.tolist() and all(f.suffix == ".png" for f in files)
        for f, i in zip(files, first, strict=True):
            with Image.open(f) as img:
                assert img.mode == "L" and np.array_equal(np.asarray(img), images[i]), f
            with Image.open(demo / name / f.name) as img:  # the demo set holds the same first images
                assert np.array_equal(np.asarray(img), images[i]), f

    result = CliRunner().invoke(app, ["dm", "train", "--dataset-path", str(out), "--dry-run", *TINY])
    assert result.exit_code == 0, result.output
    assert "50 images" in result.output and "conditional, 10 classes, gray" in result.output


def cifar10_archive(tmp_path: Path, per_batch: int = 10) -> tuple[Path, dict[str, tuple[np.ndarray, list[int]]]]:
    """A cifar-10-python.tar.gz in the official format (python pickles in cifar-10-batches-py/), a few images per
    batch; returns it and {batch file: (images (N, 32, 32, 3), labels)}."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)  # rows: R plane, G plane, B plane
        labels = [(b + k) % 10 for k in range(per_batch)]
        (folder / name).write_bytes(pickle.dumps({"batch_label": name, "labels": labels, "data": data}))
        batches[name] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR10_CLASSES, "num_vis": 3072}))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive, batches


def test_cifar10_from_an_archive_pixel_exact(tmp_path):
    archive, batches = cifar10_archive(tmp_path)
    out = tmp_path / "cifar10"
    result = get("cifar10", out, "--from", archive)
    assert result.exit_code == 0, result.output
    assert "differ from the official release's md5 sums" in result.output  # a hand-made archive: said, not hidden
    train = [(img, y) for b in range(1, 6) for img, y in zip(*batches[f"data_batch_{b}"], strict=True)]
    assert sorted(p.name for p in out.iterdir()) == CIFAR10_CLASSES
    assert sum(1 for _ in out.rglob("*.png")) == len(train) == 50
    for i, (img, y) in enumerate(train):  # <index>.png: the index in the training split, batches 1 to 5 in order
        with Image.open(out / CIFAR10_CLASSES[y] / f"{i:05d}.png") as png:
            assert png.mode == "RGB" and np.array_equal(np.asarray(png), img)

    both = tmp_path / "both"  # --split all: train-<i>.png and test-<i>.png side by side; the extracted folder works
    result = get("cifar10", both, "--from", tmp_path / "build", "--split", "all", "--limit", 6)
    assert result.exit_code == 0, result.output
    for cls in CIFAR10_CLASSES:  # 5 train images per class, then test ones up to the limit
        names = sorted(p.name for p in (both / cls).iterdir())
        assert len(names) == 6 and sum(n.startswith("train-") for n in names) == 5, names
    test_img, test_y = batches["test_batch"]
    with Image.open(both / CIFAR10_CLASSES[test_y[3]] / "test-00003.png") as png:
        assert np.array_equal(np.asarray(png), test_img[3])


@pytest.mark.parametrize(("name", "expected"), [("T-shirt/top", "tshirt-top"), ("Ankle boot", "ankle-boot"),
                                                ("0 - zero", "0-zero"), ("aquarium_fish", "aquarium_fish")])
def test_class_names_become_folder_names(name, expected):
    assert safe_class_name(name) == expected


def test_errors_are_one_line_with_their_exit_code(tmp_path, monkeypatch):
    result = get("cifar", tmp_path / "x")
    assert result.exit_code == 2 and "'cifar' is not one of" in result.output and not (tmp_path / "x").exists()

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    result = get("mnist", full, "--from", tmp_path / "nope")  # refused before --from is even looked at
    assert result.exit_code == 2 and "not empty" in result.output
    assert [p.name for p in full.iterdir()] == ["keep.txt"]

    result = get("cifar10", tmp_path / "y", "--from", tmp_path / "nope.tar.gz")
    assert result.exit_code == 3 and "does not exist" in result.output and not (tmp_path / "y").exists()

    def offline(*args, **kwargs):
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket, "create_connection", offline)  # whatever network the machine has
    for name, official in [("cifar10", "cifar-10-python.tar.gz"), ("mnist", "train-images-idx3-ubyte.gz")]:
        result = get(name, tmp_path / name)
        assert result.exit_code == 3, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output
        assert f"downloading {name} failed" in result.output and "--from" in result.output
        assert official in result.output and not (tmp_path / name).exists()


def test_a_missing_dataset_named_like_a_standard_one_points_to_get(tmp_path, monkeypatch):
    assert known_dataset("CIFAR-10") == "cifar10" and known_dataset("fashion_mnist") == "fashion-mnist"
    assert known_dataset("landscape") is None
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["dm", "train", "--profile", "cifar10", "--dry-run"])
    assert result.exit_code == 3
    # the profile's relative path, as the run would record it: from the folder the command ran in
    assert f"`iddm dataset get cifar10 {tmp_path / 'datasets' / 'cifar10'}` makes it" in " ".join(result.output.split())


def test_a_cifar_archive_with_a_label_outside_the_classes_is_a_data_error(tmp_path):
    archive, _ = cifar10_archive(tmp_path)
    folder = tmp_path / "build" / "cifar-10-batches-py"
    batch = pickle.loads((folder / "data_batch_1").read_bytes())
    batch["labels"][0] = 10  # ten classes: 0 to 9
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch))
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    result = get("cifar10", tmp_path / "out", "--from", archive)
    assert result.exit_code == 3 and "labels must be 0 to 9" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
