"""IDDM 1.x checkpoints: converted networks compute IDDM's outputs, every tensor is accounted for, and iddm sample,
--pretrain-path and iddm convert take them. The fixtures were written by IDDM 1.3.1's own code (see their README)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from iddm_cli.core import iddm_import
from iddm_cli.core.checkpoint import load_checkpoint
from iddm_cli.core.iddm_import import convert, load_any
from iddm_cli.errors import CheckpointError
from iddm_cli.nets import build_network, build_stored, flavor_of
from tests.conftest import make_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "iddm_1.3"
NETS = ["unet", "cspdarkunet"]


def _iddm(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}_ckpt_last.pt", weights_only=True)


def _model(ckpt: dict, weights: str = "model") -> torch.nn.Module:
    model = build_stored(ckpt["network"])
    model.load_state_dict(ckpt[weights])  # strict: every tensor of ours is filled
    return model.eval()


@pytest.mark.parametrize("name", NETS)
def test_converted_network_computes_what_iddm_computes(name):
    ckpt, note = load_any(FIXTURES / f"{name}_ckpt_last.pt")
    assert note and "converted IDDM checkpoint" in note
    ref = torch.load(FIXTURES / f"{name}_reference.pt", weights_only=True)
    for weights in ("model", "ema"):
        model = _model(ckpt, weights)
        with torch.no_grad():
            cond = model(ref["x"], ref["t"], ref["y"])  # (4, 3, 16, 16)
            uncond = model(ref["x"], ref["t"], None)  # our null class: a zero row, as IDDM adds nothing
        assert (cond - ref["out_cond"]).abs().max() < 1e-5
        assert (uncond - ref["out_uncond"]).abs().max() < 1e-5
    assert (ref["out_cond"] - ref["out_uncond"]).abs().max() > 1e-2  # the labels matter, so the test can tell


@pytest.mark.parametrize("name", NETS)
def test_every_iddm_tensor_is_mapped_once_and_fills_every_one_of_ours(name):
    data = _iddm(name)
    report = convert(data, "x.pt")
    iddm_keys = [k for k, _, _ in report.mapped] + [k for k, _ in report.dropped]
    assert sorted(iddm_keys) == sorted(data["model"])  # each exactly once, none left over
    ours = [o for _, o, _ in report.mapped]
    own = build_stored(report.checkpoint["network"]).state_dict()
    assert sorted(ours) == sorted(own)  # each filled exactly once
    if name == "cspdarkunet":  # only the CSP layers IDDM's up blocks build but never call
        assert report.dropped and all(".csp." in k and k.startswith("up") for k, _ in report.dropped)
    else:
        assert not report.dropped
    null = report.checkpoint["model"]["label_emb.weight"]
    assert null.shape == (4, 256) and not null[3].any() and torch.equal(null[:3], data["model"][
        "condition_adapter.label_emb.weight"])


def test_a_key_the_map_misses_or_a_module_prefix(monkeypatch):
    data = _iddm("unet")
    data["model"] = {f"module.{k}": v for k, v in data["model"].items()}  # saved from DDP
    assert len(convert(data, "x.pt").mapped) == len(data["model"])
    monkeypatch.setitem(iddm_import.KEY_MAPS, "unet",
                        lambda k: None if k == "sa2.ln.bias" else iddm_import.unet_key(k))
    with pytest.raises(CheckpointError, match="sa2.ln.bias has no counterpart"):
        convert(data, "x.pt")


def test_unreproducible_iddm_settings_are_refused():
    data = _iddm("unet")
    with pytest.raises(CheckpointError, match="'lrelu' cannot be reproduced"):
        convert({**data, "act": "lrelu"}, "x.pt")
    with pytest.raises(CheckpointError, match="'unetv2' has no counterpart"):
        convert({**data, "network": "unetv2"}, "x.pt")


def test_networks_stored_without_time_embedding_rebuild_as_before():
    kwargs = {"in_channels": 1, "out_channels": 1, "base_channels": 4, "num_classes": 2, "act": "gelu"}
    old = build_stored({"name": "unet", "kwargs": kwargs})  # an iddm 0.1 checkpoint's network
    new = build_network("unet", **kwargs, time_embedding="iddm")
    assert old.time_embedding == "legacy" and isinstance(old.down1.emb.proj[0], torch.nn.GELU)
    assert new.time_embedding == "iddm" and isinstance(new.down1.emb.proj[0], torch.nn.SiLU)
    new.load_state_dict(old.state_dict())  # same parameters, different math
    # resuming or fine-tuning such a checkpoint keeps its way (plan_training's network=, Plan.load_pretrained)
    assert flavor_of({"name": "unet", "kwargs": kwargs}, "unet") == {"time_embedding": "legacy"}
    assert flavor_of({"name": "unet", "kwargs": kwargs}, "cspdarkunet") == {}
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 999])
    with torch.no_grad():
        assert (old(x, t) - new(x, t)).abs().max() > 1e-4


def test_iddm_sample_reads_an_iddm_checkpoint(invoke, tmp_path):
    out = tmp_path / "imgs"
    result = invoke("sample", FIXTURES / "unet_ckpt_last.pt", "--num", "1", "--steps", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert "converted IDDM checkpoint" in result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["cat_0000.png", "dog_0000.png", "fox_0000.png", "grid.png"]


def test_pretrain_from_an_iddm_checkpoint(invoke, tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b", "c"], size=16)
    result = invoke("dm", "train", "--dataset-path", data, "--result-path", tmp_path / "r", "--image-size", "16",
                    "--base-channels", "8", "--network", "unet", "--act", "gelu", "--noise-steps", "20",
                    "--epochs", "1", "--batch-size", "6", "--augment", "resize", "--pretrain", "--pretrain-path",
                    FIXTURES / "unet_ckpt_last.pt")
    assert result.exit_code == 0, result.output
    assert "converted IDDM checkpoint" in " ".join(result.output.split())
    ckpt = load_checkpoint(next((tmp_path / "r").rglob("ckpt_last.pt")))
    assert ckpt["network"]["kwargs"]["time_embedding"] == "iddm"
    start = _iddm("unet")["ema_model"]["outc.weight"]
    assert (ckpt["model"]["outc.weight"] - start).abs().max() < 0.01  # fine-tuned from IDDM's weights, not fresh


def test_resuming_an_iddm_run_directory_says_how_to_go_on(invoke, tmp_path):
    run = tmp_path / "iddm" / "df"
    run.mkdir(parents=True)
    (run / "ckpt_last.pt").write_bytes((FIXTURES / "unet_ckpt_last.pt").read_bytes())
    for args in (["resume", run], ["dm", "train", "--resume", "--result-path", run.parent, "--run-name", "df"]):
        result = invoke(*args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and f"{run} is an IDDM run" in lines[0], result.output
        assert f"--pretrain-path {run / 'ckpt_last.pt'}" in lines[0] and "iddm convert" in lines[0]
    assert sorted(p.name for p in run.iterdir()) == ["ckpt_last.pt"]
    torch.save({**_iddm("unet"), "latent": True}, run / "ckpt_last.pt")  # no command here takes this one
    result = invoke("resume", run)
    assert result.exit_code == 2 and "cannot be resumed, and its weights do not convert" in result.output
    assert "latent-diffusion checkpoint" in result.output and "--pretrain-path" not in result.output


def test_iddm_convert_writes_a_checkpoint(invoke, tmp_path):
    out = tmp_path / "converted.pt"
    src = FIXTURES / "cspdarkunet_ckpt_last.pt"
    result = invoke("convert", src, out, "--noise-schedule", "cosine", "--noise-steps", "500")
    assert result.exit_code == 0, result.output
    assert "226 tensors mapped, 108 unused by IDDM dropped" in " ".join(result.output.split())
    ckpt = load_checkpoint(out)
    assert ckpt["diffusion"] == {"name": "cosine", "noise_steps": 500, "prediction": "epsilon"}
    assert ckpt["network"]["kwargs"]["up_block"] == "iddm" and ckpt["data"]["class_names"] == ["cat", "dog", "fox"]
    assert ckpt["config"]["model"]["base_channels"] == 8 and ckpt["data"]["image_size"] == [16, 16]
    result = invoke("convert", src, out)
    assert result.exit_code == 2 and "already exists" in result.output
    result = invoke("convert", out, tmp_path / "again.pt")
    assert result.exit_code == 2 and "already an iddm checkpoint" in result.output
    result = invoke("convert", src, tmp_path / "sqrt.pt", "--noise-schedule", "sqrt")  # IDDM's sqrt is not iddm's
    assert result.exit_code == 2 and "cannot be converted faithfully" in " ".join(result.output.split())
    assert not (tmp_path / "sqrt.pt").exists()
    result = invoke("convert", src, tmp_path / "t500.pt", "--noise-steps", "500")  # linear: T = 1000 only
    assert result.exit_code == 2 and "agree at T = 1000 only" in " ".join(result.output.split())
    run = tmp_path / "iddm_run"  # an IDDM run folder: its ckpt_last.pt, as iddm sample takes it
    run.mkdir()
    shutil.copy(src, run / "ckpt_last.pt")
    result = invoke("convert", run, tmp_path / "from_run.pt")
    assert result.exit_code == 0 and "226 tensors mapped" in result.output, result.output
    from_run = load_checkpoint(tmp_path / "from_run.pt")["model"]
    assert all(torch.equal(from_run[k], v) for k, v in load_checkpoint(out)["model"].items())


@pytest.mark.parametrize("name", NETS)
def test_an_unconditional_iddm_checkpoint_converts(name):
    """IDDM 1.3 saves an unconditional run with mode None, no class names and no class embedding; its network then
    computes what the conditional fixture computes without labels."""
    data = _iddm(name)
    data.update(mode=None, conditional=False, classes_name=None, num_classes=1, ema_model=None)
    data["model"] = {k: v for k, v in data["model"].items() if "label_emb" not in k}
    report = convert(data, "uncond.pt")
    ckpt = report.checkpoint
    assert ckpt["data"]["conditional"] is False and ckpt["network"]["kwargs"]["num_classes"] == 0
    ref = torch.load(FIXTURES / f"{name}_reference.pt", weights_only=True)
    with torch.no_grad():
        out = _model(ckpt)(ref["x"], ref["t"], None)
    assert (out - ref["out_uncond"]).abs().max() < 1e-5


def test_latent_malformed_and_unsafe_iddm_checkpoints(invoke, tmp_path):
    latent = _iddm("unet")  # IDDM keeps no 'latent' key: a 4-channel network is a latent model
    latent["model"] = {**latent["model"], "outc.weight": torch.zeros(4, *latent["model"]["outc.weight"].shape[1:])}
    with pytest.raises(CheckpointError, match="4 output channels is an IDDM latent-diffusion model"):
        convert(latent, "latent.pt")
    for broken in ({"model": [1, 2]}, {"image_size": None}, {"num_classes": "x"}):
        data = {**_iddm("unet"), **broken}
        torch.save(data, tmp_path / "broken.pt")
        result = invoke("sample", tmp_path / "broken.pt", "--steps", "2", "--out", tmp_path / "o")
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {tmp_path / 'broken.pt'}") and len(result.output.splitlines()) == 1
        assert "Traceback" not in result.output and not (tmp_path / "o").exists()
    unsafe = _iddm("unet")
    unsafe["classes_name"] = ["cat", "../dog", "fox"]  # class names become file names: never a path
    assert convert(unsafe, "x.pt").checkpoint["data"]["class_names"] == ["cat", "1", "fox"]


def test_a_run_saved_before_the_iddm_time_embedding_resumes_and_fine_tunes_as_it_was(invoke, tmp_path):
    from iddm_cli.api import DMTrainer
    from iddm_cli.core.checkpoint import save_checkpoint
    from iddm_cli.core.reporting import SilentReporter
    from iddm_cli.train.resume import plan_resume

    data = make_dataset(tmp_path / "d", ["a", "b"])
    run = DMTrainer(dataset_path=str(data), result_path=str(tmp_path), run_name="old", image_size=8,
                    base_channels=4, noise_steps=20, epochs=1, batch_size=4, reporter=SilentReporter()).train().run_dir
    state = load_checkpoint(run / "ckpt_last.pt")
    del state["network"]["kwargs"]["time_embedding"]  # as iddm 0.1 wrote it
    save_checkpoint(run / "ckpt_last.pt", state)
    plan, _, _ = plan_resume(run, {"epochs": 2})
    assert plan.network["kwargs"]["time_embedding"] == "legacy" and plan.model.time_embedding == "legacy"
    result = invoke("dm", "train", "--dataset-path", data, "--result-path", tmp_path, "--run-name", "tuned",
                    "--image-size", "8", "--base-channels", "4", "--noise-steps", "20", "--epochs", "1",
                    "--pretrain", "--pretrain-path", run / "ckpt_last.pt")
    assert result.exit_code == 0, result.output
    assert "keeps the pretrained checkpoint's {'time_embedding': 'legacy'}" in " ".join(result.output.split())
    assert load_checkpoint(tmp_path / "tuned" / "ckpt_last.pt")["network"]["kwargs"]["time_embedding"] == "legacy"
