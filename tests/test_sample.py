"""`iddm sample`: from a tiny trained checkpoint, with no model flags; every error path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iddm_cli.api import DMTrainer
from iddm_cli.cli.app import app
from iddm_cli.core.reporting import SilentReporter
from iddm_cli.diffusion.samplers import SAMPLERS
from tests.conftest import make_dataset

TINY = {"image_size": 8, "base_channels": 4, "noise_steps": 20, "epochs": 1, "batch_size": 4,
        "augment": "resize", "log_every": 5}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cond = DMTrainer(dataset_path=str(make_dataset(root / "c", ["cat", "dog", "owl"])), result_path=str(root),
                     run_name="cond", reporter=SilentReporter(), **TINY).train()
    flat = DMTrainer(dataset_path=str(make_dataset(root / "f", None, mode="L")), result_path=str(root),
                     run_name="flat", reporter=SilentReporter(), **TINY).train()
    return cond.run_dir, flat.run_dir


def run(*args):
    return CliRunner().invoke(app, ["sample", *[str(a) for a in args]], catch_exceptions=False)


def pixels(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*_*.png"))}


def test_round_trip_with_no_model_flags(runs, tmp_path):
    cond, _ = runs
    out = tmp_path / ("a long folder name " * 5) / "s"  # reported on one line, though longer than 80 columns
    result = run(cond, "--sampler", "ddim", "--steps", "3", "--num", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"6 images in {out}\n" in result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cat_0000.png", "cat_0001.png", "dog_0000.png", "dog_0001.png", "grid.png", "manifest.json",
                     "owl_0000.png", "owl_0001.png"]
    assert Image.open(out / "cat_0000.png").size == (8, 8)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"] == "ema" and manifest["settings"]["sampler"] == "ddim"
    assert manifest["classes"] == ["cat", "dog", "owl"] and manifest["checkpoint"].endswith("ckpt_last.pt")


def test_an_existing_output_folder_is_not_overwritten(runs, tmp_path):
    cond, _ = runs
    for _ in range(2):  # the default folder inside the run gets a suffix
        assert run(cond, "--steps", "2", "--num", "1", "--sampler", "ddim", "--seed", "41").exit_code == 0
    assert (cond / "samples" / "ddim-2steps-seed41-2" / "manifest.json").exists()
    assert run(cond, "--steps", "2", "--num", "1", "--sampler", "ddim", "--out", tmp_path / "o").exit_code == 0
    before = sorted((tmp_path / "o").iterdir())
    result = run(cond, "--steps", "2", "--num", "1", "--sampler", "ddim", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "already holds files" in result.output  # --out is used as named, or refused
    assert sorted((tmp_path / "o").iterdir()) == before and sorted(tmp_path.iterdir()) == [tmp_path / "o"]


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_from_the_cli(runs, tmp_path, sampler):
    cond, _ = runs
    result = run(cond, "--sampler", sampler, "--steps", "4", "--num", "1", "--class-id", "2", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    img = np.asarray(Image.open(next(tmp_path.glob("owl_0000.png"))))
    assert img.shape == (8, 8, 3) and img.std() > 0


@pytest.mark.parametrize("sampler,eta", [("ddpm", None), ("ddim", "0.5"), ("dpmpp2m", None)])
def test_same_seed_same_images_whatever_the_batch_size(runs, tmp_path, sampler, eta):
    cond, _ = runs
    extra = ["--eta", eta] if eta else []
    for bs in (1, 5):
        r = run(cond, "--sampler", sampler, "--steps", "6", "--num", "3", "--seed", "7", "--batch-size", bs,
                "--no-grid", "--out", tmp_path / f"b{bs}", *extra)
        assert r.exit_code == 0, r.output
    a, b = pixels(tmp_path / "b1"), pixels(tmp_path / "b5")
    assert a.keys() == b.keys() and len(a) == 9
    assert all(np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1 for k in a)
    r = run(cond, "--sampler", sampler, "--steps", "6", "--num", "3", "--seed", "8", "--out", tmp_path / "s8", *extra)
    assert any(not np.array_equal(a[k], v) for k, v in pixels(tmp_path / "s8").items())


def test_class_selection_and_iddm_aliases(runs, tmp_path):
    cond, _ = runs
    result = run("--weight_path", cond / "ckpt_last.pt", "--sample", "ddim", "--steps", "2", "--num_images", "2",
                 "--class-name", "dog", "--class_name", "0", "--cfg_scale", "1.5", "--image_format", "jpg",
                 "--result_path", tmp_path / "r", "--use_ema")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "r").glob("*.jpg")) == [
        "cat_0000.jpg", "cat_0001.jpg", "dog_0000.jpg", "dog_0001.jpg", "grid.jpg"]
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["settings"]["cfg_scale"] == 1.5


def test_unconditional_and_raw_weights(runs, tmp_path):
    _, flat = runs
    result = run(flat, "--sampler", "dpmpp", "--steps", "3", "--num", "5", "--no-ema", "--out", tmp_path / "u")
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (tmp_path / "u").glob("sample_*.png"))
    assert len(files) == 5 and np.asarray(Image.open(tmp_path / "u" / files[0])).shape == (8, 8)
    assert json.loads((tmp_path / "u" / "manifest.json").read_text())["weights"] == "model"


@pytest.mark.parametrize("args,message", [
    (["--class-name", "zebra"], "--class-name 'zebra': no such class; classes: cat, dog, owl"),
    (["--class-name", "dgo"], "did you mean 'dog'?"),
    (["--class-id", "3"], "--class-id 3: expected 0..2"),
    (["--steps", "0"], "--steps 0: expected a value >= 1"),
    (["--steps", "21"], "--steps 21: expected 1..20"),
    (["--sampler", "dpmpp2"], "Invalid value for '--sampler'"),
    (["--device", "tpu"], "--device 'tpu'"),
])
def test_bad_requests(runs, args, message):
    cond, _ = runs
    result = run(cond, *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_bad_requests_for_an_unconditional_model(runs):
    _, flat = runs
    for args, message in [(["--class-id", "0"], "unconditional"), (["--cfg-scale", "3"], "nothing to guide")]:
        result = run(flat, *args)
        assert result.exit_code == 2 and message in result.output


def test_missing_and_corrupt_checkpoints(tmp_path):
    result = run(tmp_path / "nope.pt")
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    result = run(tmp_path / "bad.pt")
    assert result.exit_code == 2 and "not a PyTorch checkpoint" in result.output
    assert run().exit_code == 2


def test_an_adm_checkpoint_samples_with_no_model_flags(tmp_path):
    data = make_dataset(tmp_path / "d", ["cat", "dog"], mode="L")
    trained = DMTrainer(dataset_path=str(data), result_path=str(tmp_path), run_name="adm", reporter=SilentReporter(),
                        network="adm-xs", **{**TINY, "image_size": 16}).train()
    result = run(trained.run_dir, "--sampler", "dpmpp2m", "--steps", "3", "--num", "2", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    images = pixels(tmp_path / "s")
    assert sorted(images) == ["cat_0000.png", "cat_0001.png", "dog_0000.png", "dog_0001.png"]
    assert all(a.shape == (16, 16) for a in images.values())
    from iddm_cli.core.checkpoint import load_checkpoint

    assert load_checkpoint(trained.checkpoint)["network"]["kwargs"]["size"] == "xs"  # stored, not only named


def test_a_v_prediction_checkpoint_samples_and_unknown_predictions_are_refused(tmp_path):
    import torch

    from iddm_cli.core.checkpoint import load_checkpoint, save_checkpoint
    from iddm_cli.sampling import SampleRequest, load_for_sampling

    data = make_dataset(tmp_path / "d", ["cat", "dog"], mode="L")
    trained = DMTrainer(dataset_path=str(data), result_path=str(tmp_path), run_name="v", reporter=SilentReporter(),
                        prediction="v", min_snr_gamma=5.0, **TINY).train()
    result = run(trained.run_dir, "--sampler", "dpmpp2m", "--steps", "3", "--num", "1", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert sorted(pixels(tmp_path / "s")) == ["cat_0000.png", "dog_0000.png"]
    ckpt = load_checkpoint(trained.checkpoint)
    loaded = load_for_sampling(ckpt, SampleRequest(checkpoint=str(trained.checkpoint)), torch.device("cpu"))
    assert loaded.diffusion.prediction == "v"  # what the samplers convert the network's output from
    ckpt["diffusion"]["prediction"] = "score"
    save_checkpoint(tmp_path / "odd.pt", ckpt)
    result = run(tmp_path / "odd.pt", "--num", "1", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "predicts 'score'" in result.output and not (tmp_path / "o").exists()
    save_checkpoint(tmp_path / "new.pt", {**ckpt, "format_version": 3})
    result = run(tmp_path / "new.pt", "--num", "1", "--out", tmp_path / "n")
    assert result.exit_code == 2 and "written by a newer iddm" in result.output
