"""The lower bounds in pyproject.toml are real: a venv gets exactly the declared floor of every dependency (and the
oldest Click that the Typer floor allows) from PyPI, then the CLI, a short training run with previews and sampling
run in it. torch and torchvision come from the running interpreter (--system-site-packages): their floors are
not checked here.

Needs PyPI (skipped when it cannot be reached); takes about a minute.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FROM_THE_SYSTEM = {"torch", "torchvision"}  # the installed ones; another torch is too big to fetch for a test
IMPORT_NAMES = {"pillow": "PIL", "tomli-w": "tomli_w"}

pytestmark = pytest.mark.floors


def declared_floors() -> dict[str, str]:
    """{package: floor} for each dependency in pyproject.toml that applies here, torch and torchvision aside."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    floors = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in FROM_THE_SYSTEM or (req.marker is not None and not req.marker.evaluate()):
            continue
        lows = [spec.version for spec in req.specifier if spec.operator == ">="]
        assert len(lows) == 1, f"{line!r}: give each dependency one '>=' floor"
        floors[name] = lows[0]
    return floors


def pypi_unreachable() -> str | None:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    context = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
    try:
        with urlopen(f"{index}/typer/", timeout=15, context=context) as response:
            response.read(1)
    except OSError as err:
        return f"{index}: {err}"
    return None


@dataclass
class FloorEnv:
    python: Path
    env: dict[str, str]
    work: Path
    installed: dict[str, dict[str, str]]

    def iddm(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["iddm", *args], env=self.env, cwd=self.work, capture_output=True, text=True,
                              timeout=timeout)


def pip(python: Path, *args: str) -> None:
    out = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q", *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"pip install {' '.join(args)}:\n{out.stdout}\n{out.stderr}"


@pytest.fixture(scope="module")
def floors() -> dict[str, str]:
    return declared_floors()


@pytest.fixture(scope="module")
def floor_env(tmp_path_factory, floors) -> FloorEnv:
    reason = pypi_unreachable()
    if reason:
        pytest.skip(f"PyPI cannot be reached, so the dependency floors are not checked ({reason})")
    root = tmp_path_factory.mktemp("floors")
    venv = root / "venv"
    # no pip of its own: the interpreter's pip (seen through the system site) installs into the venv
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip(python, *(f"{name}=={version}" for name, version in floors.items()))
    click = subprocess.run([str(python), "-c", "from importlib.metadata import requires; "
                            "print(*(r for r in requires('typer') if r.startswith('click')))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    click_floor = [spec.version for spec in Requirement(click).specifier if spec.operator == ">="]
    assert len(click_floor) == 1, f"typer {floors['typer']} asks for {click!r}: no single Click floor"
    pip(python, f"click=={click_floor[0]}")
    pip(python, "--no-deps", "--no-cache-dir", str(ROOT))

    modules = {name: IMPORT_NAMES.get(name, name) for name in [*floors, "click", "iddm"]}
    modules["iddm"] = "iddm_cli"
    report = subprocess.run([str(python), "-c", (
        "import importlib, importlib.metadata as m, json, sys; "
        f"mods = {modules!r}; "
        "print(json.dumps({n: {'version': m.version(n), 'file': importlib.import_module(i).__file__} "
        "for n, i in mods.items()}))")], capture_output=True, text=True, cwd=root)
    assert report.returncode == 0, report.stderr
    installed = json.loads(report.stdout)
    installed["click"]["floor"] = click_floor[0]
    work = root / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "VIRTUAL_ENV": str(venv), "COLUMNS": "200", "NO_COLOR": "1",
           # one torch thread: on a few busy cores, several spin-waiting threads make this run ten times slower
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return FloorEnv(python, env, work, installed)


def test_the_venv_runs_the_floor_versions(floor_env, floors):
    venv = str(floor_env.python.parent.parent)
    for name, info in floor_env.installed.items():
        assert info["file"].startswith(venv), f"{name} came from {info['file']}, not the venv"
    got = {name: info["version"] for name, info in floor_env.installed.items()}
    for name, floor in floors.items():
        assert Requirement(f"{name}=={floor}").specifier.contains(got[name]), (name, got[name], floor)
    assert got["click"] == floor_env.installed["click"]["floor"]


def test_cli_help_config_and_choices_at_the_floors(floor_env):
    out = floor_env.iddm("--help")
    assert out.returncode == 0, out.stderr
    assert "dm" in out.stdout and "sample" in out.stdout

    out = floor_env.iddm("dm", "train", "--help")
    assert out.returncode == 0, out.stderr
    assert "unet|cspdarkunet" in out.stdout  # a Literal[...] option became a choice

    out = floor_env.iddm("dm", "train", "--profile", "ci-smoke", "--print-config")
    assert out.returncode == 0, out.stderr
    assert "[data]" in out.stdout and 'dataset_path = "builtin:fashion-mnist"' in out.stdout

    out = floor_env.iddm("dm", "train", "--network", "nope", "--dry-run")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "nope" in out.stderr and "cspdarkunet" in out.stderr


def test_train_and_sample_with_labelled_grids_at_the_floors(floor_env):
    results = floor_env.work / "results"
    out = floor_env.iddm("dm", "train", "--profile", "ci-smoke", "--dataset-path", "builtin:fashion-mnist",
                         "--result-path", str(results), "--vis", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    run = results / "ci-smoke"
    assert (run / "ckpt_last.pt").is_file()
    assert list((run / "vis").glob("*.png")), "no preview grid"

    samples = floor_env.work / "samples"
    out = floor_env.iddm("sample", str(run), "--num", "2", "--out", str(samples), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(list(samples.glob("*_000[01].png"))) == 20  # 2 for each of the 10 classes
    from PIL import Image

    with Image.open(samples / "grid.png") as grid:
        # 10 rows of 2 square cells, and left of them the class names in the sized default font
        assert grid.width > 2 * grid.height / 10 + 20, grid.size
