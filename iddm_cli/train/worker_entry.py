"""The first code a self-launched worker runs (``python -m iddm_cli.train.worker_entry JOB.json``).

Signals are caught from the first instruction: a Ctrl-C that arrives while torch is still being imported is
remembered and ends the worker quietly with 130 once :func:`iddm_cli.train.worker.main` runs, instead of a
KeyboardInterrupt traceback from inside the import.
"""

from __future__ import annotations

import signal
import sys

EARLY: list[int] = []


def _remember(signum: int, frame: object) -> None:
    EARLY.append(signum)


def run() -> int:
    from iddm_cli.train.worker import main  # imports torch

    return main(sys.argv[1:], EARLY)


if __name__ == "__main__":
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _remember)
    sys.exit(run())
