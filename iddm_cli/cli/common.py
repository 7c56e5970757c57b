"""What every command shares: the stderr console, error reporting, and options built from the schema."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from iddm_cli.config.fields import FieldSpec
from iddm_cli.errors import ExitCode, IddmError

# soft_wrap: a line is never broken inside a path when the output is a file or a pipe (80 columns there)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str, "path": str, "bool": bool, "size": str,
                         "tristate": bool, "device": str, "count": str}


_USAGE_ERROR = typer.BadParameter.__mro__[1]  # click's UsageError, whichever click Typer ships with


class IddmCommand(TyperCommand):
    """Accepts IDDM's underscore spellings (``--batch_size 16`` parses as ``--batch-size 16``) and reports a bad
    flag or value in one line with exit code 2."""

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
        with _usage_errors_in_one_line(ctx):
            return super().parse_args(ctx, fixed)


class IddmGroup(TyperGroup):
    """A command group that reports an unknown command or option in one line with exit code 2, as IddmCommand
    does."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        with _usage_errors_in_one_line(ctx):
            return super().parse_args(ctx, args)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        with _usage_errors_in_one_line(ctx):
            return super().resolve_command(ctx, args)


@contextmanager
def _usage_errors_in_one_line(ctx: Any) -> Iterator[None]:
    """A bad command, flag or value: one line, like every other error, instead of Click's box."""
    try:
        yield
    except _USAGE_ERROR as err:
        # shell completion parses half-typed lines; a group called bare shows its help (click's NoArgsIsHelpError)
        if ctx.resilient_parsing or type(err).__name__ == "NoArgsIsHelpError":
            raise
        message = " ".join(err.format_message().split())
        err_console.print(f"[bold red]error:[/] {escape(message)} (see: {escape(ctx.command_path)} --help)")
        raise typer.Exit(int(ExitCode.USAGE)) from None


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
            err_console.print(f"[bold red]error:[/] {escape(where + line)}", markup=True)
        if debug is not None:
            err_console.print("[dim](--debug or IDDM_DEBUG=1 shows the traceback)[/]")
        raise typer.Exit(int(err.exit_code)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


def _complete_profiles(ctx: typer.Context, incomplete: str) -> list[str]:
    """The profiles for this trainer (`dm train` or `vae train`)."""
    from iddm_cli.config.loader import available_profiles, profile_kind

    kind = ctx.parent.info_name if ctx.parent is not None else None
    return [name for name in available_profiles() if name.startswith(incomplete)
            and (kind not in ("dm", "vae") or profile_kind(name) == kind)]


COMPLETERS: dict[str, Callable[..., list[str]]] = {"profiles": _complete_profiles}  # FieldSpec.complete -> it


def parameter_for(spec: FieldSpec) -> inspect.Parameter:
    """One Typer option (or argument) for a setting, all of it from the spec. Options default to None, so a
    command knows which flags were given; the schema's default is what help shows."""
    if spec.kind in ("strlist", "intlist"):
        kind: Any = list[int] if spec.kind == "intlist" else list[str]
    else:
        kind = Literal[spec.choices] if spec.choices else _TYPES[spec.kind]  # Literal: choices shown and completed
    if spec.argument:
        default = typer.Argument(... if spec.required else None, metavar=spec.metavar, help=spec.help,
                                 show_default=False)
        return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=kind if spec.required else Optional[kind])
    decls = [spec.flag]
    if spec.kind in ("bool", "tristate") and spec.off != "":
        decls = [f"{spec.flag}/{spec.off or '--no-' + spec.flag[2:]}"]
    decls += [d for d in (spec.short, *spec.alias) if d]
    shown = spec.default_text  # one style for every command: "(default: x)" after the help text
    option = typer.Option(None, *decls, help=f"{spec.help} (default: {shown})" if shown else spec.help,
                          show_default=False,
                          metavar=spec.metavar, rich_help_panel=spec.panel, hidden=spec.hidden,
                          autocompletion=COMPLETERS.get(spec.complete or ""))
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[kind])


def command_from(specs: dict[str, FieldSpec], body: Callable[[dict[str, Any]], Any]) -> Callable[..., Any]:
    """A Typer command function with one parameter per spec, calling ``body({name: value or None})``."""

    def command(**kwargs: Any) -> Any:
        return body(kwargs)

    command.__signature__ = inspect.Signature([parameter_for(spec) for spec in specs.values()])  # type: ignore
    return command


def settings_command(cls: type, specs: dict[str, FieldSpec], body: Callable[[Any], Any]) -> Callable[..., Any]:
    """A command whose options are ``specs`` (the fields of the settings dataclass ``cls``, and --debug): the values
    given are checked into one ``cls`` and ``body(settings)`` runs; a user mistake is one line and its exit code."""
    fields = {name: spec for name, spec in specs.items() if name != "debug"}

    def run(options: dict[str, Any]) -> None:
        def checked() -> Any:
            from iddm_cli.config.loader import settings_from

            return body(settings_from(cls, fields, options))

        report_errors(checked, options.pop("debug", None))

    return command_from(specs, run)
