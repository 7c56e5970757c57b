"""The ``iddm`` root command: composes the command groups. Importing this module must not import torch."""

from __future__ import annotations

import typer

from iddm_cli import __version__
from iddm_cli.cli import dataset, dm
from iddm_cli.cli.common import IddmCommand, with_config_options
from iddm_cli.cli.sample import sample_command

app = typer.Typer(
    name="iddm",
    help="Train and sample diffusion models on your own image folders.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(dm.app, name="dm")
app.command(
    "resume", cls=IddmCommand,
    help="Continue an interrupted run exactly where it stopped; the run directory is all it needs. Only settings "
         "that leave the computation unchanged may change: --epochs, --num-workers, save/preview/log intervals, "
         "--keep-last, --strict-data, --max-nonfinite and the device settings (--devices/--nproc, ...).",
)(with_config_options(dm.RESUME_OPTIONS, dm.resume_command))
app.command("sample", cls=IddmCommand)(sample_command)
app.add_typer(dataset.app, name="dataset")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"iddm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool | None = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    """Train and sample diffusion models on your own image folders."""


def main() -> None:
    app(prog_name="iddm")
