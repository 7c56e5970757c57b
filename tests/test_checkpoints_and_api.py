"""Checkpoint safety and round trips, pretraining, and the Python API."""

from __future__ import annotations

import argparse
import os
import pickle
import warnings

import pytest
import torch

from iddm_cli.api import DMTrainer
from iddm_cli.core.checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from iddm_cli.core.reporting import SilentReporter
from iddm_cli.errors import CheckpointError, ConfigError
from iddm_cli.nets import build_network
from tests.conftest import STRUCTURE, make_dataset

TINY = {"image_size": 8, "base_channels": 4, "noise_steps": 20, "epochs": 1, "batch_size": 4,
        "augment": "resize", "log_every": 1}


def tiny_trainer(data, out, **kw):
    return DMTrainer(dataset_path=str(data), result_path=str(out), reporter=SilentReporter(), **{**TINY, **kw})


def test_checkpoint_rebuilds_the_model_with_no_flags(cond_data, tmp_path):
    result = tiny_trainer(cond_data, tmp_path).train()
    ckpt = load_checkpoint(result.checkpoint)
    model = build_network(ckpt["network"]["name"], **ckpt["network"]["kwargs"])
    model.load_state_dict(ckpt["ema"])  # strict: every key and shape matches
    assert ckpt["diffusion"] == {"name": "linear", "noise_steps": 20, "prediction": "epsilon"}
    assert ckpt["versions"]["iddm"] and ckpt["config"]["data"]["image_size"] == 8
    x = torch.randn(1, 3, 8, 8)
    assert model(x, torch.tensor([3]), torch.tensor([1])).shape == x.shape


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "iddm", "model": Evil()}, fh)
    torch.save({"format": "iddm", "x": Evil()}, tmp_path / "evil2.pt")
    refusals = ((path, r"not a PyTorch checkpoint \(it is a pickle of protocol"),
                (tmp_path / "evil2.pt", "could run code"))
    for p, why in refusals:
        # refused in one line: torch's warning about a pickle protocol it did not write stays out of the output
        with pytest.raises(CheckpointError, match=why), \
                warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            load_checkpoint(p)
        assert not seen, [str(w.message) for w in seen]
    assert not marker.exists()


def test_truncated_foreign_and_missing_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"format": "iddm", "format_version": 1, "w": torch.ones(1000), **STRUCTURE})
    assert load_checkpoint(good)["w"].sum() == 1000
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.pt is a truncated or damaged checkpoint") as refused:
        load_checkpoint(cut)
    # torch's reason, without its paragraph of advice cut off mid-sentence
    assert str(refused.value).endswith("); another checkpoint of its run (ckpt_NNN.pt) may be intact")
    assert "miniz" not in str(refused.value)
    for name, content, what in (("text.pt", b"hello\n", "it is neither"), ("empty.pt", b"", "the file is empty")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{name} is not a PyTorch checkpoint \\(.*{what}"):
            load_checkpoint(tmp_path / name)
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an iddm checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_pretrain_with_another_class_count(cond_data, tmp_path):
    source = tiny_trainer(cond_data, tmp_path / "a").train().checkpoint
    ckpt = load_checkpoint(source)
    two = build_network("unet", in_channels=3, out_channels=3, base_channels=4, num_classes=2, act="gelu")
    notes = load_pretrained(two, ckpt, source)
    assert any("3 classes and this dataset 2" in n for n in notes)
    assert torch.equal(two.state_dict()["outc.weight"], ckpt["ema"]["outc.weight"])
    wider = build_network("unet", in_channels=3, out_channels=3, base_channels=8, num_classes=3, act="gelu")
    with pytest.raises(CheckpointError, match="does not fit this network"):
        load_pretrained(wider, ckpt, source)


def test_pretrain_through_the_cli(invoke, cond_data, tmp_path):
    source = tiny_trainer(make_dataset(tmp_path / "d2", ["x", "y"]), tmp_path / "a").train().checkpoint
    args = ["dm", "train", "--dataset-path", cond_data, "--result-path", tmp_path / "b", "--image-size", "8",
            "--base-channels", "4", "--noise-steps", "20", "--epochs", "1", "--batch-size", "4"]
    result = invoke(*args, "--pretrain", "--pretrain-path", source.parent)  # a run directory: its ckpt_last.pt
    assert result.exit_code == 0, result.output
    assert "2 classes and this dataset 3: the class embedding starts fresh" in " ".join(result.output.split())
    result = invoke(*args, "--base-channels", "8", "--pretrain", "--pretrain-path", source)
    assert result.exit_code == 2 and "does not fit this network" in result.output
    result = invoke(*args, "--prediction", "v", "--pretrain", "--pretrain-path", source)  # a noise predictor
    assert result.exit_code == 2 and "predicts 'epsilon' and this run 'v'" in result.output
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["df"]  # the refused runs wrote nothing


def test_api_accepts_iddm_namespaces_and_overrides(cond_data, tmp_path):
    args = argparse.Namespace(**{**TINY, "conditional": True, "sample": "ddim", "mode": "class", "epochs": 300})
    trainer = DMTrainer(args=args, dataset_path=str(cond_data), result_path=str(tmp_path), epochs=1,
                        reporter=SilentReporter())
    assert trainer.config.train.epochs == 1 and trainer.config.diffusion.sample == "ddim"
    result = trainer.train()
    assert result.steps == 5 and (result.run_dir / "ckpt_last.pt").exists()
    with pytest.raises(ConfigError, match="did you mean"):
        DMTrainer(batchsize=4)
    assert DMTrainer(profile="demo", epochs=2).config.data.dataset_path == "builtin:fashion-mnist"
