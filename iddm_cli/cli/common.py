"""What every command shares: the stderr console, error reporting and config-derived options."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from iddm_cli.config.schema import FIELDS, FieldSpec
from iddm_cli.errors import ExitCode, IddmError

err_console = Console(stderr=True, highlight=False)

_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str, "bool": bool, "size": str, "tristate": bool,
                         "device": str, "count": str}


class IddmCommand(TyperCommand):
    """Accepts IDDM's underscore spellings: ``--batch_size 16`` parses as ``--batch-size 16``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        known = {opt for p in self.params for opt in (*p.opts, *p.secondary_opts)}
        fixed = []
        for i, arg in enumerate(args):
            if arg == "--":
                fixed += args[i:]
                break
            name, eq, value = arg.partition("=")
            if name.startswith("--") and "_" in name and name.replace("_", "-") in known:
                arg = name.replace("_", "-") + eq + value
            fixed.append(arg)
        return super().parse_args(ctx, fixed)


def debug_enabled(flag: bool | None = None) -> bool:
    return bool(flag) or os.environ.get("IDDM_DEBUG", "") not in ("", "0")


def report_errors(fn: Callable[[], Any], debug: bool | None) -> Any:
    """Run a command body; user errors become one line each on stderr and their exit code."""
    try:
        return fn()
    except IddmError as err:
        if debug_enabled(debug):
            raise
        rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") != "1" else "0"
        if rank != "0" and err.all_ranks:  # under torchrun every rank raised it; rank 0 says it once
            raise typer.Exit(int(err.exit_code)) from None
        for line in err.problems:
            where = f"rank {rank}: " if rank != "0" else ""
            err_console.print(f"[bold red]error:[/] {escape(where + line)}", markup=True, soft_wrap=True)
        if debug is not None:
            err_console.print("[dim](--debug or IDDM_DEBUG=1 shows the traceback)[/]")
        raise typer.Exit(int(err.exit_code)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


def field_option(spec: FieldSpec) -> inspect.Parameter:
    """One typer option for a config key: ``--batch-size`` (IDDM's ``--batch_size`` is mapped by IddmCommand)."""
    kebab = spec.name.replace("_", "-")
    decls = [f"--{kebab}/--no-{kebab}" if spec.kind in ("bool", "tristate") else f"--{kebab}"]
    if spec.short:
        decls.append(spec.short)
    if spec.alias:
        decls.append(spec.alias)
    kind = Literal[spec.choices] if spec.choices else _TYPES[spec.kind]  # Literal: choices shown and completed
    default = "auto" if spec.kind == "tristate" else spec.default
    help_text = f"{spec.help} (default: {format_default(default)})"
    option = typer.Option(None, *decls, help=help_text, show_default=False,
                          rich_help_panel=f"{spec.section} settings")
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=Optional[kind])


def format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return "none"
    return str(value)


def with_config_options(extra: list[inspect.Parameter], body: Callable[..., Any]) -> Callable[..., Any]:
    """A command function whose signature is ``extra`` followed by one option per config key."""

    def command(**kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name in FIELDS}
        return body(flags=flags, **kwargs)

    params = extra + [field_option(spec) for spec in FIELDS.values()]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return command
