"""``iddm convert``: an IDDM 1.x checkpoint as an iddm one. Options come from the schema
(:class:`iddm_cli.config.commands.ConvertConfig`)."""

from __future__ import annotations

from pathlib import Path

from iddm_cli.cli.common import err_console
from iddm_cli.config.commands import ConvertConfig


def convert_command(settings: ConvertConfig) -> None:
    from iddm_cli.core.checkpoint import resolve_checkpoint
    from iddm_cli.core.iddm_import import write_converted

    source = resolve_checkpoint(settings.checkpoint)  # an IDDM run folder: its ckpt_last.pt, as `iddm sample` reads
    report = write_converted(source, Path(settings.out), settings.noise_schedule, settings.noise_steps)
    err_console.print(report.summary(source), markup=False, highlight=False)
    err_console.print(f"wrote {settings.out}: iddm sample {settings.out}, or --pretrain-path {settings.out}",
                      markup=False, highlight=False)
