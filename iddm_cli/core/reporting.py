"""How the engine talks to people: a small interface the CLI implements with Rich, and a plain default."""

from __future__ import annotations

import sys
from typing import Any


class Reporter:
    """Plain text on stderr: what the Python API uses, and what non-terminal output gets."""

    def info(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, done: int, loss: float) -> None:
        pass

    def status(self, line: str) -> None:
        """A status line every log_every steps; a live progress display may skip it."""
        print(line, file=sys.stderr, flush=True)

    def end_epoch(self, epoch: int, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class SilentReporter(Reporter):
    def info(self, message: str) -> None:
        pass

    def status(self, line: str) -> None:
        pass
