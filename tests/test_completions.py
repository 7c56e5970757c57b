"""The shipped completion scripts work in real shells: each one is installed the way README.md says, the shell
runs interactively in a pseudo-terminal, ``iddm dm tr<TAB>`` is typed and the line must become ``iddm dm train``.

How the completed line is read back: after TAB the test presses Ctrl-A (start of line), types ``printf '<%s>' ``
and Enter, so the shell runs ``printf '<%s>' iddm dm train`` and prints ``<iddm><dm><train>``. That output
cannot come from the shell echoing what was typed (the echo has the quotes), whatever the shell redraws.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPLETIONS = ROOT / "completions"
BIN = Path(sys.executable).parent
PROMPT = "IDDM-TEST-READY> "
RESULT = re.compile(rb"<iddm><dm><([^<>\r\n]*)>")
ANSI = re.compile(rb"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78])")

pytestmark = pytest.mark.skipif(not (BIN / "iddm").exists(), reason=f"no iddm script next to {sys.executable}")


class Terminal:
    """An interactive program on a pseudo-terminal: write keys, wait for output."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path):
        self.fd, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env, cwd=cwd,
                                     start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(child)
        self.output = b""

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: re.Pattern[bytes] | bytes, timeout: float, start: int = 0) -> re.Match[bytes] | None:
        """Read until ``pattern`` shows up in the output after ``start`` (escape sequences removed), or time out."""
        pattern = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(ANSI.sub(b"", self.output[start:]))
            left = deadline - time.monotonic()
            if match or left <= 0:
                return match
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the shell has gone
                    chunk = b""
                if not chunk:
                    return pattern.search(ANSI.sub(b"", self.output[start:]))
                self.output += chunk

    def settle(self, quiet: float = 0.3, timeout: float = 3.0) -> None:
        """Read until nothing more arrives for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], quiet)
            if not ready:
                return
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        os.close(self.fd)

    def text(self) -> str:
        return ANSI.sub(b"", self.output).decode(errors="replace")


def base_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {
        "HOME": str(home),
        "PATH": os.pathsep.join([str(BIN), "/usr/local/bin", "/usr/bin", "/bin"]),
        "TERM": "xterm",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_DATA_DIRS": str(tmp_path / "no-data-dirs"),  # no system-wide copy of the scripts gets picked up
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_RUNTIME_DIR": str(home),
    }


def complete_in(argv: list[str], env: dict[str, str], tmp_path: Path) -> list[str]:
    """Type ``iddm dm tr<TAB>`` at the shell's prompt, twice (the first TAB may load the script, the second uses what
    it loaded), and return what the last word became each time. The shell runs in an empty folder, so a fallback to
    file names completes nothing."""
    cwd = tmp_path / "empty"
    cwd.mkdir()
    shell = Terminal(argv, env, cwd)
    words, mark = [], 0
    try:
        for _ in range(2):
            # the next prompt: the first one, then the one after the line typed last
            assert shell.expect(PROMPT.encode(), timeout=5, start=mark), f"no prompt from {argv[0]}:\n{shell.text()}"
            shell.settle()
            mark = len(shell.output)
            shell.send("iddm dm tr\t")
            shell.expect(b"train", timeout=4, start=mark)  # the completion runs iddm (a Python start-up)
            shell.settle()
            shell.send("\x01printf '<%s>' \r")  # keys typed while a completion still runs wait for it
            result = shell.expect(RESULT, timeout=8, start=mark)
            assert result, f"the line never ran in {argv[0]}:\n{shell.text()}"
            words.append(result.group(1).decode())
        return words
    finally:
        shell.close()


def needs(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed (CI installs it in .ci/run)")
    return path


def test_bash_completes_a_subcommand(tmp_path):
    bash = needs("bash")
    rc = tmp_path / "bashrc"
    rc.write_text(f"PS1='{PROMPT}'\nsource '{COMPLETIONS / 'iddm.bash'}'\n")
    env = {**base_env(tmp_path), "INPUTRC": str(tmp_path / "inputrc")}
    (tmp_path / "inputrc").write_text("")
    # --rcfile: this file instead of /etc/bash.bashrc and ~/.bashrc
    assert complete_in([bash, "--noprofile", "--rcfile", str(rc), "-i"], env, tmp_path) == ["train", "train"]


def test_zsh_completes_a_subcommand(tmp_path):
    zsh = needs("zsh")
    zdot = tmp_path / "zdot"
    functions = zdot / "functions"
    functions.mkdir(parents=True)
    shutil.copy(COMPLETIONS / "_iddm", functions / "_iddm")
    # fpath keeps zsh's own completion system but drops any other _iddm (an installed copy must not stand in)
    (zdot / ".zshrc").write_text(
        "keep=()\n"
        "for d in $fpath; do [[ -e $d/_iddm ]] || keep+=($d); done\n"
        f"fpath=('{functions}' $keep)\n"
        "autoload -Uz compinit\n"
        f"compinit -u -d '{zdot}/.zcompdump'\n"
        f"PROMPT='{PROMPT}'\n"
    )
    env = {**base_env(tmp_path), "ZDOTDIR": str(zdot)}
    # --no-globalrcs: no /etc/zsh/zshrc (only /etc/zsh/zshenv, which zsh always reads); -e: emacs keys
    assert complete_in([zsh, "--no-globalrcs", "-e", "-i"], env, tmp_path) == ["train", "train"]


def test_zsh_completes_after_iddm_install_completion(tmp_path):
    """`iddm --install-completion` writes ~/.zfunc/_iddm and a .zshrc line; that script must complete from the
    first TAB on, as the shipped one does."""
    zsh = needs("zsh")
    env = base_env(tmp_path)
    home = Path(env["HOME"])
    installed = subprocess.run([str(BIN / "iddm"), "--install-completion", "zsh"], capture_output=True, text=True,
                               env={**env, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}, timeout=60)
    assert installed.returncode == 0 and (home / ".zfunc" / "_iddm").is_file(), installed.stdout + installed.stderr
    typers_lines = (home / ".zshrc").read_text()
    assert "fpath+=~/.zfunc" in typers_lines
    # any other _iddm on fpath (an installed copy) must not stand in
    (home / ".zshrc").write_text("keep=()\nfor d in $fpath; do [[ -e $d/_iddm ]] || keep+=($d); done\nfpath=($keep)\n"
                                 + typers_lines + f"\nPROMPT='{PROMPT}'\n")
    assert complete_in([zsh, "--no-globalrcs", "-e", "-i"], env, tmp_path) == ["train", "train"]


def test_fish_completes_a_subcommand(tmp_path):
    fish = needs("fish")
    empty = tmp_path / "no-autoload"
    empty.mkdir()
    init = (f"set -g fish_complete_path '{empty}'; "  # only the sourced script, no autoloaded copy
            f"source '{COMPLETIONS / 'iddm.fish'}'; "
            f"function fish_prompt; printf '%s' '{PROMPT}'; end; "
            "set -g fish_greeting ''")
    env = base_env(tmp_path)
    assert complete_in([fish, "--no-config", "-i", "-C", init], env, tmp_path) == ["train", "train"]
