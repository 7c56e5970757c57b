"""The command line itself: help, version, no torch on import, completion scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from iddm_cli import __version__

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_cli_leaves_torch_out():
    code = "import sys, iddm_cli.cli.app; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_help_lists_groups_and_version(invoke):
    result = invoke("--help")
    assert result.exit_code == 0
    assert "dm" in result.output
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"iddm {__version__}"


def test_train_help_shows_every_usable_config_key(runner):
    from iddm_cli.cli.app import app
    from iddm_cli.config import FIELDS

    result = runner.invoke(app, ["dm", "train", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    flat = " ".join(result.output.split())
    for spec in FIELDS.values():  # every training setting is shown
        assert f"{spec.flag} " in flat and not spec.hidden, spec.flag


def test_completion_scripts_match_the_app():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_completions.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_completion_offers_commands_choices_and_profiles(tmp_path):
    def complete(words: str, cword: int) -> list[str]:
        env = {**os.environ, "COMP_WORDS": words, "COMP_CWORD": str(cword), "_IDDM_COMPLETE": "complete_bash",
               "XDG_CONFIG_HOME": str(tmp_path)}  # the shipped profiles only, whatever this machine's user has
        out = subprocess.run([sys.executable, "-m", "iddm_cli"], env=env, capture_output=True, text=True)
        return out.stdout.split()

    assert complete("iddm dm tr", 2) == ["train"]
    assert complete("iddm dm train --network ", 4) == ["unet", "cspdarkunet", "adm-xs", "adm-s", "adm-m"]
    dm_profiles = set(complete("iddm dm train --profile ", 4))
    assert {"demo", "cpu-32", "cifar10", "landscape", "ci-smoke", "latent-demo"} <= dm_profiles
    assert not {"vae-demo", "neu-det"} & dm_profiles  # each trainer is offered its own profiles
    assert complete("iddm vae train --profile ", 4) == ["neu-det", "vae-demo"]
