"""Regenerate the shell-completion scripts in completions/ from the installed ``iddm`` app.

The scripts are dynamic shims: at completion time they run ``iddm`` itself (with ``_IDDM_COMPLETE`` set) and
show what it answers, so they only change when Typer's templates do, not when commands or options change.

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
    """The script for ``shell``: no leading blank lines (zsh's compinit reads ``#compdef`` only on the first line),
    one trailing newline."""
    env = {**os.environ, "_IDDM_COMPLETE": f"source_{shell}"}
    out = subprocess.run([sys.executable, "-m", "iddm_cli"], env=env, capture_output=True, text=True, check=True)
    text = out.stdout.lstrip("\n").rstrip("\n") + "\n"
    if shell == "zsh" and (not text.startswith("#compdef iddm\n") or "loadautofunc" not in text):
        # iddm_cli.cli.completion fixes Typer's zsh template; it leaves a template it does not know alone
        raise SystemExit("Typer's zsh script changed: check the '#compdef iddm' line and the compdef call that "
                         "iddm_cli/cli/completion.py replaces")
    return text


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
