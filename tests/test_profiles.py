"""Every shipped profile prints, and dry-runs against a small dataset."""

from __future__ import annotations

import re

import pytest

from iddm_cli.config.commands import RUN
from iddm_cli.config.loader import available_profiles, profile_kind, shipped_profile_dir
from tests.conftest import make_dataset

SHIPPED = ["demo", "cpu-32", "cifar10", "landscape", "ci-smoke"]
LATENT = ["latent-demo"]
AUTOENCODER = ["vae-demo", "neu-det"]


def test_the_profiles_ship():
    assert set(SHIPPED + LATENT + AUTOENCODER) <= set(available_profiles())


def test_the_profile_help_names_every_shipped_profile_under_its_command():
    dm_part, vae_part = (set(re.split(r"[\s,;:()]+", part)) for part in RUN["profile"].help.split("vae train:"))
    for path in shipped_profile_dir().glob("*.toml"):
        assert path.stem in (vae_part if profile_kind(str(path)) == "vae" else dm_part), path.stem


def test_user_profiles_live_under_xdg_config_home(invoke, tmp_path, monkeypatch):
    folder = tmp_path / "cfg" / "iddm" / "profiles"
    folder.mkdir(parents=True)
    (folder / "mine.toml").write_text('extends = "demo"\n[optim]\nlr = 5e-4\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    result = invoke("dm", "train", "--profile", "mine", "--print-config")
    assert result.exit_code == 0 and "lr = 0.0005" in result.output, result.output
    assert profile_kind("mine") == "dm" and profile_kind("vae-demo") == "vae" and profile_kind("nope") is None


@pytest.mark.parametrize("name", SHIPPED + LATENT + AUTOENCODER)
def test_print_config(invoke, name):
    command = ["vae" if name in AUTOENCODER else "dm", "train"]
    result = invoke(*command, "--profile", name, "--print-config")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# resolved by iddm")
    assert "[data]" in result.output and "[train]" in result.output
    assert ('kind = "vae"' in result.output) == (name in AUTOENCODER)
    other = ["dm" if name in AUTOENCODER else "vae", "train"]
    result = invoke(*other, "--profile", name, "--print-config")
    assert result.exit_code == 2 and "is for `iddm" in result.output


def test_autoencoder_and_latent_demo_profiles_dry_run(invoke, tmp_path):
    result = invoke("vae", "train", "--profile", "vae-demo", "--result-path", tmp_path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "1200 images" in result.output and "200 images" in result.output and "latent 4x8x8" in result.output
    result = invoke("vae", "train", "--profile", "vae-demo", "--result-path", tmp_path, "--epochs", "1",
                    "--base-channels", "8", "--run-name", "ae")
    assert result.exit_code == 0, result.output
    result = invoke("dm", "train", "--profile", "latent-demo", "--autoencoder-ckpt", tmp_path / "ae",
                    "--result-path", tmp_path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "4x8x8 latents" in result.output and "cached once" in result.output


@pytest.mark.parametrize("name", SHIPPED)
def test_dry_run(invoke, name, tmp_path):
    data = make_dataset(tmp_path / "data", ["a", "b"], per_class=3)
    result = invoke("dm", "train", "--profile", name, "--dataset-path", data, "--result-path", tmp_path / "out",
                    "--dry-run")
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output and "dry run: nothing was written" in result.output
    assert not (tmp_path / "out").exists()


def test_demo_dry_run_uses_the_embedded_dataset(invoke, tmp_path):
    result = invoke("dm", "train", "--profile", "demo", "--result-path", tmp_path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "1200 images" in result.output and "conditional, 10 classes, gray" in result.output
