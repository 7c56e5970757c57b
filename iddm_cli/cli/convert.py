"""``iddm convert``: an IDDM 1.x checkpoint as an iddm one. Options come from the schema
(:class:`iddm_cli.config.commands.ConvertConfig`)."""

from __future__ import annotations

from typing import Any

from iddm_cli.cli.common import err_console, report_errors
from iddm_cli.config.commands import CONVERT, ConvertConfig


def convert_command(options: dict[str, Any]) -> None:
    debug = options.pop("debug")

    def run() -> None:
        from pathlib import Path

        from iddm_cli.config.loader import settings_from
        from iddm_cli.core.iddm_import import write_converted

        settings: ConvertConfig = settings_from(ConvertConfig, CONVERT, options)
        report = write_converted(Path(settings.checkpoint), Path(settings.out), settings.noise_schedule,
                                 settings.noise_steps)
        err_console.print(report.summary(settings.checkpoint), markup=False, highlight=False)
        err_console.print(f"wrote {settings.out}: iddm sample {settings.out}, or --pretrain-path {settings.out}",
                          markup=False, highlight=False)

    report_errors(run, debug)
