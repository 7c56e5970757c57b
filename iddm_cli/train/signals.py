"""How a training process meets SIGINT and SIGTERM: it finishes the step, saves and stops (the engine acts on the
flag these handlers set), and its DataLoader workers leave a Ctrl-C to it."""

from __future__ import annotations

import signal
import threading
from typing import Any


def ignore_ctrl_c(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C: a terminal sends it to the whole process group, and the training process,
    which saves and stops, ends its workers itself (a worker that died first would fail the next batch). SIGTERM
    keeps its default: it is how the workers are ended when they do not stop by themselves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_on_signals(session: Any) -> Any:
    """SIGINT/SIGTERM set ``session.stop_signal``, which the loop checks after each step; in a single process a
    second one acts at once, except during a checkpoint write, which it lets finish (signals_held in
    core/checkpoint.py). A launched worker never escalates: launchers deliver a signal more than once (the terminal
    and torchrun both do), and iddm's own launcher escalates itself. Returns a function that restores the previous
    handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        session.stop_signal = signum
        if not session.world.launched:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    for sig in previous:
        signal.signal(sig, handler)
    return lambda: [signal.signal(sig, h) for sig, h in previous.items()]
