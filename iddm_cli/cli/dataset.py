"""``iddm dataset``: dataset tools."""

from __future__ import annotations

import json
import shlex
import sys

import typer
from rich.markup import escape
from rich.table import Table

from iddm_cli.cli.common import IddmCommand, IddmGroup, err_console, settings_command
from iddm_cli.config.commands import COMMANDS, DatasetCheckConfig, DatasetGetConfig
from iddm_cli.errors import ExitCode

app = typer.Typer(cls=IddmGroup, help="Dataset tools.", no_args_is_help=True)


def check_command(settings: DatasetCheckConfig) -> None:
    """Report everything wrong with a dataset before training: exit 0 (warnings allowed), 3 on errors."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from iddm_cli.data.check import check_dataset, summarise

    size = settings.image_size
    hw = (size, size) if isinstance(size, int) else tuple(size) if size else None
    with Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(), console=err_console,
                  disable=settings.json or not err_console.is_terminal) as bar:
        task = bar.add_task("check", total=None)
        report = check_dataset(settings.path, hw, settings.kind, settings.deep,
                               lambda d, t: bar.update(task, completed=d, total=t))
    if settings.json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        _print(report, summarise(report))
    if report.errors:
        raise typer.Exit(int(ExitCode.DATA))


def _print(report, summary: str) -> None:
    err_console.print(f"{report.path}: {report.layout} layout", markup=False, highlight=False)
    table = Table("class" if report.layout == "conditional" else "group", "images", "min size", "median size",
                  "max size", "modes")
    for c in report.classes:
        fmt = {k: "x".join(map(str, v)) for k, v in c.sizes.items()}
        table.add_row(escape(c.name), str(c.count), fmt.get("min", "-"), fmt.get("median", "-"), fmt.get("max", "-"),
                      ", ".join(f"{m} {n}" for m, n in sorted(c.modes.items())))
    table.add_row("total", str(sum(c.count for c in report.classes)), "", "", "", "", style="bold")
    err_console.print(table, soft_wrap=False)  # a table fits itself to the width
    for p in report.problems:
        colour = "red" if p.severity == "error" else "yellow"
        err_console.print(f"[{colour}]{p.severity}[/] {escape(p.path)}: {escape(p.message)}")
    err_console.print(summary, markup=False, highlight=False)


app.command("check", cls=IddmCommand, short_help="Validate a dataset before training.",
            help="Report everything wrong with a dataset before training: exit 0 (warnings allowed), 3 on errors.",
            )(settings_command(DatasetCheckConfig, COMMANDS["dataset check"], check_command))


def get_command(settings: DatasetGetConfig) -> None:
    """Write a standard dataset as class folders that `iddm dm train` reads."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from iddm_cli.data.get import get_dataset

    with Progress(TextColumn("writing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, disable=not err_console.is_terminal) as bar:
        task = bar.add_task("get", total=None)
        got = get_dataset(settings.name, settings.dir, settings.split, settings.source, settings.limit,
                          lambda d, t: bar.update(task, completed=d, total=t))
    for note in got.notes:
        err_console.print(f"[yellow]note[/] {escape(note)}")
    counts = sorted(set(got.counts.values()))
    per_class = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    err_console.print(f"wrote {got.images} images to {got.root}: {len(got.classes)} classes, {per_class} each"
                      f"{' (md5 verified)' if got.verified else ''}", markup=False, highlight=False)
    err_console.print(f"train on it: iddm dm train --dataset-path {shlex.quote(str(got.root))}", markup=False,
                      highlight=False)


app.command("get", cls=IddmCommand, short_help="Write a standard dataset (CIFAR, MNIST) as class folders.",
            help="Write cifar10, cifar100, mnist or fashion-mnist as DIR/<class>/<index>.png, the layout `iddm dm "
                 "train` reads: downloaded by torchvision, or from the official files with --from. Exit 3 when the "
                 "data cannot be had, 2 for a usage mistake (DIR not empty included).",
            )(settings_command(DatasetGetConfig, COMMANDS["dataset get"], get_command))
