"""Interval-checkpoint rotation, the non-finite guard, and a crash in the middle of a checkpoint write."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from iddm_cli.core import checkpoint as ckpt_module
from iddm_cli.core.checkpoint import load_checkpoint, save_checkpoint
from iddm_cli.errors import StorageError
from iddm_cli.train import objectives
from tests.conftest import TINY


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
    assert (tmp_path / "df" / "train.log").read_text().count("non-finite loss or gradient, step skipped") == 3


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt_last.pt"
    save_checkpoint(path, {"format": "iddm", "format_version": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def dying_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module.torch, "save", dying_save)
    with pytest.raises(StorageError, match="disk full"):
        save_checkpoint(path, {"format": "iddm", "format_version": 1, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["w"].sum() == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_last.pt"]  # no temporary file left
