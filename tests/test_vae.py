"""`iddm vae train` and latent diffusion: the autoencoder trains and validates on the shared engine, resumes
bit-exactly and under DDP; latent diffusion trains conditional and unconditional; `iddm sample` decodes and verifies
the autoencoder; bad input fails in one line before anything is written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from iddm_cli.config import resolve
from iddm_cli.config.schema import VAE
from iddm_cli.core.checkpoint import load_checkpoint, save_checkpoint
from iddm_cli.core.latent import load_autoencoder
from iddm_cli.core.reporting import SilentReporter
from iddm_cli.data.folder import ImageFolderDataset, scan_dataset
from iddm_cli.errors import Interrupted
from iddm_cli.train.engine import plan_training, train
from iddm_cli.train.plan import cpp_compiler
from iddm_cli.train.resume import plan_resume
from iddm_cli.train.tasks import latent_scale
from tests.conftest import make_dataset
from tests.test_resume import InterruptAt

TINY_VAE = ["--image-size", "16", "--downsample", "4", "--base-channels", "8", "--batch-size", "4", "--epochs", "1",
            "--log-every", "1", "--augment", "resize"]
TINY_LATENT = ["--latent", "--image-size", "32", "--base-channels", "4", "--noise-steps", "20", "--epochs", "1",
               "--batch-size", "4", "--log-every", "1", "--augment", "resize"]


def vae_folders(root: Path, train: int = 16, val: int = 4) -> tuple[Path, Path]:
    """IDDM's layout: train/images/*.png and val/images/*.png."""
    make_dataset(root / "train" / "images", None, per_class=train, mode="L", size=16)
    make_dataset(root / "val" / "images", None, per_class=val, mode="L", size=16)
    return root / "train", root / "val"


def records(run: Path, event: str = "epoch") -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory) -> Path:
    """A tiny trained autoencoder run (gray, 16 px, 4x down-sampling), shared by the latent-diffusion tests."""
    from typer.testing import CliRunner

    from iddm_cli.cli.app import app

    root = tmp_path_factory.mktemp("ae")
    train_dir, val_dir = vae_folders(root / "data")
    result = CliRunner().invoke(app, ["vae", "train", "--train-dataset-path", str(train_dir), "--val-dataset-path",
                                      str(val_dir), *TINY_VAE, "--epochs", "2", "--lr", "3e-3",
                                      "--result-path", str(root), "--run-name", "ae"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "ae"


def test_vae_trains_validates_and_keeps_the_best(invoke, tmp_path):
    train_dir, val_dir = vae_folders(tmp_path / "data")
    result = invoke("vae", "train", "--train-dataset-path", train_dir, "--val_dataset_path", val_dir, *TINY_VAE,
                    "--epochs", "4", "--lr", "3e-3", "--result-path", tmp_path, "--run-name", "ae")
    assert result.exit_code == 0, result.output
    run = tmp_path / "ae"
    epochs = records(run)
    psnr = [r["val_psnr"] for r in epochs]
    assert len(psnr) == 4 and psnr[-1] > psnr[0] + 1.0, psnr  # dB
    assert all(0 < r["val_ssim"] <= 1 for r in epochs)
    best = load_checkpoint(run / "ckpt_best.pt")
    assert best["kind"] == "vae" and best["validation"]["best_psnr"] == max(psnr)
    assert best["progress"]["epoch"] == best["validation"]["best_epoch"] == psnr.index(max(psnr)) + 1
    grid = Image.open(run / "vis" / "recon_004.png")  # originals above reconstructions
    assert grid.height < grid.width
    assert 'kind = "vae"' in (run / "config.toml").read_text()
    log = (run / "train.log").read_text()
    assert "val PSNR" in log and "SSIM" in log
    # `iddm resume` continues an autoencoder run too, and refuses its own settings with the reason
    result = invoke("resume", run, "--epochs", "5", "--kl-weight", "0.1")
    assert result.exit_code == 2 and "--kl-weight: optim.kl_weight cannot change when resuming" in result.output
    result = invoke("resume", run, "--epochs", "5")
    assert result.exit_code == 0, result.output
    assert len(records(run)) == 5


def _vae_plan(tmp_path: Path, name: str):
    train_dir, val_dir = vae_folders(tmp_path / "data")
    flags = {"train_dataset_path": str(train_dir), "val_dataset_path": str(val_dir), "image_size": 16,
             "downsample": 4, "base_channels": 8, "batch_size": 4, "epochs": 3, "lr": 3e-3, "augment": "hflip",
             "ema_decay": 0.9, "log_every": 1, "result_path": str(tmp_path), "run_name": name}
    return plan_training(resolve(flags=flags, schema=VAE).config)


def test_an_interrupted_vae_run_resumes_bit_exactly(tmp_path):
    whole = train(_vae_plan(tmp_path, "whole"), SilentReporter())
    with pytest.raises(Interrupted):
        train(_vae_plan(tmp_path, "cut"), InterruptAt(1, 2))
    plan, state, _ = plan_resume(tmp_path / "cut", {})
    train(plan, SilentReporter(), state=state)
    a, b = load_checkpoint(whole.checkpoint), load_checkpoint(tmp_path / "cut" / "ckpt_last.pt")
    assert a["progress"]["step"] == b["progress"]["step"] == 12
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert a["validation"] == b["validation"]


@pytest.mark.parametrize("classes", [["shirt", "shoe"], None], ids=["conditional", "unconditional"])
def test_latent_diffusion_trains_and_samples_decoded_images(invoke, tmp_path, autoencoder, classes):
    data = make_dataset(tmp_path / "d", classes, per_class=6 if classes else 10, mode="L", size=16)
    result = invoke("dm", "train", "--dataset-path", data, *TINY_LATENT, "--autoencoder-ckpt", autoencoder,
                    "--result-path", tmp_path, "--run-name", "ldm", "--vis", "--num-vis", "2", "--vis-steps", "3")
    assert result.exit_code == 0, result.output
    run = tmp_path / "ldm"
    ckpt = load_checkpoint(run / "ckpt_last.pt")
    record = ckpt["latent"]["autoencoder"]
    assert ckpt["latent"]["shape"] == [4, 8, 8] and ckpt["network"]["kwargs"]["in_channels"] == 4
    assert record["path"] == str((autoencoder / "ckpt_best.pt").resolve()) and len(record["sha256"]) == 64
    assert record["config"]["kind"] == "vae"
    assert Image.open(run / "vis" / "ema_001.png").mode == "RGB"
    result = invoke("sample", run, "-n", "2", "--steps", "3", "--sampler", "ddim", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "out").glob("*_0000.png"))
    assert len(files) == (2 if classes else 1)
    image = Image.open(files[0])
    assert image.size == (32, 32) and image.mode == "L"  # decoded: the image size and channels, not the latent's


def test_latent_scale_gives_unit_variance_on_the_cached_latents(invoke, tmp_path, autoencoder):
    data = make_dataset(tmp_path / "d", None, per_class=12, mode="L", size=16)
    result = invoke("dm", "train", "--dataset-path", data, *TINY_LATENT, "--autoencoder-ckpt", autoencoder,
                    "--cache-latents", "--seed", "3", "--result-path", tmp_path, "--run-name", "cached")
    assert result.exit_code == 0, result.output
    latent = load_checkpoint(tmp_path / "cached" / "ckpt_last.pt")["latent"]
    scale = latent["scale"]
    codec = load_autoencoder(autoencoder)
    images = ImageFolderDataset(scan_dataset(str(data), False), "resize", (32, 32))
    mean, std = codec.encode(torch.stack([images[i][0] for i in range(len(images))]))
    z = (mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))) * scale
    assert abs(float(z.double().std()) - 1.0) < 1e-5
    assert abs(scale - latent_scale(mean, std, 3)[0]) < 1e-6 * scale
    assert abs(latent["clip"] - float(z.abs().max())) < 1e-5  # the range samplers clip latents to
    assert abs(scale - 1.0) > 1e-3  # a real measurement, not the identity


def test_sample_verifies_the_autoencoder(invoke, tmp_path, autoencoder):
    own = tmp_path / "vae.pt"
    shutil.copy(autoencoder / "ckpt_best.pt", own)
    data = make_dataset(tmp_path / "d", None, per_class=8, mode="L", size=16)
    result = invoke("dm", "train", "--dataset-path", data, *TINY_LATENT, "--autoencoder-ckpt", own,
                    "--result-path", tmp_path, "--run-name", "ldm")
    assert result.exit_code == 0, result.output
    state = load_checkpoint(own)
    state["ema"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["ema"].items()}
    save_checkpoint(own, state)  # another autoencoder in the recorded file
    result = invoke("sample", tmp_path / "ldm", "-n", "1", "--steps", "2")
    assert result.exit_code == 2 and "SHA-256" in result.output and "--no-verify" in result.output
    assert not (tmp_path / "ldm" / "samples").exists()
    result = invoke("sample", tmp_path / "ldm", "-n", "1", "--steps", "2", "--no-verify")
    assert result.exit_code == 0 and "warning: --no-verify" in result.output
    own.unlink()
    result = invoke("sample", tmp_path / "ldm", "-n", "1", "--steps", "2")
    assert result.exit_code == 2 and "--autoencoder-ckpt FILE" in result.output
    result = invoke("sample", tmp_path / "ldm", "-n", "1", "--steps", "2", "--autoencoder-ckpt", autoencoder,
                    "--out", tmp_path / "elsewhere")
    assert result.exit_code == 0, result.output  # the recorded file moved: its copy elsewhere is the same content
    result = invoke("sample", autoencoder)  # the reverse: an autoencoder is no diffusion model
    assert result.exit_code == 2 and "autoencoder checkpoint" in result.output


def _bad_cases(tmp: Path, autoencoder: Path, dm_ckpt: Path) -> list[tuple[list, int, str]]:
    train_dir, val_dir = vae_folders(tmp / "data")
    (tmp / "empty").mkdir()
    vae = ["vae", "train", "--train-dataset-path", train_dir, *TINY_VAE]
    dm = ["dm", "train", "--dataset-path", train_dir, *TINY_LATENT]
    return [
        (vae + ["--val-dataset-path", tmp / "missing"], 3, "does not exist (data.val_dataset_path)"),
        (vae + ["--val-dataset-path", tmp / "empty"], 3, "no images"),
        (vae, 2, "error: data.val_dataset_path is not set: give --val-dataset-path DIR"),
        (vae + ["--val-dataset-path", val_dir, "--image-size", "18"], 2, "not divisible by the down-sampling"),
        (vae + ["--val-dataset-path", val_dir, "--downsample", "6"], 2, "expected 4 or 8"),
        (vae + ["--val-dataset-path", val_dir, "--pretrain", "--pretrain-path", dm_ckpt], 2,
         "is a diffusion-model checkpoint"),
        (dm, 2, "needs --autoencoder-ckpt"),
        (dm + ["--autoencoder-ckpt", dm_ckpt], 2, "is a diffusion-model checkpoint, not an autoencoder"),
        (dm + ["--autoencoder-ckpt", tmp / "nope.pt"], 2, "does not exist"),
        (dm + ["--autoencoder-ckpt", autoencoder, "--image-size", "16"], 2, "use an image size divisible by 32"),
        (dm + ["--autoencoder-ckpt", autoencoder, "--image-size", "18"], 2,
         "18x18 images are not divisible by this autoencoder's down-sampling 4"),
        (["dm", "train", "--dataset-path", train_dir, "--cache-latents"], 2, "only applies to latent diffusion"),
    ]


def test_bad_input_is_one_line_before_anything_is_written(invoke, tmp_path, autoencoder):
    data = make_dataset(tmp_path / "px", None, per_class=4, mode="L", size=16)
    result = invoke("dm", "train", "--dataset-path", data, "--image-size", "8", "--base-channels", "4",
                    "--noise-steps", "10", "--epochs", "1", "--result-path", tmp_path / "pixel", "--run-name", "px")
    assert result.exit_code == 0, result.output
    dm_ckpt = tmp_path / "pixel" / "px" / "ckpt_last.pt"
    for args, code, text in _bad_cases(tmp_path, autoencoder, dm_ckpt):
        out = tmp_path / "out"
        result = invoke(*args, "--result-path", out)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == code and len(errors) == 1 and text in " ".join(result.output.split()), \
            (args, result.output)
        assert not out.exists(), args


def test_two_cpu_processes_train_a_vae_epoch(tmp_path):
    train_dir, val_dir = vae_folders(tmp_path / "data", train=8, val=3)
    cmd = [sys.executable, "-m", "iddm_cli", "vae", "train", "--train-dataset-path", str(train_dir),
           "--val-dataset-path", str(val_dir), *TINY_VAE, "--device", "cpu", "--nproc", "2",
           "--result-path", str(tmp_path), "--run-name", "ddp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DDP over gloo" in proc.stderr
    (epoch,) = records(tmp_path / "ddp")
    assert epoch["val_psnr"] > 0 and (tmp_path / "ddp" / "ckpt_best.pt").is_file()
    assert load_checkpoint(tmp_path / "ddp" / "ckpt_last.pt")["progress"]["world_size"] == 2


@pytest.mark.parametrize("cache", [False, True], ids=["encoded-each-step", "cached"])
def test_an_interrupted_latent_run_resumes_bit_exactly(tmp_path, autoencoder, cache):
    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=6, mode="L", size=16)
    flags = {"dataset_path": str(data), "latent": True, "autoencoder_ckpt": str(autoencoder), "cache_latents": cache,
             "image_size": 32, "base_channels": 4, "noise_steps": 20, "epochs": 2, "batch_size": 4,
             "augment": "resize", "log_every": 1, "result_path": str(tmp_path)}
    whole = train(plan_training(resolve(flags={**flags, "run_name": "whole"}).config), SilentReporter())
    with pytest.raises(Interrupted):
            train(plan_training(resolve(flags={**flags, "run_name": "cut"}).config), InterruptAt(1, 1))
    moved = tmp_path / "moved.pt"  # the autoencoder moved meanwhile: resume takes it by its SHA-256
    shutil.copy(autoencoder / "ckpt_best.pt", moved)
    plan, state, _ = plan_resume(tmp_path / "cut", {"autoencoder_ckpt": str(moved)})
    train(plan, SilentReporter(), state=state)
    a, b = load_checkpoint(whole.checkpoint), load_checkpoint(tmp_path / "cut" / "ckpt_last.pt")
    assert (a["latent"]["scale"], a["latent"]["clip"]) == (b["latent"]["scale"], b["latent"]["clip"])
    assert a["progress"]["step"] == b["progress"]["step"] == 6
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert b["latent"]["autoencoder"]["path"] == str(moved.resolve())


def test_an_autoencoder_fine_tunes_from_another(invoke, tmp_path, autoencoder):
    train_dir, val_dir = vae_folders(tmp_path / "data")
    result = invoke("vae", "train", "--train-dataset-path", train_dir, "--val-dataset-path", val_dir, *TINY_VAE,
                    "--pretrain", "--pretrain-path", autoencoder, "--result-path", tmp_path,  # the run: ckpt_best.pt
                    "--run-name", "tuned", "--dry-run")
    assert result.exit_code == 0 and "pretrained weights" in result.output, result.output
    assert f"{autoencoder / 'ckpt_best.pt'} (EMA weights)" in " ".join(result.output.split())
    assert "validation images are training images too" not in result.output
    # the parent folder as training set pulls val/ into training: validation would measure learnt images
    result = invoke("vae", "train", "--train-dataset-path", train_dir.parent, "--val-dataset-path", val_dir,
                    *TINY_VAE, "--dry-run")
    assert result.exit_code == 0 and "4 of the 4 validation images are training images too" in " ".join(
        result.output.split())
    result = invoke("vae", "train", "--train-dataset-path", train_dir, "--val-dataset-path", val_dir, *TINY_VAE,
                    "--latent-channels", "3", "--pretrain", "--pretrain-path", autoencoder / "ckpt_best.pt",
                    "--result-path", tmp_path / "no", "--dry-run")
    assert result.exit_code == 2 and "--latent-channels" in result.output


def test_profile_kind_is_inherited_and_checked(invoke, tmp_path):
    child = tmp_path / "mine.toml"
    child.write_text('extends = "vae-demo"\n[train]\nepochs = 1\n')
    result = invoke("vae", "train", "--profile", child, "--print-config")
    assert result.exit_code == 0 and "epochs = 1" in result.output, result.output
    result = invoke("dm", "train", "--profile", child, "--print-config")
    assert result.exit_code == 2 and "is for `iddm vae train`" in result.output
    child.write_text('kind = ["vae"]\n')
    result = invoke("vae", "train", "--profile", child, "--print-config")
    assert result.exit_code == 2 and "kind = ['vae']: expected one of" in result.output


@pytest.mark.skipif(not shutil.which(cpp_compiler()), reason="torch.compile on the CPU needs a C++ compiler")
def test_a_compiled_training_step_computes_what_an_eager_one_does(invoke, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # a folder of the user's own would be kept
    # the engine compiles the autoencoder's step as it does the diffusion model's (self.net); the autoencoder is the
    # cheaper to compile on 2 cores (about 30 s against 4 minutes for the smallest denoiser)
    train_dir, val_dir = vae_folders(tmp_path / "data", train=8)  # batch 4: one shape, one compilation
    common = ["vae", "train", "--train-dataset-path", train_dir, "--val-dataset-path", val_dir, *TINY_VAE,
              "--epochs", "2", "--device", "cpu", "--result-path", tmp_path]
    assert invoke(*common, "--run-name", "eager").exit_code == 0
    result = invoke(*common, "--run-name", "compiled", "--compile")
    assert result.exit_code == 0, result.output
    eager, compiled = (records(tmp_path / name, "train") for name in ("eager", "compiled"))
    assert [r["step"] for r in compiled] == [1, 2, 3, 4]
    # the same noise (drawn from the step's generator inside the compiled forward) and the same arithmetic
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], rel=1e-5)
    a, b = (load_checkpoint(tmp_path / name / "ckpt_last.pt") for name in ("eager", "compiled"))
    assert a["model"].keys() == b["model"].keys()  # the plain module's names, no _orig_mod. prefix
    assert (tmp_path / "compiled" / "compile-cache").is_dir()  # its generated code stays in the run folder
    assert "TORCHINDUCTOR_CACHE_DIR" not in __import__("os").environ  # and later compilations are not the run's
