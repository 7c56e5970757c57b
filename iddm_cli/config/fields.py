"""What a setting is: :func:`opt` declares one dataclass field with everything known about it, and
:class:`FieldSpec` is how the rest of iddm reads it back (the command-line options, ``--help``, validation,
``--print-config``, the resume rules). Every command's options are built from these specs and nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

COMPAT_PANEL = "IDDM compatibility"


def opt(
    default: Any,
    help: str,
    *,
    kind: str | None = None,
    choices: tuple[str, ...] | None = None,
    short: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    alias: str | tuple[str, ...] = (),
    metavar: str | None = None,
    panel: str | None = None,
    shown: str | None = None,
    flag: str | None = None,
    off: str | None = None,
    resumable: bool = False,
    compat: bool = False,
    hidden: bool = False,
    argument: bool = False,
    required: bool = False,
    complete: str | None = None,
) -> Any:
    """A setting with its metadata.

    ``kind``: int | float | str | path | bool | size | tristate | device | count | strlist | intlist
    (inferred from the default when it is not None; ``path``: a file or folder, stored absolute when a run is
    created, so that resuming from another folder reads the same one). ``le``: an upper bound where a value could
    exhaust memory or time.
    ``alias``: more long flags. ``metavar``: what to type, in help. ``panel``: the help panel (default: the
    section's). ``shown``: the default as help shows it (default: the value). ``flag``: the long flag when it is
    not the key's name. ``off``: a boolean's negative flag ("" = none; default ``--no-NAME``). ``resumable``: may
    change when a run resumes (it changes neither the model, the data nor the optimisation). ``compat``: an IDDM
    spelling, shown in the IDDM compatibility panel. ``hidden``: accepted but not shown (no use in this release).
    ``argument``: a positional argument. ``complete``: the name of a completer (see ``iddm_cli.cli.common``).
    """
    if kind is None:
        assert default is not None, "a setting whose default is None needs an explicit kind"
        kind = type(default).__name__
    meta = {"help": help, "kind": kind, "choices": choices, "short": short, "ge": ge, "gt": gt, "le": le,
            "alias": (alias,) if isinstance(alias, str) else tuple(alias), "metavar": metavar, "panel": panel,
            "shown": shown, "flag": flag, "off": off, "resumable": resumable, "compat": compat, "hidden": hidden,
            "argument": argument, "required": required, "complete": complete}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldSpec:
    """Everything known about one setting: where it lives, its default and its metadata."""

    section: str
    name: str
    default: Any
    kind: str
    help: str
    choices: tuple[str, ...] | None
    short: str | None
    ge: float | None
    gt: float | None
    le: float | None
    alias: tuple[str, ...]
    metavar: str | None
    panel: str
    shown: str | None
    flag: str
    off: str | None
    resumable: bool
    compat: bool
    hidden: bool
    argument: bool
    required: bool
    complete: str | None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def default_text(self) -> str | None:
        """The default as help shows it; None where showing one would say nothing (a plain switch)."""
        if self.shown is not None:
            return self.shown
        if self.default in (None, "", []) or (self.kind == "bool" and self.off == ""):
            return None
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


def specs_of(sections: dict[str, type]) -> dict[str, FieldSpec]:
    """name -> spec for every field of the section dataclasses, in order; names are unique across sections. A
    section class may set ``PANEL``, the help panel of its fields."""
    specs: dict[str, FieldSpec] = {}
    for section, cls in sections.items():
        instance = cls()
        for f in dataclasses.fields(cls):
            m = f.metadata
            assert f.name not in specs, f"setting {f.name} is defined twice"
            panel = COMPAT_PANEL if m["compat"] else m["panel"] or getattr(cls, "PANEL", section.title())
            specs[f.name] = FieldSpec(
                section, f.name, getattr(instance, f.name), m["kind"], m["help"], m["choices"], m["short"], m["ge"],
                m["gt"], m["le"], m["alias"], m["metavar"], panel, m["shown"],
                m["flag"] or "--" + f.name.replace("_", "-"), m["off"], m["resumable"], m["compat"], m["hidden"],
                m["argument"], m["required"], m["complete"])
    return specs


def pick(specs: dict[str, FieldSpec], *names: str) -> dict[str, FieldSpec]:
    return {name: specs[name] for name in names}
