"""Rich progress for training: a live bar on a terminal, plain status lines everywhere else."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from iddm_cli.core.reporting import Reporter


class SpeedColumn(ProgressColumn):
    """it/s, which Rich only shows by itself for tasks of unknown length."""

    def render(self, task: Any) -> Text:
        return Text(f"{task.speed:.1f} it/s" if task.speed else "-- it/s", style="progress.data.speed")


class RichReporter(Reporter):
    def __init__(self, console: Console):
        self.console = console
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.task: Any = None

    def info(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def start_epoch(self, epoch: int, epochs: int | str, steps: int) -> None:
        if not self.live:
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(), SpeedColumn(),
                TimeRemainingColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                console=self.console, refresh_per_second=4)
            self.task = self.progress.add_task("train", total=steps, epoch="", loss=float("nan"))
            self.progress.start()
        self.progress.reset(self.task, total=steps, epoch=f"{epoch + 1}/{epochs}", loss=float("nan"))

    def step(self, done: int, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, loss=loss)

    def status(self, line: str) -> None:
        if not self.live:
            self.console.print(line, markup=False, highlight=False)

    def end_epoch(self, epoch: int, summary: dict[str, Any]) -> None:
        validation = ""
        if "val_psnr" in summary:  # an autoencoder's: shown on a terminal and in logs alike
            validation = (f", val PSNR {summary['val_psnr']:.2f} dB, SSIM {summary['val_ssim']:.4f}"
                          + (" (best: ckpt_best.pt)" if summary.get("best") else ""))
        for key, value in summary.items():  # in-training evaluation: fid1k, kid1k
            if key.startswith(("fid", "kid")) and key != "fid_improved":
                validation += f", {key} {value:.4g}"
        if summary.get("fid_improved"):
            validation += " (best: ckpt_best_fid.pt)"
        if self.progress is not None:
            preview = f", preview {summary['preview']}" if "preview" in summary else ""
            self.progress.console.print(f"epoch {summary['epoch']}: mean loss {summary['loss']:.4f}{validation}"
                                        f"{preview}", markup=False, highlight=False)
        elif validation:
            self.console.print(f"epoch {summary['epoch']}:{validation.removeprefix(',')}", markup=False,
                               highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
