"""``iddm sample``: images from a checkpoint with any sampler. Options come from the schema
(:class:`iddm_cli.config.commands.SampleConfig`)."""

from __future__ import annotations

from iddm_cli.cli.common import err_console
from iddm_cli.config.commands import SampleConfig


def sample_command(settings: SampleConfig) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from iddm_cli.sampling import generate

    with Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TextColumn("network calls"),
                  TimeRemainingColumn(), console=err_console, disable=not err_console.is_terminal) as bar:
        task = bar.add_task("sample", total=None)
        result = generate(settings, lambda done, total: bar.update(task, completed=done, total=total))
    for note in result.notes:
        err_console.print(note, markup=False, highlight=False)
    err_console.print(f"{len(result.files)} images in {result.out_dir}", markup=False, highlight=False)
    if result.grid:
        err_console.print(f"grid: {result.grid}", markup=False, highlight=False)
