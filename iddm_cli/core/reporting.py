"""How the engines talk to people: a small interface the CLI implements with Rich, a plain default, and the pipe
that carries a self-launched worker's reports to the process that started it."""

from __future__ import annotations

import json
import os
import select
import sys
import time
from contextlib import suppress
from typing import Any


class Reporter:
    """Plain text on stderr: what the Python API uses, and what non-terminal output gets."""

    def info(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int, epochs: int | str, steps: int) -> None:
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


FORWARDED = ("info", "start_epoch", "step", "status", "end_epoch")  # the calls a worker sends to its launcher


class ForwardingReporter(Reporter):
    """Rank 0 of a self-launched run: each call travels as one JSON line through a pipe to the launcher, which
    replays it on the reporter its caller gave (Rich on the command line, anything through the Python API)."""

    def __init__(self, fd: int):
        self.stream: Any = os.fdopen(fd, "wb")  # buffered: a line is written whole even if a signal interrupts it

    def _send(self, name: str, *args: Any) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write((json.dumps([name, *args]) + "\n").encode())
            self.stream.flush()
        except OSError:  # the launcher is gone (it sends SIGTERM as it dies): keep training quietly until then
            self.stream = None

    def info(self, message: str) -> None:
        self._send("info", message)

    def start_epoch(self, epoch: int, epochs: int | str, steps: int) -> None:
        self._send("start_epoch", epoch, epochs, steps)

    def step(self, done: int, loss: float) -> None:
        self._send("step", done, loss)

    def status(self, line: str) -> None:
        self._send("status", line)

    def end_epoch(self, epoch: int, summary: dict[str, Any]) -> None:
        self._send("end_epoch", epoch, summary)

    def close(self) -> None:
        if self.stream is not None:
            with suppress(OSError):
                self.stream.close()
            self.stream = None


class Relay:
    """The launcher's end of a :class:`ForwardingReporter` pipe: replays complete lines on ``reporter``."""

    def __init__(self, fd: int, reporter: Reporter):
        self.fd, self.reporter, self.pending = fd, reporter, b""
        os.set_blocking(fd, False)
        self.poll = select.poll()  # not select(): it fails on descriptors above 1023
        self.poll.register(fd, select.POLLIN)

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for output and replay what arrived."""
        if self.fd < 0:  # rank 0 has finished; the others may still be ending
            time.sleep(timeout)
            return
        if not self.poll.poll(timeout * 1000):
            return
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:  # every writer closed its end
                self.poll.unregister(self.fd)
                os.close(self.fd)
                self.fd = -1
                break
            self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            try:
                name, *args = json.loads(line)
            except ValueError:  # not a report (nothing else writes to the pipe): skip it
                continue
            if name in FORWARDED:
                getattr(self.reporter, name)(*args)

    def close(self) -> None:
        if self.fd >= 0:
            self.pump(0)
        if self.fd >= 0:
            self.poll.unregister(self.fd)
            os.close(self.fd)
            self.fd = -1


def build_reporter(kind: str) -> Reporter:
    """A worker's reporter, by the name its job carries: forward (to iddm's launcher), plain or silent."""
    if kind == "forward" and os.environ.get("IDDM_REPORT_FD"):
        return ForwardingReporter(int(os.environ["IDDM_REPORT_FD"]))
    return SilentReporter() if kind == "silent" else Reporter()
