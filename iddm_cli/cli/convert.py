"""``iddm convert``: an IDDM 1.x checkpoint as an iddm one. Options come from the schema
(:class:`iddm_cli.config.commands.ConvertConfig`)."""

from __future__ import annotations

from pathlib import Path

from iddm_cli.cli.common import err_console
from iddm_cli.config.commands import ConvertConfig


def convert_command(settings: ConvertConfig) -> None:
    from iddm_cli.core.iddm_import import write_converted

    report = write_converted(Path(settings.checkpoint), Path(settings.out), settings.noise_schedule,
                             settings.noise_steps)
    err_console.print(report.summary(settings.checkpoint), markup=False, highlight=False)
    err_console.print(f"wrote {settings.out}: iddm sample {settings.out}, or --pretrain-path {settings.out}",
                      markup=False, highlight=False)
