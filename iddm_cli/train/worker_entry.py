"""The first code a self-launched worker runs (``python -m iddm_cli.train.worker_entry JOB.json``).

Signals are caught from the first instruction: a Ctrl-C that arrives while torch is still being imported is
remembered and ends the worker quietly with 130 once :func:`iddm_cli.train.worker.main` runs, instead of a
KeyboardInterrupt traceback from inside the import.

The worker leaves with ``os._exit`` once its results, logs and error record are written and closed: the interpreter's
own teardown would destroy objects that still hold the process group (DDP's reducer), and gloo's threads meeting a
finalising interpreter abort the process ("terminate called without an active exception", SIGABRT) after a run
that succeeded.
"""

from __future__ import annotations

import os
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
    code = run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
