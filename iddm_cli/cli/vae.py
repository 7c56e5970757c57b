"""``iddm vae``: the autoencoder of latent diffusion. Its options come from the autoencoder's schema; training runs on
the same engine and command body as ``iddm dm train``."""

from __future__ import annotations

import typer

from iddm_cli.cli.common import IddmCommand, IddmGroup, command_from
from iddm_cli.cli.dm import train_command
from iddm_cli.config.commands import COMMANDS
from iddm_cli.config.schema import VAE

app = typer.Typer(cls=IddmGroup, help="Autoencoders for latent diffusion.", no_args_is_help=True)

app.command(
    "train", cls=IddmCommand, short_help="Train the autoencoder of latent diffusion.",
    help="Train a KL-regularised autoencoder on train/ and val/ image folders: validation PSNR and SSIM every "
         "epoch, ckpt_best.pt by PSNR, a reconstruction grid per epoch. Its checkpoint is what `iddm dm train "
         "--latent --autoencoder-ckpt` takes. Settings: defaults < --profile < --set < flags; IDDM's flags work too.",
)(command_from(COMMANDS["vae train"], lambda options: train_command(options, VAE)))
