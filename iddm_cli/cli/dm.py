"""``iddm dm train`` and ``iddm resume`` (of any run). Every option comes from the schema
(:data:`iddm_cli.config.commands.COMMANDS`); the bodies resolve the settings of the trainer's schema and hand them
to the training engine, which is the same for every trainer (``iddm vae train`` uses :func:`train_command`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from iddm_cli.cli.common import IddmCommand, IddmGroup, command_from, err_console, report_errors
from iddm_cli.config import check_runnable, resolve, to_toml
from iddm_cli.config.commands import COMMANDS, MODE_TEXT_REFUSED, RUN
from iddm_cli.config.loader import Resolved
from iddm_cli.config.schema import DM, Schema, schema_of
from iddm_cli.errors import ConfigError

app = typer.Typer(cls=IddmGroup, help="Diffusion models, in pixel or latent space.", no_args_is_help=True)


def explain_table(resolved: Resolved) -> Table:
    table = Table("key", "value", "source", title="resolved configuration", title_justify="left")
    for name, spec in schema_of(resolved.config).fields.items():
        value = getattr(getattr(resolved.config, spec.section), name)
        source = resolved.sources[name]
        table.add_row(spec.dotted, repr(value), source, style=None if source == "default" else "bold")
    return table


def _execute(job: Any, dry_run: bool | None) -> None:
    from iddm_cli.cli.progress import RichReporter  # torch is imported from here on
    from iddm_cli.train.launch import execute

    result = execute(job, RichReporter(err_console), bool(dry_run))
    if dry_run:
        err_console.print("dry run: nothing was written")
    if result is None:  # a dry run, or a rank other than 0 of a torchrun launch
        return
    err_console.print(f"done: {result.steps} steps, final loss {result.final_loss:.4f}", markup=False)
    err_console.print(f"run directory: {result.run_dir}", markup=False, highlight=False)
    if result.previews:
        what = "reconstructions" if result.previews[-1].name.startswith("recon_") else "samples"
        err_console.print(f"{what}: {result.previews[-1]}", markup=False, highlight=False)
    for best in ("ckpt_best.pt", "ckpt_best_fid.pt"):
        if (result.run_dir / best).is_file():
            err_console.print(f"best checkpoint: {result.run_dir / best}", markup=False, highlight=False)


def _resume(run_dir: Any, flags: dict[str, Any], start_epoch: int | None, force: bool | None,
            dry_run: bool | None) -> None:
    """Shared by `iddm resume` and `iddm dm train --resume` (inside report_errors)."""
    from iddm_cli.train.job import Job

    overrides = {name: value for name, value in flags.items() if value is not None}
    _execute(Job("resume", run_dir=str(run_dir), overrides=overrides, force=bool(force),
                 start_epoch=-1 if start_epoch is None else start_epoch), dry_run)


def resume_command(options: dict[str, Any]) -> None:
    control = {name: options.pop(name) for name in ("run_dir", "dry_run", "debug", "start_epoch", "force")}
    report_errors(lambda: _resume(control["run_dir"], options, control["start_epoch"], control["force"],
                                  control["dry_run"]), control["debug"])


def train_command(options: dict[str, Any], schema: Schema = DM) -> None:
    control = {name: options.pop(name) for name in RUN if name in options}
    flags = options  # the config keys

    def run() -> None:
        if control.get("mode") == "text":
            raise ConfigError(MODE_TEXT_REFUSED)
        profile = control["profile"]
        resolved = resolve(profile, control["sets"] or [], flags, schema)
        if control["explain"]:
            err_console.print(explain_table(resolved), soft_wrap=False)  # a table fits itself to the width
        check_runnable(resolved, data=not control["print_config"])  # --print-config prints a profile that runs
        if control["print_config"]:
            sys.stdout.write(to_toml(resolved.config, f" from profile {profile}" if profile else ""))
            return
        c = resolved.config
        if c.train.resume:  # IDDM's --resume: the run result_path/run_name continues where it stopped
            # --set counts as the flags do; a profile's values only find the run and its state (the checkpoint has the
            # rest)
            given = {name: getattr(getattr(c, spec.section), name) for name, spec in schema.fields.items()
                     if resolved.sources[name] == "--set"}
            given.update({name: value for name, value in flags.items() if value is not None})
            _resume(Path(c.train.result_path) / c.train.run_name, given, c.train.start_epoch, control["force"],
                    control["dry_run"])
            return
        if control["force"]:
            raise ConfigError("--force only applies together with --resume and --start-epoch")
        from iddm_cli.train.job import Job

        _execute(Job("new", config=c.to_dict(),
                     provenance={"argv": sys.argv, "profile": profile, "sources": resolved.sources}),
                 control["dry_run"])

    report_errors(run, control["debug"])


app.command(
    "train", cls=IddmCommand, short_help="Train a diffusion model on an image folder.",
    help="Train a diffusion model on an image folder (class subfolders = conditional), in pixel space or, with "
         "--latent, in the latent space of an autoencoder from `iddm vae train`. Settings: defaults < --profile < "
         "--set < flags. IDDM's underscore flags (--batch_size) work too.",
)(command_from(COMMANDS["dm train"], train_command))
