"""Regenerate the static shell-completion scripts in completions/ from the installed ``iddm`` app.

    python scripts/gen_completions.py          # write them
    python scripts/gen_completions.py --check  # exit 1 when they differ (the test suite does this too)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELLS = {"bash": "iddm.bash", "zsh": "_iddm", "fish": "iddm.fish"}


def render(shell: str) -> str:
    env = {**os.environ, "_IDDM_COMPLETE": f"source_{shell}"}
    out = subprocess.run([sys.executable, "-m", "iddm_cli"], env=env, capture_output=True, text=True, check=True)
    return out.stdout if out.stdout.endswith("\n") else out.stdout + "\n"


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for shell, name in SHELLS.items():
        path = ROOT / "completions" / name
        text = render(shell)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale completion scripts: {', '.join(stale)}; run python scripts/gen_completions.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
