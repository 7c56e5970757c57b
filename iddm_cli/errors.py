"""Errors that are the user's to fix, and the exit codes they map to.

Commands turn these into one line on stderr (all lines for a ConfigError) and an exit code; a traceback is shown
only with ``--debug`` or ``IDDM_DEBUG=1``. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2  # bad flag, bad profile, bad config value
    DATA = 3  # missing, empty or unusable dataset
    STORAGE = 4  # the disk: full, read-only or failing while a file was written (the previous checkpoint is kept)
    INTERRUPTED = 130
    TERMINATED = 143


STOP_CODES = (ExitCode.INTERRUPTED, ExitCode.TERMINATED)  # a run stopped by a signal: saved, and resumable


def exit_code_for_signal(signum: int) -> ExitCode:
    """130 for SIGINT, 143 for SIGTERM (128 + the signal number, the shell's convention)."""
    return ExitCode.INTERRUPTED if signum == signal.SIGINT else ExitCode.TERMINATED


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class IddmError(Exception):
    """Base class: a problem the user can fix. ``problems`` holds one line per problem."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, *problems: str, all_ranks: bool = False):
        self.problems = [p for p in problems if p]
        self.all_ranks = all_ranks  # raised by every process of a multi-process run alike: rank 0 reports it
        super().__init__("\n".join(self.problems))


class ConfigError(IddmError):
    exit_code = ExitCode.USAGE


class DataError(IddmError):
    exit_code = ExitCode.DATA


class CheckpointError(IddmError):
    exit_code = ExitCode.USAGE


class StorageError(IddmError):
    """Writing failed (disk full, permission, I/O error) or cannot succeed (not enough free space)."""

    exit_code = ExitCode.STORAGE


class TrainingError(IddmError):
    """Training cannot go on (for example the loss stays non-finite); the last good checkpoint is kept."""

    exit_code = ExitCode.FAILURE


class Interrupted(IddmError):
    """Ctrl-C or SIGTERM during training: the state was saved and the run can continue."""

    def __init__(self, signum: int, run_dir: object):
        self.exit_code = exit_code_for_signal(signum)
        super().__init__(f"interrupted by {signal.Signals(signum).name}; the state is saved. "
                         f"resume with: iddm resume {run_dir}", all_ranks=True)
