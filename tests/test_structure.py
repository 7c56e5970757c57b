"""How the code is put together: every option comes from the schema, imports point one way, no cycles."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

import typer.main

from iddm_cli.cli.app import app
from iddm_cli.config import FIELDS
from iddm_cli.config.commands import COMMANDS

PACKAGE = Path(__file__).resolve().parents[1] / "iddm_cli"


def _commands() -> dict[str, object]:
    """'dm train' -> click command, for every leaf command of the app."""
    found = {}

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs is None:
            found[" ".join(path)] = cmd
            return
        for name, sub in subs.items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_every_option_of_every_command_comes_from_the_schema():
    commands = _commands()
    assert set(commands) == set(COMMANDS)  # no command outside the schema
    for path, cmd in commands.items():
        specs = COMMANDS[path]
        params = {p.name: p for p in cmd.params if p.name != "help"}
        assert set(params) == set(specs), path
        for name, param in params.items():
            spec = specs[name]
            # no hand-written default: every option starts as None, so a command knows which flags were given
            assert param.default is None or param.required, f"{path} {name}: default {param.default!r}"
            assert param.help.startswith(spec.help), f"{path} {name}"
            if spec.argument:
                continue
            assert spec.flag in param.opts, f"{path} {name}"
            assert set(spec.alias) <= set(param.opts), f"{path} {name}"
            assert param.hidden == spec.hidden, f"{path} {name}"
            if spec.choices:  # offered as a choice list (Typer reads the Literal annotation)
                kind = getattr(param, "type", None)
                offered = kind.choices if kind is not None else typing.get_args(param.type_descriptor.annotation)
                assert tuple(offered) == spec.choices, f"{path} {name}"
            shown = spec.default_text
            assert param.help.endswith(f"(default: {shown})" if shown else spec.help), f"{path} {name}"


def test_choices_come_from_the_registries():
    from iddm_cli.config.commands import SAMPLE
    from iddm_cli.diffusion.registry import SAMPLERS
    from iddm_cli.nets import NETWORKS

    assert FIELDS["network"].choices == tuple(NETWORKS)
    assert FIELDS["sample"].choices == SAMPLE["sampler"].choices == tuple(SAMPLERS)
    for name, spec in SAMPLERS.items():  # the default step counts in help come from the registry too
        assert f"{name}" in SAMPLE["steps"].shown and str(spec.default_steps) in SAMPLE["steps"].shown


def test_resume_help_lists_exactly_the_resumable_settings(runner):
    result = runner.invoke(app, ["resume", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", result.output))
    resumable = [spec for spec in FIELDS.values() if spec.resumable]
    expected = {"--help", "--dry-run", "--debug", "--start-epoch", "--force"}
    for spec in resumable:
        expected |= {spec.flag, *spec.alias}
        if spec.kind == "bool":
            expected.add("--no-" + spec.flag[2:])
    assert shown == expected
    # a setting left out keeps the run's value, so no schema default is shown for one
    assert "(default: the run's)" in result.output and "(default: 300)" not in result.output
    assert len(resumable) == 28  # 21, the dataset and autoencoder file (moved), the 4 evaluation settings, --compile


# ----------------------------------------------------------------------------------------------- imports
def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> every iddm_cli module and top-level library it imports, at module level or inside functions
    (``TYPE_CHECKING`` blocks excluded: they never run)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps |= {f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in modules}
        resolved = set()
        for dep in deps:
            if dep.startswith("iddm_cli"):
                # importing a.b.c runs the packages a.b and a on the way (but a module's own packages are
                # already running when it is imported, so they are no dependency of it)
                parts, own = dep.split("."), name.split(".")
                resolved |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)
                             if parts[:i] != own[:i]} & set(modules)
            else:
                resolved.add(dep.split(".")[0])
        graph[name] = resolved - {name}
    return graph


LAYERS = {  # a module may import modules of its own layer or a lower one
    "iddm_cli.__main__": 6, "iddm_cli.cli": 5, "iddm_cli.api": 4, "iddm_cli.train": 3, "iddm_cli.sampling": 3,
    "iddm_cli.evaluation": 3, "iddm_cli.core": 2, "iddm_cli.metrics": 2, "iddm_cli.data": 1, "iddm_cli.diffusion": 1,
    "iddm_cli.nets": 1, "iddm_cli.config": 1,
    "iddm_cli.choices": 1, "iddm_cli.errors": 0, "iddm_cli": 0,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYERS:
            return LAYERS[".".join(parts[:i])]
    raise AssertionError(f"{module} has no layer")


def test_imports_point_one_way():
    graph = _imports()
    wrong = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
             if d.startswith("iddm_cli") and _layer(d) > _layer(m)]
    assert not wrong, wrong


def test_no_engine_reaches_typer_or_rich():
    graph = _imports()
    engines = [m for m in graph if _layer(m) <= 4]  # everything below the CLI layer, the Python API included
    for module in engines:
        seen, todo = set(), [module]
        while todo:  # every project module it imports, directly or through others
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            todo += [d for d in graph.get(m, ()) if d.startswith("iddm_cli")]
        ui = sorted({d for m in seen for d in graph[m] if d in ("typer", "rich", "click")})
        assert not ui, f"{module} reaches {ui}"


def test_no_import_cycles():
    graph = {m: {d for d in deps if d in _imports_keys()} for m, deps in _imports().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def _imports_keys() -> set[str]:
    return {_module_name(p) for p in PACKAGE.rglob("*.py")}
