"""Real (tiny) training runs through the CLI and the engine."""

from __future__ import annotations

import json

import pytest
import torch

from iddm_cli import choices
from iddm_cli.config import resolve
from iddm_cli.core.checkpoint import load_checkpoint
from iddm_cli.core.reporting import SilentReporter
from iddm_cli.train.engine import plan_training, train
from tests.conftest import TINY, make_dataset


def run_engine(data, out, **flags):
    base = {"dataset_path": str(data), "result_path": str(out), "image_size": 8, "base_channels": 4,
            "noise_steps": 20, "epochs": 1, "batch_size": 4, "augment": "resize", "log_every": 1}
    config = resolve(flags={**base, **flags}).config
    return train(plan_training(config), SilentReporter())


def test_conditional_run_directory(invoke, cond_data, tmp_path):
    out = tmp_path / "results"
    result = invoke("dm", "train", "--dataset-path", cond_data, "--result-path", out, "--run-name", "exp",
                    "--vis", "--num-vis", "2", "--vis-steps", "3", "--epochs", "2", "--save-model-interval",
                    "--save-model-interval-epochs", "1", *TINY[:6], "--batch-size", "4", "--augment", "iddm",
                    "--log-every", "1")
    assert result.exit_code == 0, result.output
    run = out / "exp"
    names = {p.name for p in run.iterdir()}
    assert {"config.toml", "cli.json", "train.log", "metrics.jsonl", "ckpt_last.pt", "ckpt_001.pt",
            "ckpt_002.pt", "vis"} <= names
    assert sorted(p.name for p in (run / "vis").iterdir()) == ["ema_001.png", "ema_002.png"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "train"]
    assert {"step", "epoch", "loss", "lr", "grad_norm", "images_per_s"} <= set(steps[0])
    assert [r["step"] for r in steps] == list(range(1, 11))  # 18 images / batch 4 = 5 steps x 2 epochs
    ckpt = load_checkpoint(run / "ckpt_last.pt")
    assert ckpt["data"]["class_names"] == ["cat", "dog", "owl"]
    assert ckpt["data"]["class_counts"] == {"cat": 6, "dog": 6, "owl": 6}
    assert ckpt["data"]["channels"] == 3 and ckpt["data"]["image_size"] == [8, 8]
    assert ckpt["progress"] == {"epoch": 2, "step": 10, "total_steps": 10, "skipped_steps": 0, "skipped_files": [],
                                "position": 0,
                                "world_size": 1}
    assert json.loads((run / "classes.json").read_text())["class_counts"] == {"cat": 6, "dog": 6, "owl": 6}
    assert ckpt["ema_updates"] == 10 and ckpt["ema"] and ckpt["optimizer"]["state"]
    assert "parameters" in result.output


def test_grid_has_one_row_per_class(cond_data, tmp_path):
    from PIL import Image

    result = run_engine(cond_data, tmp_path, vis=True, num_vis=2, vis_steps=2)
    grid = Image.open(result.previews[0])
    one = run_engine(make_dataset(tmp_path / "two", ["a", "b"]), tmp_path, vis=True, num_vis=2, vis_steps=2)
    # three rows vs two rows of equally sized cells
    assert grid.height > Image.open(one.previews[0]).height


def test_unconditional_gray_keeps_ema(flat_gray, tmp_path):
    result = run_engine(flat_gray, tmp_path, vis=True, num_vis=4, vis_steps=2, image_format="jpg")
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["data"]["conditional"] is False and ckpt["data"]["channels"] == 1
    assert ckpt["network"]["kwargs"]["in_channels"] == 1 and ckpt["network"]["kwargs"]["num_classes"] == 0
    assert ckpt["ema"] and ckpt["ema_updates"] == 2
    assert result.previews[0].suffix == ".jpg"


def test_every_image_format_and_mixed_modes(tmp_path):
    from PIL import Image

    data = tmp_path / "formats"
    for i, ext in enumerate(["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"]):
        make_dataset(data, ["a", "b"], per_class=1, ext=ext, mode="RGB" if i % 2 else "L")
    Image.new("RGBA", (12, 12), (255, 0, 0, 0)).save(data / "a" / "transparent.png")
    Image.new("P", (12, 12)).save(data / "b" / "palette.gif")  # not a training format: ignored
    result = run_engine(data, tmp_path)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["data"]["class_counts"] == {"a": 8, "b": 7} and ckpt["data"]["channels"] == 3


def test_single_subfolder_is_unconditional(tmp_path):
    data = make_dataset(tmp_path / "landscape", ["images"])
    result = run_engine(data, tmp_path)
    assert load_checkpoint(result.checkpoint)["data"]["conditional"] is False


def test_new_run_never_overwrites(cond_data, tmp_path):
    first = run_engine(cond_data, tmp_path, run_name="same")
    before = first.checkpoint.read_bytes()
    second = run_engine(cond_data, tmp_path, run_name="same")
    assert second.run_dir.name == "same-2"
    assert first.checkpoint.read_bytes() == before


def test_same_seed_same_weights(cond_data, tmp_path):
    a = run_engine(cond_data, tmp_path / "a")
    b = run_engine(cond_data, tmp_path / "b")
    wa, wb = load_checkpoint(a.checkpoint)["model"], load_checkpoint(b.checkpoint)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = run_engine(cond_data, tmp_path / "c", seed=1)
    wc = load_checkpoint(c.checkpoint)["model"]
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("key,values", [
    ("network", choices.NETWORKS), ("act", choices.ACTIVATIONS), ("optim", choices.OPTIMIZERS),
    ("loss", choices.LOSSES), ("lr_func", choices.LR_FUNCS), ("noise_schedule", choices.NOISE_SCHEDULES),
    ("prediction", choices.PREDICTIONS),
])
def test_every_choice_trains(cond_data, tmp_path, key, values):
    for value in values:
        flags = {key: value, "run_name": value}
        if key == "network" and value == "cspdarkunet":
            flags.update(image_size=16, base_channels=8)
        result = run_engine(cond_data, tmp_path, **flags)
        ckpt = load_checkpoint(result.checkpoint)
        assert result.steps == 5 and result.skipped_steps == 0
        assert ckpt["config"][{"network": "model", "act": "model", "noise_schedule": "diffusion",
                               "prediction": "diffusion"}.get(key, "optim")][key] == value
        assert torch.isfinite(torch.tensor(result.final_loss))


def test_training_reduces_the_loss(tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=16)
    result = run_engine(data, tmp_path, epochs=6, lr=3e-3, noise_schedule="cosine")
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["event"] == "epoch"]
    assert losses[-1] < 0.7 * losses[0], losses


def test_amp_flag_trains_on_cpu(cond_data, tmp_path):
    result = run_engine(cond_data, tmp_path, amp=True)
    assert result.steps == 5 and torch.isfinite(torch.tensor(result.final_loss))
    for p in load_checkpoint(result.checkpoint)["model"].values():
        assert p.dtype == torch.float32  # the weights stay fp32


def test_lr_is_set_per_step_and_warmup_starts_above_zero(cond_data, tmp_path):
    result = run_engine(cond_data, tmp_path, lr_func="warmup_cosine", warmup_epochs=1.0, epochs=2, lr=1e-3)
    lrs = [json.loads(x)["lr"] for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()
           if '"train"' in x]
    assert lrs[0] == pytest.approx(1e-3 / 5)  # step 1 of a 5-step warm-up
    assert lrs[4] == pytest.approx(1e-3) and lrs[5] == pytest.approx(1e-3)  # peak, then cosine from 1.0
    # decays every step, not once per epoch
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:], strict=False)) and lrs[-1] > 0


def test_tensorboard_events_when_installed(cond_data, tmp_path):
    pytest.importorskip("tensorboard")
    result = run_engine(cond_data, tmp_path)
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_explain_shows_sources(invoke, tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text("[optim]\nlr = 0.001\n")
    from typer.testing import CliRunner

    from iddm_cli.cli.app import app

    result = CliRunner().invoke(app, ["dm", "train", "--profile", str(profile), "--set", "seed=3", "--epochs", "2",
                                      "--explain", "--print-config"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") >= 3}
    assert str(profile) in lines["optim.lr"] and "--set" in lines["train.seed"]
    assert "--epochs" in lines["train.epochs"] and "default" in lines["data.batch_size"]


@pytest.mark.parametrize(("capability", "expected"), [
    ((7, 0), (torch.float16, True)), ((7, 5), (torch.float16, True)),
    ((8, 0), (torch.bfloat16, False)), ((9, 0), (torch.bfloat16, False)),
])
def test_amp_on_cuda_is_chosen_by_compute_capability(monkeypatch, capability, expected):
    # V100 (7.0) and T4 (7.5) report is_bf16_supported() True (emulated, slower than fp32): they must get fp16
    from iddm_cli.train.plan import select_amp

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    dtype, scaler, note = select_amp(torch.device("cuda", 0), True)
    assert (dtype, scaler) == expected
    assert (note is not None) == scaler and (note is None or f"{capability[0]}.{capability[1]}" in note)
    assert select_amp(torch.device("cuda", 0), False) == (None, False, None)


def test_dry_run_counts_the_networks_flops_on_a_meta_copy(cond_data, tmp_path):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    for network in ("unet", "adm-xs"):
        flags = {"dataset_path": str(cond_data), "result_path": str(tmp_path), "image_size": 16, "base_channels": 8,
                 "network": network}
        plan = plan_training(resolve(flags=flags).config)
        x, t, y = torch.randn(1, *plan.sample_shape), torch.tensor([5]), torch.tensor([1])
        # the real network on real numbers; attention in plain matrix products (torch has no FLOP formula for the
        # CPU's fused attention kernel, so it would count nothing for it)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
            plan.model(x, t, y)
        assert plan.forward_gflop() == pytest.approx(counter.get_total_flops() / 1e9) and counter.get_total_flops() > 0
        assert any("GFLOP per sample" in line for line in plan.describe(cost=True))
        assert not any("GFLOP" in line for line in plan.describe())
    assert not any(p.is_meta for p in plan.model.parameters())  # the plan's own network is untouched
    # adm-xs ignored the base_channels of 8 above: the plan says so (and not for unet, which uses it)
    notes = {network: " ".join(plan_training(resolve(flags={**flags, "network": network}).config).notes)
             for network in ("unet", "adm-xs")}
    assert "plays no part" in notes["adm-xs"] and "plays no part" not in notes["unet"]


def test_the_plan_names_settings_that_play_no_part(tmp_path):
    flat = make_dataset(tmp_path / "flat", None)
    flags = {"dataset_path": str(flat), "result_path": str(tmp_path), "image_size": 8, "base_channels": 4,
             "num_classes": 3, "cfg_scale": 2.0, "keep_last": 2, "warmup_epochs": 2.0, "ema_rampup": 0.2,
             "start_model_interval": 5, "num_vis": 3, "eval_steps": 7, "dist_timeout": 5}
    notes = plan_training(resolve(flags=flags).config).notes
    assert [n for n in notes if "plays no part" in n] == [
        "note: data.num_classes = 3 plays no part: the model is unconditional",
        "note: diffusion.cfg_scale = 2.0 plays no part: the model is unconditional",
        "note: optim.warmup_epochs = 2.0 plays no part: optim.lr_func = 'linear' has no warm-up (warmup_cosine has)",
        "note: optim.ema_rampup = 0.2 plays no part: optim.ema_halflife_kimg is 0, so the EMA follows optim.ema_decay",
        "note: save.start_model_interval = 5 plays no part: save.save_model_interval is off, so no ckpt_NNN.pt are "
        "kept",
        "note: save.keep_last = 2 plays no part: save.save_model_interval is off, so no ckpt_NNN.pt are kept",
        "note: vis.num_vis = 3 plays no part: vis.vis is off, so no preview grids are drawn",
        "note: eval.eval_steps = 7 plays no part: eval.eval_interval is 0, so training runs no evaluation",
        "note: device.dist_timeout = 5 plays no part: the run has one process, so nothing waits for another"]
    assert "note: every image is smaller than 8 px" not in " ".join(notes)  # 12 px images at 8 px
    big = plan_training(resolve(flags={**flags, "image_size": 16}).config).notes
    assert "note: every image is smaller than 16 px (shorter side: median 12 px, largest 12 px)" in " ".join(big)
    used = {**flags, "dataset_path": str(make_dataset(tmp_path / "cond", ["a", "b", "c"])),
            "lr_func": "warmup_cosine", "save_model_interval": True, "ema_halflife_kimg": 1.0, "vis": True,
            "eval_interval": 1, "devices": 2}
    assert not [n for n in plan_training(resolve(flags=used).config).notes if "plays no part" in n]


def test_kimg_counts_whole_images_in_global_batches(cond_data, tmp_path):
    flags = {"dataset_path": str(cond_data), "result_path": str(tmp_path), "image_size": 8, "base_channels": 4}
    for kimg, batch, steps in [(128.448, 64, 2007), (0.001, 4, 1), (0.0041, 4, 1), (0.005, 4, 2), (1, 3, 334)]:
        plan = plan_training(resolve(flags={**flags, "kimg": kimg, "batch_size": batch}).config)
        assert plan.total_steps == steps, (kimg, batch)  # 128.448 x 1000 / 64 is 2007 exactly, not 2008


def test_a_best_fid_record_continues_only_with_the_same_metric():
    from iddm_cli.train.tasks import same_record

    metric = ("fid1k", "data/train", "ddim-20")
    assert same_record(metric, metric) and not same_record(None, metric)
    assert not same_record(("fid1k", "data/train", "ddim-50"), metric)  # another step count: a new record
    assert not same_record(("fid2k", "data/train", "ddim-20"), metric)
    assert same_record(("fid1k", "data/train"), metric)  # stored before the steps were part of it: continued
    assert not same_record(("fid1k", "data/val"), metric)


@pytest.mark.parametrize("prediction", choices.PREDICTIONS)
def test_min_snr_weighting_trains_and_the_prediction_is_recorded(cond_data, tmp_path, prediction):
    result = run_engine(cond_data, tmp_path, prediction=prediction, min_snr_gamma=5.0, run_name=prediction)
    ckpt = load_checkpoint(result.checkpoint)
    assert result.steps == 5 and result.skipped_steps == 0 and torch.isfinite(torch.tensor(result.final_loss))
    assert ckpt["diffusion"]["prediction"] == prediction and ckpt["config"]["diffusion"]["min_snr_gamma"] == 5.0
    # an iddm that reads only noise-predicting checkpoints (format 1) refuses the others instead of misreading them
    assert ckpt["format_version"] == (1 if prediction == "epsilon" else 2)
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    unweighted = run_engine(cond_data, tmp_path, prediction=prediction, run_name=f"{prediction}-plain")
    plain = [json.loads(x) for x in (unweighted.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == plain[0]["step"] == 1
    assert records[0]["loss"] != pytest.approx(plain[0]["loss"], rel=1e-3)  # the same batch, weighted otherwise


def test_ema_half_life_is_counted_in_images_whatever_the_batch():
    from iddm_cli.train.ema import EMA

    def average_after(batch: int, steps: int, rampup: float) -> float:
        zero, one = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(zero.weight)
        torch.nn.init.ones_(one.weight)
        ema = EMA(zero, decay=0.999, halflife_kimg=0.1, rampup=rampup)
        ema.images = 0 if rampup else 1  # without the ramp-up the average starts from the zero weights
        for _ in range(steps):
            ema.update(one, batch, torch.tensor(True))
        return ema.model.weight.item()

    # 200 images = two half-lives of 100: the zero start keeps a quarter of its weight
    assert average_after(4, 50, rampup=0.0) == pytest.approx(0.75, abs=1e-6)
    assert average_after(20, 10, rampup=0.0) == pytest.approx(0.75, abs=1e-6)
    assert average_after(4, 1, rampup=0.05) == 1.0  # with the ramp-up the first update copies the weights


def test_the_first_ema_update_with_the_ramp_up_copies_the_weights_exactly_and_a_skipped_one_keeps_them():
    from iddm_cli.train.ema import EMA

    torch.manual_seed(0)
    start, trained = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
    ema = EMA(start, decay=0.999, halflife_kimg=0.1, rampup=0.05)
    ema.update(trained, 4, torch.tensor(True))
    assert all(torch.equal(a, b) for a, b in zip(ema.model.parameters(), trained.parameters(), strict=True))
    ema.update(start, 4, torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(ema.model.parameters(), trained.parameters(), strict=True))
    assert (ema.updates, ema.images) == (2, 8)  # a skipped step counts


def test_ema_half_life_runs_resume_exactly(cond_data, tmp_path):
    from iddm_cli.train.resume import plan_resume

    common = {"ema_halflife_kimg": 0.01, "ema_rampup": 0.5, "epochs": 2}
    whole = run_engine(cond_data, tmp_path, run_name="whole", **common)
    half = run_engine(cond_data, tmp_path, run_name="half", **{**common, "epochs": 1})
    plan, state, _ = plan_resume(half.run_dir, {"epochs": 2})
    train(plan, SilentReporter(), state=state)
    a, b = load_checkpoint(whole.checkpoint), load_checkpoint(half.run_dir / "ckpt_last.pt")
    # 18 images an epoch (4 batches of 4, one of 2): the images trained on, which the resumed run read back (its
    # fallback for older checkpoints, updates x batch, would have continued from 20 and said 38)
    assert a["ema_images"] == b["ema_images"] == 36
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert not all(torch.equal(a["ema"][k], a["model"][k]) for k in a["ema"])  # an average, not a copy


def test_compile_without_a_compiler_is_a_config_error(cond_data, tmp_path, monkeypatch):
    import shutil

    from iddm_cli.errors import ConfigError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        run_engine(cond_data, tmp_path, compile=True, device="cpu")
    assert not (tmp_path / "df").exists()  # refused while planning: nothing written


@pytest.mark.parametrize("network", ["unet", "adm-xs"])
def test_channels_last_trains_in_that_layout_to_the_same_weights(cond_data, tmp_path, network):
    plain = run_engine(cond_data, tmp_path, run_name=f"plain-{network}", network=network, epochs=2)
    nhwc = run_engine(cond_data, tmp_path, run_name=f"nhwc-{network}", network=network, epochs=2,
                      channels_last=True)
    a, b = load_checkpoint(plain.checkpoint), load_checkpoint(nhwc.checkpoint)
    convs = [k for k, v in b["model"].items() if v.dim() == 4 and v.shape[-1] > 1]
    assert convs and all(b["model"][k].is_contiguous(memory_format=torch.channels_last) for k in convs)
    assert not all(a["model"][k].is_contiguous(memory_format=torch.channels_last) for k in convs)
    for part in ("model", "ema"):
        for k in a[part]:
            torch.testing.assert_close(b[part][k], a[part][k], rtol=1e-3, atol=1e-4)
