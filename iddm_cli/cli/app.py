"""The ``iddm`` root command: composes the command groups. Importing this module must not import torch."""

from __future__ import annotations

import typer

from iddm_cli import __version__
from iddm_cli.cli import dataset, dm, eval, vae
from iddm_cli.cli.common import IddmCommand, IddmGroup, command_from, settings_command
from iddm_cli.cli.completion import fix_zsh_script
from iddm_cli.cli.convert import convert_command
from iddm_cli.cli.sample import sample_command
from iddm_cli.config.commands import COMMANDS, ConvertConfig, SampleConfig

fix_zsh_script()
app = typer.Typer(
    name="iddm",
    cls=IddmGroup,
    help="Train and sample diffusion models on your own image folders.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(dm.app, name="dm", short_help="Diffusion models: train.")
app.add_typer(vae.app, name="vae", short_help="Autoencoders for latent diffusion: train.")
app.command(
    "resume", cls=IddmCommand, short_help="Continue an interrupted or finished run where it stopped.",
    help="Continue an interrupted run exactly where it stopped; the run directory is all it needs. Only the settings "
         "listed below may change: they leave the model, the data and the optimisation as they were.",
)(command_from(COMMANDS["resume"], dm.resume_command))
app.command("sample", cls=IddmCommand, short_help="Generate images from a checkpoint with any sampler.",
            help="Generate images from a trained checkpoint. Network, schedule, size, channels and classes come "
                 "from it.")(settings_command(SampleConfig, COMMANDS["sample"], sample_command))
app.command("convert", cls=IddmCommand, short_help="Turn an IDDM 1.x checkpoint into an iddm checkpoint.",
            help="Convert an IDDM 1.x ckpt_last.pt (unet or cspdarkunet) into an iddm checkpoint that computes the "
                 "same outputs. iddm sample and --pretrain-path also read IDDM checkpoints directly; converting "
                 "once records the noise schedule and T, which IDDM does not store.",
            )(settings_command(ConvertConfig, COMMANDS["convert"], convert_command))
app.add_typer(dataset.app, name="dataset", short_help="Dataset tools: check, get.")
app.add_typer(eval.app, name="eval", short_help="Sample quality: FID and KID.")


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
