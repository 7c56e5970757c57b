"""Interval-checkpoint rotation, the non-finite guard, and a crash in the middle of a checkpoint write."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from iddm_cli.config import resolve
from iddm_cli.core import checkpoint as ckpt_module
from iddm_cli.core.checkpoint import load_checkpoint, save_checkpoint
from iddm_cli.errors import StorageError
from iddm_cli.train import objectives
from iddm_cli.train.engine import open_session, plan_training
from tests.conftest import STRUCTURE, TINY


def test_keep_last_rotates_interval_checkpoints(invoke, cond_data, tmp_path):
    result = invoke("dm", "train", "--dataset-path", cond_data, "--result-path", tmp_path, *TINY, "--epochs", "4",
                    "--save-model-interval", "--save-model-interval-epochs", "1", "--keep-last", "2")
    assert result.exit_code == 0, result.output
    run = tmp_path / "df"
    assert sorted(p.name for p in run.glob("ckpt_*.pt")) == ["ckpt_003.pt", "ckpt_004.pt", "ckpt_last.pt"]


class NanAfter(nn.Module):
    """MSE that turns into NaN after a number of calls: a run that diverges mid-training."""

    calls = 0

    def forward(self, pred, target):
        NanAfter.calls += 1
        loss = (pred - target).pow(2).mean()
        return loss * float("nan") if NanAfter.calls > 5 else loss


def test_non_finite_steps_are_skipped_then_the_run_stops(invoke, cond_data, tmp_path, monkeypatch):
    monkeypatch.setitem(objectives.LOSSES, "mse", NanAfter)
    NanAfter.calls = 0
    result = invoke("dm", "train", "--dataset-path", cond_data, "--result-path", tmp_path, *TINY, "--epochs", "3",
                    "--max-nonfinite", "3")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "step 8: the loss or gradients were non-finite for 3 steps in a row" in text
    assert "Traceback" not in result.output
    kept = load_checkpoint(tmp_path / "df" / "ckpt_last.pt")  # the good state after epoch 1 survives
    assert kept["progress"]["epoch"] == 1 and kept["progress"]["step"] == 5
    assert all(torch.isfinite(v).all() for v in kept["model"].values())
    log = (tmp_path / "df" / "train.log").read_text()
    assert [line.split(" ", 2)[2] for line in log.splitlines() if "skipped for a non-finite" in line] == [
        f"step {s}: 1 step(s) skipped for a non-finite loss or gradient ({s - 5} so far)" for s in (6, 7, 8)]


def test_non_finite_steps_read_back_late_still_stop_the_run_before_any_save(invoke, cond_data, tmp_path,
                                                                            monkeypatch):
    """With --log-every beyond the epoch, the skips stay on the device until the epoch end reads them: the run
    stops there, before epoch 2's checkpoint, and says how long the non-finite run was."""
    monkeypatch.setitem(objectives.LOSSES, "mse", NanAfter)
    NanAfter.calls = 0
    result = invoke("dm", "train", "--dataset-path", cond_data, "--result-path", tmp_path, *TINY, "--epochs", "3",
                    "--max-nonfinite", "3", "--log-every", "100")
    assert result.exit_code == 1
    assert "step 10: the loss or gradients were non-finite for 5 steps in a row" in " ".join(result.output.split())
    kept = load_checkpoint(tmp_path / "df" / "ckpt_last.pt")
    assert kept["progress"]["epoch"] == 1 and kept["progress"]["step"] == 5 and kept["progress"]["skipped_steps"] == 0
    assert "steps 6-10: 5 step(s) skipped for a non-finite loss or gradient (5 so far)" in (
        tmp_path / "df" / "train.log").read_text()


@contextlib.contextmanager
def tiny_session(data, tmp_path, **flags):
    """A training session of an 8 px network, its steps driven by the test."""
    flags = {"dataset_path": str(data), "result_path": str(tmp_path), "image_size": 8, "base_channels": 4,
             "noise_steps": 20, "batch_size": 4, "augment": "resize", "log_every": 100, **flags}
    with open_session(plan_training(resolve(flags=flags).config)) as session:
        yield session


BATCH = torch.rand(4, 3, 8, 8) * 2 - 1, torch.arange(4) % 2
NAN_BATCH = torch.full((4, 3, 8, 8), float("nan")), BATCH[1]


@pytest.mark.parametrize("optim", ["adamw", "adam", "sgd"])
def test_a_non_finite_step_changes_nothing_but_the_counts(cond_data, tmp_path, optim):
    """The skip happens on the device: weights, optimizer moments and step counts, and the EMA stay bit for bit as
    they were; the EMA counts the step (so its counts never wait for the device); the next good step trains on."""
    with tiny_session(cond_data, tmp_path, optim=optim, ema_halflife_kimg=0.01) as session:
        for _ in range(2):
            session.train_step(*BATCH, 0)
        session.settle()
        before = copy.deepcopy((session.model.state_dict(), session.optimizer.state_dict(), session.ema.state_dict()))
        updates, images = session.ema.updates, session.ema.images
        session.train_step(*NAN_BATCH, 0)
        assert session.step == 3 and session.skipped == 0  # not read back yet
        after = (session.model.state_dict(), session.optimizer.state_dict(), session.ema.state_dict())
        assert _flat(after) == _flat(before)
        session.settle()
        assert session.skipped == 1 and (session.ema.updates, session.ema.images) == (updates + 1, images + 4)
        session.train_step(*BATCH, 0)
        session.settle()
        assert session.skipped == 1 and _flat(session.model.state_dict()) != _flat(before[0])


def test_sgd_after_a_skipped_first_step_starts_its_momentum_from_the_gradient(cond_data, tmp_path):
    """torch's fused SGD leaves its momentum buffers uninitialised when its first step is skipped; ours start at
    zero, so the first applied step sets them to the gradient, as torch's first step does."""
    with tiny_session(cond_data, tmp_path, optim="sgd") as session:
        session.train_step(*NAN_BATCH, 0)
        buffers = [session.optimizer.state[p]["momentum_buffer"] for p in session.model.parameters()]
        assert all(torch.equal(b, torch.zeros_like(b)) for b in buffers)
        session.train_step(*BATCH, 0)
        for p in session.model.parameters():
            assert torch.equal(session.optimizer.state[p]["momentum_buffer"], p.grad)


def test_a_state_saved_by_a_non_fused_optimizer_resumes_fused(cond_data, tmp_path):
    """Checkpoints from before the fused step hold ``fused: None``; loaded as they are, the optimizer would refuse
    the step's found_inf."""
    with tiny_session(cond_data, tmp_path) as session:
        session.train_step(*BATCH, 0)
        old = torch.optim.AdamW(session.model.parameters(), lr=1e-3)  # torch's default kernel, as saved before
        old.step()
        state = {**session.checkpoint_payload(0, 1), "optimizer": old.state_dict()}
        assert state["optimizer"]["param_groups"][0]["fused"] is None
    with tiny_session(cond_data, tmp_path / "b") as session:
        session.restore(state)
        assert session.optimizer.param_groups[0]["fused"] is True
        session.train_step(*NAN_BATCH, 0)
        session.train_step(*BATCH, 0)
        session.settle()
        assert session.step == 3 and session.skipped == 1


def _flat(obj) -> list:
    """Every tensor and number in a nested state, as exact values."""
    if isinstance(obj, torch.Tensor):
        return [obj.detach().cpu().reshape(-1).tolist()]
    if isinstance(obj, dict):
        return [x for k in sorted(obj, key=str) for x in [k, *_flat(obj[k])]]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _flat(v)]
    return [obj]


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt_last.pt"
    save_checkpoint(path, {"format": "iddm", "format_version": 1, "w": torch.ones(3), **STRUCTURE})
    before = path.read_bytes()

    def dying_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module.torch, "save", dying_save)
    with pytest.raises(StorageError, match="disk full"):
        save_checkpoint(path, {"format": "iddm", "format_version": 1, "w": torch.zeros(3), **STRUCTURE})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["w"].sum() == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_last.pt"]  # no temporary file left
