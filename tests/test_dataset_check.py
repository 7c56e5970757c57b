"""`iddm dataset check` on a deliberately messy dataset, and training that survives a file failing mid-run."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iddm_cli.cli.app import app
from tests.conftest import TINY, make_dataset


def truncated_jpeg() -> bytes:
    """A JPEG whose header is intact but whose pixel data stops halfway."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def messy(root):
    make_dataset(root, ["a", "b"], per_class=4)
    a, b = root / "a", root / "b"
    (a / "truncated.jpg").write_bytes(truncated_jpeg())
    (a / "zero.png").write_bytes(b"")
    (a / "text.png").write_text("hello")
    Image.new("CMYK", (12, 12)).save(a / "cmyk.jpg")
    Image.fromarray(np.full((12, 12), 40000, dtype=np.uint16)).save(b / "deep16.png")
    Image.new("RGBA", (12, 12), (1, 2, 3, 0)).save(b / "rgba.png")
    pal = Image.new("P", (12, 12))
    pal.info["transparency"] = 0
    pal.save(b / "palette.png", transparency=0)
    Image.new("RGB", (4, 4)).save(b / "tiny.png")
    Image.new("RGB", (40, 12)).save(b / "wide.png")
    shutil.copy(a / "0.png", a / "copy.png")
    (a / ".hidden.png").write_bytes((a / "0.png").read_bytes())
    (root / "empty").mkdir()
    (b / "nested").mkdir()
    Image.new("RGB", (12, 12)).save(b / "nested" / "n.png")
    (b / "notes.txt").write_text("x")
    return root


def check(*args):
    return CliRunner().invoke(app, ["dataset", "check", *[str(a) for a in args]], catch_exceptions=False)


EXPECTED = [  # (severity, code, file name)
    ("error", "corrupt", "truncated.jpg"), ("error", "empty-file", "zero.png"),
    ("error", "not-an-image", "text.png"), ("error", "empty-class", "empty"),
    ("warning", "mode", "cmyk.jpg"), ("warning", "mode", "deep16.png"), ("warning", "mode", "rgba.png"),
    ("warning", "mode", "palette.png"), ("warning", "small", "tiny.png"), ("warning", "aspect", "wide.png"),
    ("warning", "duplicate", "copy.png"), ("warning", "hidden", ".hidden.png"),
    ("warning", "nested-folder", "nested"), ("warning", "not-an-image-file", "notes.txt"),
]


def test_every_problem_with_path_and_severity(tmp_path):
    root = messy(tmp_path / "messy")
    result = check(root, "--image-size", "8", "--deep", "--json")
    assert result.exit_code == 3
    report = json.loads(result.stdout)
    found = {(p["severity"], p["code"], p["path"].rsplit("/", 1)[-1]) for p in report["problems"]}
    for item in EXPECTED:
        assert item in found, item
    assert report["layout"] == "conditional" and report["mode"] == "deep"
    assert {"mixed-color"} <= {p["code"] for p in report["problems"]}
    counts = {c["name"]: c["count"] for c in report["classes"]}
    assert counts == {"a": 6, "b": 10, "empty": 0}
    summary = check(root, "--image-size", "8", "--deep").output.strip().splitlines()[-1]
    assert summary.startswith("16 of 19 image files usable, 4 errors, ")  # the images that load, of those checked
    assert (report["images"], report["usable"]) == (19, 16)


def test_the_summary_counts_in_words(tmp_path):
    root = make_dataset(tmp_path / "one", ["x", "y"])
    (root / "x" / "zero.png").write_bytes(b"")
    assert check(root).output.strip().splitlines()[-1].startswith("12 of 13 image files usable, 1 error, ")
    clean = tmp_path / "clean"
    for i in range(4):  # distinct colour images, no warnings of their own
        (clean / "xy"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(clean / "xy"[i % 2] / f"{i}.png")
    (clean / "x" / "notes.txt").write_text("x")
    assert check(clean, "--image-size", "8").output.strip().splitlines()[-1].startswith(
        "4 images, 0 errors, 1 warning (")


def test_quick_mode_reads_headers_only(tmp_path):
    root = messy(tmp_path / "messy")
    report = json.loads(check(root, "--json").stdout)
    codes = {(p["code"], p["path"].rsplit("/", 1)[-1]) for p in report["problems"]}
    assert ("corrupt", "truncated.jpg") not in codes and ("empty-file", "zero.png") in codes


def test_clean_dataset_exits_zero_and_prints_a_table(tmp_path):
    root = make_dataset(tmp_path / "ok", ["x", "y"])
    result = check(root, "--image-size", "8")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "conditional layout" in text and "12 images, 0 errors," in text and "│ total │ 12" in text


def test_imbalance_and_autoencoder_layout(tmp_path):
    root = make_dataset(tmp_path / "imb", ["big"], per_class=12)
    make_dataset(root, ["small"], per_class=2)
    report = json.loads(check(root, "--json").stdout)
    assert any(p["code"] == "imbalance" for p in report["problems"])
    vae = tmp_path / "vae"
    make_dataset(vae / "train", ["images"], per_class=3)
    report = json.loads(check(vae, "--kind", "vae", "--json").stdout)
    assert report["layout"] == "autoencoder" and report["errors"] == 1  # no val/


@pytest.mark.parametrize("args,code", [(["--kind", "gan"], 2), (["--image-size", "big"], 2)])
def test_usage_errors(tmp_path, args, code):
    assert check(make_dataset(tmp_path / "d", None), *args).exit_code == code


def test_missing_path_and_empty_folder(tmp_path):
    assert check(tmp_path / "none").exit_code == 3
    (tmp_path / "empty").mkdir()
    result = check(tmp_path / "empty", "--json")
    assert result.exit_code == 3 and json.loads(result.stdout)["problems"][0]["code"] == "no-images"


def test_training_survives_a_file_that_fails_to_decode(invoke, tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b"])
    (data / "a" / "cut.jpg").write_bytes(truncated_jpeg())  # the header reads; decoding fails
    result = invoke("dm", "train", "--dataset-path", data, "--result-path", tmp_path / "r", *TINY)
    assert result.exit_code == 0, result.output
    assert "skipped a file that failed to decode" in result.output and "cut.jpg" in result.output
    log = (tmp_path / "r" / "df" / "train.log").read_text()
    assert "cut.jpg" in log
    result = invoke("dm", "train", "--dataset-path", data, "--result-path", tmp_path / "r", "--strict-data", *TINY)
    assert result.exit_code == 3 and "cut.jpg" in result.output
    stopped = [line for line in (tmp_path / "r" / "df-2" / "train.log").read_text().splitlines() if "stopped:" in line]
    assert len(stopped) == 1 and "cut.jpg" in stopped[0] and "--strict-data" in stopped[0]  # the log says why
