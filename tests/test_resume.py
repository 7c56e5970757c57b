"""Exact resume: interrupted runs continue bit-identically; Ctrl-C and SIGTERM save the state and exit 130/143."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from iddm_cli.api import DMTrainer
from iddm_cli.core.checkpoint import load_checkpoint
from iddm_cli.core.reporting import SilentReporter
from iddm_cli.errors import ConfigError, Interrupted
from iddm_cli.train.engine import train
from iddm_cli.train.resume import plan_resume
from tests.conftest import make_dataset

SETTINGS = {"image_size": 8, "base_channels": 4, "noise_steps": 20, "epochs": 3, "batch_size": 4, "augment": "iddm",
            "log_every": 1, "lr_func": "warmup_cosine", "warmup_epochs": 0.5, "lr": 2e-3}


class InterruptAt(SilentReporter):
    """Sends the process a real SIGINT at a chosen point, as a user pressing Ctrl-C would."""

    def __init__(self, epoch: int, step_in_epoch: int | None = None):
        self.epoch, self.step_in_epoch, self.current = epoch, step_in_epoch, -1

    def start_epoch(self, epoch, epochs, steps):
        self.current = epoch

    def step(self, done, loss):
        if self.step_in_epoch is not None and self.current == self.epoch and done == self.step_in_epoch:
            os.kill(os.getpid(), signal.SIGINT)

    def end_epoch(self, epoch, summary):
        if self.step_in_epoch is None and epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)


def weights(run_dir):
    ckpt = load_checkpoint(run_dir / "ckpt_last.pt")
    return ckpt, {**{f"model.{k}": v for k, v in ckpt["model"].items()},
                  **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}


@pytest.mark.parametrize("stop", [(0, None), (1, 2)], ids=["epoch-boundary", "mid-epoch"])
@pytest.mark.parametrize("workers", [0, 2], ids=["main-process", "2-workers"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, stop, workers):
    data = make_dataset(tmp_path / "d", ["a", "b", "c"], per_class=6)
    # status lines every 3 steps of 5 an epoch: the mid-epoch stop (step 7) falls inside a status line's window
    common = {**SETTINGS, "dataset_path": str(data), "result_path": str(tmp_path), "num_workers": workers,
              "log_every": 3}
    whole = DMTrainer(run_name="whole", reporter=SilentReporter(), **common).train()

    with pytest.raises(Interrupted) as err:
        DMTrainer(run_name="cut", reporter=InterruptAt(*stop), **common).train()
    assert err.value.exit_code == 130 and "resume with: iddm resume" in err.value.problems[0]
    cut = tmp_path / "cut"
    saved = load_checkpoint(cut / "ckpt_last.pt")["progress"]
    assert (saved["epoch"], saved["position"]) == ((1, 0) if stop[1] is None else (1, 2))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    plan, state, _ = plan_resume(cut, {})
    train(plan, SilentReporter(), state=state)
    a, wa = weights(whole.run_dir)
    b, wb = weights(cut)
    assert a["progress"]["step"] == b["progress"]["step"] == 15 and a["ema_updates"] == b["ema_updates"]
    mismatched = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not mismatched, mismatched[:3]
    # the records too: each status line's and epoch's mean loss, across the interruption
    losses = [{(r["event"], r["step"]): r["loss"] for r in map(json.loads, (run / "metrics.jsonl").open())
               if r["event"] in ("train", "epoch")} for run in (whole.run_dir, cut)]
    assert len(losses[0]) == 10 and losses[1] == pytest.approx(losses[0], rel=1e-12, abs=0)


def test_resume_refuses_changes_to_the_computation_and_extends_epochs(tmp_path, invoke):
    data = make_dataset(tmp_path / "d", ["a", "b"])
    run = DMTrainer(dataset_path=str(data), result_path=str(tmp_path), reporter=SilentReporter(),
                    **{**SETTINGS, "epochs": 1}).train().run_dir
    result = invoke("resume", run, "--lr", "0.1", "--base-channels", "8")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--lr: optim.lr cannot change when resuming" in text and "--base-channels" in text
    result = invoke("resume", run)
    assert result.exit_code == 2 and "is the state after 1 epochs, and the run has train.epochs = 1: nothing is left" \
        in " ".join(result.output.split())
    # IDDM's spelling, repeating unchanged flags, extending the run
    result = invoke("dm", "train", "--resume", "--run_name", "df", "--result_path", tmp_path, "--image_size", "8",
                    "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "ckpt_last.pt")["progress"]["epoch"] == 2
    # --set counts as the flags do there: a changed computation is refused, a longer run trains
    iddm_resume = ["dm", "train", "--resume", "--run_name", "df", "--result_path", tmp_path, "--image_size", "8"]
    result = invoke(*iddm_resume, "--set", "optim.lr=0.1")
    assert result.exit_code == 2 and "optim.lr cannot change when resuming" in " ".join(result.output.split())
    assert invoke(*iddm_resume, "--set", "train.epochs=3").exit_code == 0
    assert load_checkpoint(run / "ckpt_last.pt")["progress"]["epoch"] == 3
    # a profile's values only find the run: another lr in it is not a change asked for
    profile = tmp_path / "other.toml"
    profile.write_text("[optim]\nlr = 0.5\n")
    result = invoke(*iddm_resume, "--profile", profile, "--epochs", "4")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "ckpt_last.pt")["progress"]["epoch"] == 4
    with pytest.raises(ConfigError, match="not a run directory"):
        plan_resume(tmp_path / "d", {})


def test_start_epoch_names_the_state_after_n_epochs(tmp_path, invoke):
    data = make_dataset(tmp_path / "d", ["a", "b"])
    run = DMTrainer(dataset_path=str(data), result_path=str(tmp_path), reporter=SilentReporter(),
                    save_model_interval=True, save_model_interval_epochs=1, **{**SETTINGS, "epochs": 2}).train().run_dir
    result = invoke("resume", run, "--start-epoch", "1", "--force", "--dry-run")
    assert result.exit_code == 0 and "continuing from ckpt_001.pt: epoch 2, batch 0" in result.output
    (run / "ckpt_last.pt").write_bytes(b"broken")  # a damaged newest state falls back to the newest good one
    _, state, notes = plan_resume(run, {"epochs": 3})
    assert state["progress"]["epoch"] == 2 and "skipped ckpt_last.pt" in notes[0]


def test_resume_reads_the_run_s_own_dataset_and_says_what_changed_in_it(tmp_path, invoke, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    make_dataset(project / "data", ["a", "b"])
    make_dataset(elsewhere / "data", ["a", "b"], per_class=3)  # the same relative name, other images
    monkeypatch.chdir(project)
    run = DMTrainer(dataset_path="data", result_path="runs", reporter=SilentReporter(),
                    **{**SETTINGS, "epochs": 1}).train().run_dir
    assert f'dataset_path = "{project / "data"}"' in (project / run / "config.toml").read_text()
    monkeypatch.chdir(elsewhere)  # resumed from another folder: the run's own images, all 12 of them
    plan, _, _ = plan_resume(project / run, {"epochs": 2})
    assert plan.data.root == project / "data" and len(plan.data.samples) == 12
    assert not [n for n in plan.notes if "dataset changed" in n]
    monkeypatch.chdir(project)  # IDDM's way: the command line again, its relative paths and all
    result = invoke("dm", "train", "--resume", "--result-path", "runs", "--dataset-path", "data", "--epochs", "2",
                    "--dry-run")
    assert result.exit_code == 0, result.output

    make_dataset(project / "data" / "a", None, per_class=7)  # one more image of class a (0-6.png: 0-5 are there)
    make_dataset(project / "data" / "new", None)
    plan, _, _ = plan_resume(project / run, {"epochs": 2})
    notes = " ".join(plan.notes)
    assert "the dataset changed since ckpt_last.pt was saved (13 images, it had 12; a: 7, it had 6)" in notes
    assert f"new in {project / 'data'} is not a class of this run and left out" in notes
    shutil.rmtree(project / "data" / "b")
    result = invoke("resume", project / run, "--epochs", "2", "--dry-run")
    assert result.exit_code == 3 and f"class folder {project / 'data' / 'b'} is missing: the run trains on 2 " \
        "classes (a, b); restore it" in " ".join(result.output.split())
    # a run whose images moved: --dataset-path says where, and the run's classes must be there
    shutil.copytree(elsewhere / "data", tmp_path / "moved")
    result = invoke("resume", project / run, "--epochs", "2", "--dataset-path", tmp_path / "moved", "--dry-run")
    assert result.exit_code == 0 and f"changed on resume: data.dataset_path '{project / 'data'}' -> " \
        f"'{tmp_path / 'moved'}'" in " ".join(result.output.split())


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_save_state_and_exit_with_their_code(tmp_path, sig, code):
    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=20)
    cmd = [sys.executable, "-m", "iddm_cli", "dm", "train", "--dataset-path", str(data), "--result-path",
           str(tmp_path), "--image-size", "8", "--base-channels", "4", "--noise-steps", "20", "--epochs", "500",
           "--batch-size", "2", "--log-every", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    for line in proc.stderr:  # wait for training to be under way
        if "step 3/" in line or time.time() > deadline:
            break
    proc.send_signal(sig)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == code, rest
    assert "resume with: iddm resume" in " ".join(rest.split())
    progress = load_checkpoint(tmp_path / "df" / "ckpt_last.pt")["progress"]
    assert progress["step"] >= 3 and progress["position"] > 0


def test_a_checkpoint_saved_under_ddp_loads_on_one_device(tmp_path, invoke):
    """DDP prefixes every key with 'module.'; sampling and resuming strip it."""
    data = make_dataset(tmp_path / "d", ["a", "b"])
    run = DMTrainer(dataset_path=str(data), result_path=str(tmp_path), reporter=SilentReporter(),
                    **{**SETTINGS, "epochs": 1}).train().run_dir
    ckpt = load_checkpoint(run / "ckpt_last.pt")
    for key in ("model", "ema"):
        ckpt[key] = {f"module.{k}": v for k, v in ckpt[key].items()}
    torch.save(ckpt, run / "ckpt_last.pt")
    result = invoke("sample", run, "--sampler", "ddim", "--steps", "2", "--num", "1", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    plan, state, _ = plan_resume(run, {"epochs": 2})
    assert train(plan, SilentReporter(), state=state).steps == 6


def test_a_max_time_run_fixes_its_length_once_and_resumes_to_exactly_it(tmp_path, invoke):
    # constant learning rate: a --max-time run of T steps must then be bit-identical to a --kimg run of T steps,
    # so the speed measurement changes nothing, and the resumed run keeps the T it measured before
    data = make_dataset(tmp_path / "d", ["a", "b", "c"], per_class=6)  # 18 images, batch 4: 5 steps per epoch
    common = {**SETTINGS, "dataset_path": str(data), "result_path": str(tmp_path), "lr_func": "linear"}
    # the speed is timed step to step inside epochs: 3 + 10 timed steps need the 17th step (4 per epoch of 5)
    with pytest.raises(Interrupted):  # at step 19, after the length was fixed at step 17
        DMTrainer(run_name="timed", max_time="12s", reporter=InterruptAt(3, 4), **common).train()
    cut = load_checkpoint(tmp_path / "timed" / "ckpt_last.pt")["progress"]
    total = cut["total_steps"]
    assert cut["step"] == 19 and total > 19
    other = invoke("resume", tmp_path / "timed", "--nproc", "2")  # its steps are steps of a 1-process batch
    assert other.exit_code == 2 and "so it continues on 1 (--devices 1)" in " ".join(other.output.split())
    other = invoke("resume", tmp_path / "timed", "--epochs", "9")  # not a length of this run: refused, not ignored
    assert other.exit_code == 2 and "train.epochs = 9: " in other.output and "a --max-time 12s run, whose length " \
        "the epoch count cannot change" in " ".join(other.output.split())
    (tmp_path / "epochs.toml").write_text("[train]\nepochs = 5\n")  # a profile's epochs only find the run: no error
    other = invoke("dm", "train", "--resume", "--run_name", "timed", "--result_path", tmp_path, "--profile",
                   tmp_path / "epochs.toml", "--dry-run")
    assert other.exit_code == 0, other.output
    log = (tmp_path / "timed" / "train.log").read_text()
    assert f"so the run takes {total} steps" in log

    plan, state, _ = plan_resume(tmp_path / "timed", {})
    train(plan, SilentReporter(), state=state)
    timed, wt = weights(tmp_path / "timed")
    assert timed["progress"]["step"] == timed["progress"]["total_steps"] == total
    assert (tmp_path / "timed" / "train.log").read_text().count("so the run takes") == 1  # not measured again

    counted = DMTrainer(run_name="counted", kimg=total * 4 / 1000, reporter=SilentReporter(), **common).train()
    kimg, wk = weights(counted.run_dir)
    assert kimg["progress"]["step"] == kimg["progress"]["total_steps"] == total
    assert kimg["progress"]["epoch"] == -(-total // 5)  # the last, partial epoch counts as done
    assert not [k for k in wt if not torch.equal(wt[k], wk[k])]

    result = invoke("resume", tmp_path / "timed")
    assert result.exit_code == 2 and f"--max-time 12s: {total} steps, all done" in " ".join(result.output.split())
