"""IDDM's Python API as its users call it: IDDM's own argument Namespace, train(rank) and the mp.spawn pattern."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import pytest

from iddm_cli.api import DMTrainer, init_train_args
from iddm_cli.core.checkpoint import load_checkpoint
from iddm_cli.core.reporting import SilentReporter
from iddm_cli.errors import ConfigError
from tests.conftest import make_dataset

# What IDDM 1.3's init_train_args() returns when nothing is given on the command line (its argparse defaults).
IDDM_DEFAULTS = {
    "seed": 0, "conditional": True, "mode": "class", "latent": False, "sample": "ddpm", "network": "unet",
    "run_name": "df", "epochs": 300, "batch_size": 2, "num_workers": 0, "image_size": [64, 64],
    "dataset_path": "/your/path/Defect-Diffusion-Model/datasets/dir", "amp": False, "optim": "adamw",
    "loss": "mse", "act": "gelu", "lr": 3e-4, "lr_func": "linear",
    "result_path": "/your/path/Defect-Diffusion-Model/results", "save_model_interval": False,
    "save_model_interval_epochs": 10, "start_model_interval": -1, "vis": False, "num_vis": -1,
    "image_format": "png", "noise_schedule": "linear", "resume": False, "start_epoch": None, "pretrain": False,
    "pretrain_path": "", "use_gpu": 0, "distributed": False, "main_gpu": 0, "world_size": 2, "cfg_scale": 3,
    "autoencoder_network": "vae", "autoencoder_ckpt": "/your/path/of/autoencoder/weight.pt",
}
SMALL = {"image_size": 8, "base_channels": 4, "noise_steps": 20, "epochs": 1, "batch_size": 4, "device": "cpu"}


def test_iddms_own_namespace_with_its_defaults_is_accepted(cond_data, tmp_path):
    args = argparse.Namespace(**IDDM_DEFAULTS)
    trainer = DMTrainer(args=args, dataset_path=str(cond_data), result_path=str(tmp_path), **SMALL,
                        reporter=SilentReporter())
    c = trainer.config
    assert c.model.autoencoder_ckpt == "" and c.device.world_size == 0  # placeholders and ignored values unset
    assert c.diffusion.cfg_scale == 3.0 and c.data.conditional is True and c.train.start_epoch == -1
    assert any("IDDM's placeholder" in note for note in trainer.notes)
    assert trainer.train().steps == 5
    with pytest.raises(ConfigError, match="data.dataset_path is not set"):  # the placeholder is not a dataset
        DMTrainer(args=argparse.Namespace(**IDDM_DEFAULTS), **SMALL).train()


def test_init_train_args_parses_iddm_spellings():
    args = init_train_args(["--batch_size", "16", "--lr", "1e-3", "--image_size", "[64,32]", "--vis"])
    assert (args.batch_size, args.lr, args.image_size, args.vis, args.mode) == (16, 1e-3, "[64,32]", True, "class")
    assert DMTrainer(args=args).config.data.image_size == [64, 32]


def test_train_rank_outside_the_process_count_is_refused(cond_data, tmp_path):
    trainer = DMTrainer(dataset_path=str(cond_data), result_path=str(tmp_path), **SMALL)
    with pytest.raises(ConfigError, match="start mp.spawn with nprocs=1"):
        trainer.train(1)
    assert trainer.train(0).steps == 5  # one process: train(0) is train()


GUIDE = """
import torch
from torch import multiprocessing as mp
from iddm_cli.api import DMTrainer, init_train_args

if __name__ == "__main__":
    args = init_train_args()
    setattr(args, "distributed", True)
    setattr(args, "world_size", 2)
    setattr(args, "conditional", True)
    setattr(args, "sample", "ddpm")
    setattr(args, "network", "unet")
    setattr(args, "epochs", 2)
    setattr(args, "image_size", 8)
    setattr(args, "dataset_path", {data!r})
    setattr(args, "result_path", {out!r})
    mp.spawn(DMTrainer(args=args).train, nprocs=2)
"""


def test_the_guides_mp_spawn_script_trains_with_two_gloo_processes(tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b", "c"], per_class=4)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(GUIDE.format(data=str(data), out=str(tmp_path / "out"))))
    flags = ["--device", "cpu", "--base_channels", "4", "--noise_steps", "20", "--batch_size", "2"]
    proc = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(tmp_path / "out" / "df" / "ckpt_last.pt")
    assert state["progress"]["world_size"] == 2 and state["progress"]["epoch"] == 2
    assert state["progress"]["step"] == 2 * 3  # 12 images: 6 per rank, batch 2 per rank, 2 epochs


# ----------------------------------------------------------------------------------------------- generate flags
@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    data = make_dataset(root / "d", ["cat", "dog", "fox"])
    return DMTrainer(dataset_path=str(data), result_path=str(root), run_name="r", reporter=SilentReporter(),
                     **SMALL).train().run_dir


def sample(*args):
    from typer.testing import CliRunner

    from iddm_cli.cli.app import app

    return CliRunner().invoke(app, ["sample", *map(str, args)], catch_exceptions=False)


def test_an_iddm_generate_command_line_works(cond_run, tmp_path, monkeypatch):
    monkeypatch.setattr("iddm_cli.sampling.visible_gpus", lambda: 0)  # the same on a machine with a GPU
    result = sample("--weight_path", cond_run / "ckpt_last.pt", "--generate_name", "df", "--num_images", "8",
                    "--class_name", "-1", "--image_size", "8", "--network", "unet", "--act", "gelu",
                    "--num_classes", "3", "--conditional", "--mode", "class", "--sample", "ddim", "--cfg_scale", "3",
                    "--use_ema", "--result_path", tmp_path / "out", "--image_format", "png", "--use_gpu", "0")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    # IDDM's --class_name -1: one image of every class; --generate_name prefixes every file
    assert names == ["df_cat_0000.png", "df_dog_0000.png", "df_fox_0000.png", "df_grid.png", "manifest.json"]
    assert "no GPU is visible, so sampling runs on the CPU" in result.output
    assert "does not apply" not in result.output  # 8 is --num's default: nothing was given to ignore
    other = sample(cond_run, "--class_name", "-1", "--num", "5", "--steps", "2", "--out", tmp_path / "five")
    assert other.exit_code == 0 and "so --num 5 does not apply" in " ".join(other.output.split())
    assert len(list((tmp_path / "five").glob("*_0000.png"))) == 3


@pytest.mark.parametrize("args,message", [
    (["--image_size", "16"], "--image-size (16, 16): the checkpoint says (8, 8)"),
    (["--network", "cspdarkunet"], "--network 'cspdarkunet': the checkpoint says 'unet'"),
    (["--act", "silu"], "--act 'silu': the checkpoint says 'gelu'"),
    (["--num_classes", "10"], "--num-classes 10: the checkpoint says 3"),
    (["--no-conditional"], "--conditional False: the checkpoint says True"),
    (["--mode", "text"], "--mode text: text conditioning was a stub in IDDM"),
    (["--latent"], "--latent: this checkpoint is a pixel-space model"),
    # IDDM's short forms of the same flags
    (["-i", "16"], "--image-size (16, 16): the checkpoint says (8, 8)"),
    (["-m", "text"], "--mode text: text conditioning was a stub in IDDM"),
    (["-l"], "--latent: this checkpoint is a pixel-space model"),
    (["-c", "-m", "class", "-i", "16"], "--image-size (16, 16)"),
    (["--generate_name", "../x"], "--generate-name '../x': expected a plain name (it has a path separator)"),
    (["--use_gpu", "0", "--device", "cpu"], "--use-gpu 0 contradicts --device cpu"),
])
def test_iddm_generate_flags_that_disagree_with_the_checkpoint(cond_run, tmp_path, args, message):
    result = sample(cond_run, "--steps", "2", "--out", tmp_path / "o", *args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "o").exists()


def run_cli(*args):
    from typer.testing import CliRunner

    from iddm_cli.cli.app import app

    return CliRunner().invoke(app, list(map(str, args)), catch_exceptions=False)


def test_iddm_trainers_short_flags(tmp_path):
    """train.py's --mode/-m (class only) and the autoencoder trainer's -s (seed) and -d (distributed)."""
    printed = run_cli("dm", "train", "--profile", "demo", "-m", "class", "--print-config")
    assert printed.exit_code == 0 and "\nmode =" not in printed.output  # IDDM's mode is no setting of a run
    refused = run_cli("dm", "train", "--profile", "demo", "--mode", "text", "--dry-run")
    assert refused.exit_code == 2 and "--mode text: text conditioning was a stub" in refused.output
    vae = run_cli("vae", "train", "--profile", "vae-demo", "-s", "7", "-d", "--print-config")
    assert vae.exit_code == 0 and "seed = 7" in vae.output and "distributed = true" in vae.output, vae.output
