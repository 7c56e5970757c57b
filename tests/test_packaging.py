"""A plain (non-editable) install carries the profiles, the demo dataset and the completion scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_profiles_demo_data_and_completions(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("iddm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"iddm_cli/profiles/{p}.toml" for p in ("demo", "cpu-32", "cifar10", "landscape", "ci-smoke")} <= set(names)
    assert sum(n.startswith("iddm_cli/demo_data/fashion-mnist/") and n.endswith(".png") for n in names) == 1200
    assert "iddm_cli/demo_data/fashion-mnist/LICENSE.txt" in names
    assert any(n.endswith("share/bash-completion/completions/iddm") for n in names)

    # installed elsewhere, the package finds its own profiles and demo data
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    code = ("import iddm_cli.config.loader as L, iddm_cli.data.folder as F; "
            "print(L.shipped_profile_dir()); print(F.BUILTIN_DATASETS['fashion-mnist'].is_dir())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr
    profile_dir, has_data = out.stdout.split()
    assert profile_dir.startswith(str(target)) and has_data == "True"
