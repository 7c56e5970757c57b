"""``iddm dm``: diffusion-model commands."""

from __future__ import annotations

import inspect
import sys
from typing import Any, Optional

import typer
from rich.table import Table

from iddm_cli.cli.common import IddmCommand, err_console, report_errors, with_config_options
from iddm_cli.config import FIELDS, check_runnable, resolve, to_toml
from iddm_cli.config.loader import Resolved, available_profiles

app = typer.Typer(help="Diffusion models (pixel space).", no_args_is_help=True)


def _complete_profiles(incomplete: str) -> list[str]:
    return [name for name in available_profiles() if name.startswith(incomplete)]


def _option(name: str, annotation: Any, *decls: str, help: str, **kw: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(None, *decls, help=help, rich_help_panel="Run", **kw))


RUN_OPTIONS = [
    _option("profile", Optional[str], "--profile", "-p", metavar="NAME|FILE",
            help="Shipped profile (demo, cifar10, landscape, ci-smoke) or a .toml file.",
            autocompletion=_complete_profiles),
    _option("set_", Optional[list[str]], "--set", metavar="KEY=VALUE",
            help="Override one key (value parsed as TOML), e.g. --set optim.lr=1e-4. Repeatable; flags win."),
    _option("print_config", Optional[bool], "--print-config",
            help="Print the resolved config as TOML on stdout and exit."),
    _option("dry_run", Optional[bool], "--dry-run",
            help="Check dataset, device and output folder, build the model, print the plan, and exit."),
    _option("explain", Optional[bool], "--explain", help="Show where each setting came from, then continue."),
    _option("debug", Optional[bool], "--debug", help="Show tracebacks (also IDDM_DEBUG=1)."),
]


def explain_table(resolved: Resolved) -> Table:
    table = Table("key", "value", "source", title="resolved configuration", title_justify="left")
    for name, spec in FIELDS.items():
        value = getattr(getattr(resolved.config, spec.section), name)
        source = resolved.sources[name]
        table.add_row(spec.dotted, repr(value), source, style=None if source == "default" else "bold")
    return table


def run_resume(run_dir: Any, flags: dict[str, Any], start_epoch: int, dry_run: bool | None) -> None:
    """Shared by `iddm resume` and `iddm dm train --resume` (inside report_errors)."""
    from iddm_cli.train.launch import Job

    overrides = {name: value for name, value in flags.items() if value is not None}
    _execute(Job("resume", run_dir=str(run_dir), overrides=overrides, start_epoch=start_epoch), dry_run)


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
        err_console.print(f"samples: {result.previews[-1]}", markup=False, highlight=False)


def resume_command(*, flags: dict[str, Any], run_dir: str, dry_run: bool | None, debug: bool | None) -> None:
    def run() -> None:
        start_epoch = flags.pop("start_epoch")
        run_resume(run_dir, flags, -1 if start_epoch is None else start_epoch, dry_run)

    report_errors(run, debug)


RESUME_OPTIONS = [
    inspect.Parameter("run_dir", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                      default=typer.Argument(..., metavar="RUN_DIR", help="The run directory to continue.")),
    _option("dry_run", Optional[bool], "--dry-run", help="Check everything and print the plan; change nothing."),
    _option("debug", Optional[bool], "--debug", help="Show tracebacks (also IDDM_DEBUG=1)."),
]


def train_command(*, flags: dict[str, Any], profile: str | None, set_: list[str] | None,
                  print_config: bool | None, dry_run: bool | None, explain: bool | None,
                  debug: bool | None) -> None:
    def run() -> None:
        resolved = resolve(profile, set_ or [], flags)
        if explain:
            err_console.print(explain_table(resolved))
        if print_config:
            sys.stdout.write(to_toml(resolved.config, f" from profile {profile}" if profile else ""))
            return
        check_runnable(resolved)

        c = resolved.config
        if c.train.resume:  # IDDM's --resume: the run result_path/run_name continues where it stopped
            from pathlib import Path

            run_resume(Path(c.train.result_path) / c.train.run_name, flags, c.train.start_epoch, dry_run)
            return
        from iddm_cli.train.launch import Job

        _execute(Job("new", config=c.to_dict(),
                     provenance={"argv": sys.argv, "profile": profile, "sources": resolved.sources}), dry_run)

    report_errors(run, debug)


app.command(
    "train",
    help="Train a diffusion model on an image folder (class subfolders = conditional). "
         "Settings: defaults < --profile < --set < flags. IDDM's underscore flags (--batch_size) work too.",
    cls=IddmCommand,
)(with_config_options(RUN_OPTIONS, train_command))
