"""Config resolution: precedence, provenance, profiles, every error at once, round trips."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from iddm_cli.config import FIELDS, check_runnable, resolve, to_toml
from iddm_cli.config.loader import config_from_dict, parse_duration, parse_image_size
from iddm_cli.config.schema import VAE
from iddm_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_match_iddm():
    c = resolve().config
    assert (c.train.seed, c.train.epochs, c.data.batch_size, c.data.image_size) == (0, 300, 2, 64)
    assert (c.optim.optim, c.optim.lr, c.optim.loss, c.optim.lr_func) == ("adamw", 3e-4, "mse", "linear")
    assert (c.model.network, c.model.act, c.diffusion.noise_schedule) == ("unet", "gelu", "linear")
    assert isinstance(c.diffusion.cfg_scale, float)


def test_precedence_and_provenance(tmp_path):
    profile = write(tmp_path / "p.toml", "[optim]\nlr = 1e-3\n[data]\nbatch_size = 8\nimage_size = 32\n"
                                         "[train]\nepochs = 7\n")
    r = resolve(str(profile), ["data.batch_size=16", "epochs=9"], {"epochs": 11})
    c = r.config
    assert c.optim.lr == 1e-3 and r.sources["lr"] == f"profile:{profile}"
    assert c.data.batch_size == 16 and r.sources["batch_size"] == "--set"
    assert c.train.epochs == 11 and r.sources["epochs"] == "--epochs"  # the flag beats --set and the profile
    assert c.data.image_size == 32 and r.sources["seed"] == "default"


def test_extends_chain_and_cycle(tmp_path):
    write(tmp_path / "base.toml", "[optim]\nlr = 5e-4\n[train]\nepochs = 3\n")
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\n[train]\nepochs = 4\n')
    c = resolve(str(child)).config
    assert (c.optim.lr, c.train.epochs) == (5e-4, 4)
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="cycle"):
        resolve(str(tmp_path / "a.toml"))


def test_shipped_profile_extends_by_name(tmp_path):
    child = write(tmp_path / "mine.toml", 'extends = "demo"\n[train]\nepochs = 2\n')
    c = resolve(str(child)).config
    assert c.data.dataset_path == "builtin:fashion-mnist" and c.train.epochs == 2


def test_every_problem_reported_at_once_with_suggestions(tmp_path):
    profile = write(tmp_path / "bad.toml", '[data]\nbatchsize = 4\nimage_size = "big"\n[optim]\nlr = "fast"\n'
                                           'optim = "adamx"\n[trian]\nepochs = 1\n')
    with pytest.raises(ConfigError) as err:
        resolve(str(profile), ["learning_rate=1"])
    problems = err.value.problems
    text = "\n".join(problems)
    assert len(problems) == 6, text
    assert f"{profile}: unknown key [data] batchsize (did you mean [data] batch_size?)" in problems
    assert f"{profile}: optim.lr = 'fast': expected a number" in problems
    assert "expected one of adam, adamw, sgd" in text
    assert "unknown section 'trian' (did you mean [train]?)" in text
    assert "--set: unknown key 'learning_rate' (did you mean [optim] lr?)" in text
    assert "data.image_size = 'big'" in text


def test_key_in_the_wrong_section_is_named(tmp_path):
    profile = write(tmp_path / "p.toml", "[train]\nlr = 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key \[train\] lr \(it lives in \[optim\]\)"):
        resolve(str(profile))


def test_unknown_profile_suggests():
    with pytest.raises(ConfigError, match="unknown profile 'cifar': did you mean 'cifar10'"):
        resolve("cifar")


def test_invalid_toml_names_the_file(tmp_path):
    profile = write(tmp_path / "broken.toml", "[data\n")
    with pytest.raises(ConfigError, match="broken.toml: invalid TOML"):
        resolve(str(profile))


@pytest.mark.parametrize("text,expected", [
    ("64", 64), ("64,32", [64, 32]), ("[64,32]", [64, 32]), ("(64, 32)", [64, 32]), ("[32, 32]", 32),
    (48, 48), ([16, 8], [16, 8]), ("0", None), ("64x", None), (True, None), ("1,2,3", None),
])
def test_image_size_spellings(text, expected):
    assert parse_image_size(text) == expected


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("45", 45), (" 7.5 ", 7.5),
    ("0s", None), ("", None), ("10x", None), ("1h30", None), ("m", None), ("-5s", None), ("8784h", 8784 * 3600),
    ("8785h", None), ("9" * 400, None),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_max_time_and_kimg_are_checked(invoke, tmp_path):
    for args, message in [(["--max-time", "10x"], "train.max_time: '10x': expected a duration such as 90s"),
                          (["--max-time", "1m", "--kimg", "5"], "train.kimg: and train.max_time both set")]:
        result = invoke("dm", "train", "--profile", "demo", *args, "--result-path", tmp_path)
        assert result.exit_code == 2 and message in result.output, result.output
        assert result.output.count("error:") == 1
    assert not any(tmp_path.iterdir())


def test_a_length_given_above_replaces_the_profiles(tmp_path):
    """--epochs, --kimg and --max-time are one choice: the highest layer that gives one sets the length alone (a
    profile planned for a time budget still trains the --epochs or --kimg its user asks for)."""
    timed = write(tmp_path / "timed.toml", '[train]\nmax_time = "10m"\n')
    r = resolve(str(timed), flags={"epochs": 3})
    assert (r.config.train.epochs, r.config.train.max_time, r.sources["max_time"]) == (3, "", "default")
    r = resolve(str(timed), flags={"kimg": 5.0})
    assert (r.config.train.kimg, r.config.train.max_time) == (5.0, "")
    r = resolve(str(timed), ["train.kimg=2"], {"seed": 1})  # --set is above the profile too
    assert (r.config.train.kimg, r.config.train.max_time, r.sources["kimg"]) == (2.0, "", "--set")
    r = resolve(str(timed), flags={"seed": 1})  # a layer that gives no length keeps the one below
    assert r.config.train.max_time == "10m" and r.sources["max_time"] == f"profile:{timed}"
    epochs = write(tmp_path / "epochs.toml", "[train]\nepochs = 7\n")
    r = resolve(str(epochs), flags={"kimg": 0.0})  # a length switched off chooses nothing
    assert (r.config.train.epochs, r.config.train.kimg) == (7, 0.0)
    child = write(tmp_path / "child.toml", 'extends = "timed.toml"\n[train]\nepochs = 4\n')
    assert (resolve(str(child)).config.train.epochs, resolve(str(child)).config.train.max_time) == (4, "")


def test_an_ema_given_above_replaces_the_profiles(tmp_path):
    """--ema-decay and --ema-halflife-kimg are one choice as the length is: a decay per step given as a flag is used
    even when the profile sets a half-life (which, given in the same layer, would win)."""
    halflife = write(tmp_path / "halflife.toml", "[optim]\nema_halflife_kimg = 500\nema_decay = 0.9\n")
    r = resolve(str(halflife), flags={"ema_decay": 0.999})
    assert (r.config.optim.ema_decay, r.config.optim.ema_halflife_kimg, r.sources["ema_halflife_kimg"]) == (
        0.999, 0.0, "default")
    r = resolve(str(halflife), ["optim.ema_decay=0.99"])
    assert (r.config.optim.ema_decay, r.config.optim.ema_halflife_kimg) == (0.99, 0.0)
    r = resolve(str(halflife), flags={"lr": 1e-3})  # a layer that gives no EMA keeps the one below
    assert (r.config.optim.ema_decay, r.config.optim.ema_halflife_kimg) == (0.9, 500.0)
    r = resolve(str(halflife), flags={"ema_halflife_kimg": 0.0})  # the half-life switched off: the decay below stays
    assert (r.config.optim.ema_decay, r.config.optim.ema_halflife_kimg) == (0.9, 0.0)
    child = write(tmp_path / "child.toml", 'extends = "halflife.toml"\n[optim]\nema_decay = 0.99\n')
    assert resolve(str(child)).config.optim.ema_halflife_kimg == 0.0  # an extending profile is a layer above
    autoencoder = write(tmp_path / "ae.toml", 'kind = "vae"\n[optim]\nema_halflife_kimg = 50\n')
    r = resolve(str(autoencoder), flags={"ema_decay": 0.99}, schema=VAE)
    assert (r.config.optim.ema_decay, r.config.optim.ema_halflife_kimg) == (0.99, 0.0)
    decay = write(tmp_path / "decay.toml", "[optim]\nema_decay = 0.9\n")
    r = resolve(str(decay), flags={"ema_halflife_kimg": 10.0})
    assert (r.config.optim.ema_decay, r.config.optim.ema_halflife_kimg, r.sources["ema_decay"]) == (
        0.995, 10.0, "default")


def test_types_and_bounds():
    for sets, match in [(["epochs=0"], "expected a value >= 1"), (["amp=1"], "expected true or false"),
                        (["epochs=2.5"], "expected an integer"), (["cfg_dropout=2"], "expected a value <= 1"),
                        (["lr=0"], "expected a value > 0"), (["batch_size=true"], "expected an integer")]:
        with pytest.raises(ConfigError, match=match):
            resolve(sets=sets)
    assert resolve(sets=["cfg_scale=7"]).config.diffusion.cfg_scale == 7.0  # an int is a fine float
    assert resolve(sets=["run_name=exp_1"]).config.train.run_name == "exp_1"  # bare word -> string


def test_print_config_round_trips(tmp_path):
    r = resolve("cifar10", ["cfg_scale=7.5", "image_size=[32, 16]"])
    text = to_toml(r.config)
    path = write(tmp_path / "again.toml", text)
    again = resolve(str(path)).config
    assert again == r.config
    assert config_from_dict(tomllib.loads(text), "x") == r.config


def test_settings_that_cannot_run_are_refused_together():
    r = resolve(sets=["latent=true", "start_epoch=3", "image_size=20", "base_channels=6"])
    with pytest.raises(ConfigError) as err:
        check_runnable(r)
    text = "\n".join(err.value.problems)
    for key in ("model.latent", "train.start_epoch", "model.base_channels"):
        assert key in text
    assert "--set: model.latent: needs --autoencoder-ckpt FILE" in text
    assert "--set: data.image_size" not in text  # a latent's size is checked against its autoencoder
    r = resolve(sets=["image_size=20"])
    with pytest.raises(ConfigError, match="--set: data.image_size: 20x20 is not divisible by 8"):
        check_runnable(r)


def test_settings_that_would_do_nothing_are_refused():
    r = resolve(flags={"autoencoder_ckpt": "vae.pt", "world_size": 4, "main_gpu": 1})
    with pytest.raises(ConfigError) as err:
        check_runnable(r)
    assert len(err.value.problems) == 2  # --main-gpu is accepted (rank 0 always writes)
    assert "--autoencoder-ckpt: model.autoencoder_ckpt: only applies to latent diffusion: add --latent, or drop it" \
        in err.value.problems
    assert "--world-size: device.world_size: only applies together with --distributed (or use --devices N)" \
        in err.value.problems


def test_device_keys_parse_and_contradictions_are_refused():
    c = resolve(flags={"device": "CUDA:1", "devices": "1"}).config.device
    assert (c.device, c.devices) == ("cuda:1", 1)
    assert resolve(sets=["device.devices='all'"]).config.device.devices == "all"
    assert resolve(sets=["devices=4"]).config.device.devices == 4
    for flags, expected in [({"device": "tpu"}, "expected auto, cpu, cuda or cuda:N"),
                            ({"devices": "0"}, 'a number of processes from 1 to 4096, or "all"'),
                            ({"devices": "two"}, 'a number of processes from 1 to 4096, or "all"')]:
        with pytest.raises(ConfigError, match=expected):
            resolve(flags=flags)
    for flags, expected in [({"device": "cuda:0", "devices": "2"}, "names one GPU"),
                            ({"device": "cuda:0", "distributed": True}, "device.distributed: asks for several"),
                            ({"use_gpu": 1, "device": "cpu"}, "device.use_gpu: 1 contradicts device.device"),
                            ({"distributed": True, "world_size": 2, "devices": "4"}, "contradicts device.devices")]:
        with pytest.raises(ConfigError, match=expected):
            check_runnable(resolve(flags=flags))
    check_runnable(resolve(flags={"distributed": True, "world_size": 2, "use_gpu": 0}))  # IDDM's usual line


def test_pretrain_needs_its_path():
    with pytest.raises(ConfigError, match="needs --pretrain-path"):
        check_runnable(resolve(flags={"pretrain": True}))
    with pytest.raises(ConfigError, match="add --pretrain"):
        check_runnable(resolve(flags={"pretrain_path": "x.pt"}))


def test_every_key_is_unique_and_documented():
    for spec in FIELDS.values():
        assert spec.help and spec.help.endswith((".", ")")), spec.name


def test_loader_workers_auto_is_none_on_the_cpu_and_leaves_a_core_per_gpu_process(monkeypatch):
    import os

    from iddm_cli.core.devices import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert loader_workers(-1, "cpu", 1) == 0
    assert loader_workers(-1, "cuda", 1) == 8  # 31 cores free: capped at 8
    assert loader_workers(-1, "cuda", 8) == 3  # 4 cores per process, one of them the training thread's
    assert loader_workers(-1, "cuda", 64) == 0
    assert loader_workers(2, "cpu", 1) == 2 and loader_workers(0, "cuda", 1) == 0  # an explicit count is kept
