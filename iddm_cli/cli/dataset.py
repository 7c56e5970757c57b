"""``iddm dataset``: dataset tools."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from iddm_cli.cli.common import IddmCommand, err_console, report_errors
from iddm_cli.errors import ConfigError, ExitCode

app = typer.Typer(help="Dataset tools.", no_args_is_help=True)


def check_command(
    path: str = typer.Argument(..., metavar="PATH", help="The dataset folder (or builtin:fashion-mnist)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", "-i",
                                             help="Training size (64 or H,W): smaller images are reported."),
    kind: str = typer.Option("dm", "--kind", help="dm: class subfolders or a flat folder; vae: train/ and val/."),
    as_json: bool = typer.Option(False, "--json", help="Write the report as JSON on stdout (schema in README)."),
    deep: bool = typer.Option(False, "--deep/--quick", help="quick reads headers (default); deep decodes every image."),
    debug: Optional[bool] = typer.Option(None, "--debug", help="Show tracebacks (also IDDM_DEBUG=1)."),
) -> None:
    """Report everything wrong with a dataset before training: exit 0 (warnings allowed), 3 on errors."""

    def run() -> None:
        from iddm_cli.config.loader import parse_image_size

        if kind not in ("dm", "vae"):
            raise ConfigError(f"--kind {kind!r}: expected dm or vae")
        size = None
        if image_size is not None:
            parsed = parse_image_size(image_size)
            if parsed is None:
                raise ConfigError(f"--image-size {image_size!r}: expected 64 or H,W")
            size = (parsed, parsed) if isinstance(parsed, int) else tuple(parsed)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from iddm_cli.data.check import check_dataset, summarise

        with Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(), console=err_console,
                      disable=as_json or not err_console.is_terminal) as bar:
            task = bar.add_task("check", total=None)
            report = check_dataset(path, size, kind, deep, lambda d, t: bar.update(task, completed=d, total=t))
        if as_json:
            sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        else:
            _print(report, summarise(report))
        if report.errors:
            raise typer.Exit(int(ExitCode.DATA))

    report_errors(run, debug)


def _print(report, summary: str) -> None:
    err_console.print(f"{report.path}: {report.layout} layout", markup=False, highlight=False)
    table = Table("class" if report.layout == "conditional" else "group", "images", "min size", "median size",
                  "max size", "modes")
    for c in report.classes:
        fmt = {k: "x".join(map(str, v)) for k, v in c.sizes.items()}
        table.add_row(escape(c.name), str(c.count), fmt.get("min", "-"), fmt.get("median", "-"), fmt.get("max", "-"),
                      ", ".join(f"{m} {n}" for m, n in sorted(c.modes.items())))
    table.add_row("total", str(sum(c.count for c in report.classes)), "", "", "", "", style="bold")
    err_console.print(table)
    for p in report.problems:
        colour = "red" if p.severity == "error" else "yellow"
        err_console.print(f"[{colour}]{p.severity}[/] {escape(p.path)}: {escape(p.message)}", soft_wrap=True)
    err_console.print(summary, markup=False, highlight=False)


app.command("check", cls=IddmCommand)(check_command)
