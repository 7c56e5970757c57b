"""The run directory: created fresh for every run (never reusing another run's folder) and its log writers."""

from __future__ import annotations

import errno
import fcntl
import glob
import importlib.util
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from iddm_cli.config import Config, to_toml
from iddm_cli.config.loader import name_problem
from iddm_cli.errors import ConfigError, StorageError

RUN_MARKER = ".iddm-run"  # created exclusively: the run directory belongs to the process that made it
LOCK_FILE = ".iddm-lock"  # locked (lockf) while a process trains in the run


def plan_run_dir(result_path: str, run_name: str) -> tuple[Path, str | None]:
    """``result_path/run_name``, or ``run_name-2``, ``-3``, ... when that folder already holds files; always a
    folder directly inside ``result_path``."""
    problem = name_problem(run_name)
    if problem:
        raise ConfigError(f"train.run_name = {run_name!r}: expected one folder name ({problem})")
    base = Path(result_path).expanduser() / run_name
    if base.exists() and not base.is_dir():
        raise ConfigError(f"{base} is a file, not a folder; choose another --run-name or --result-path")
    if not base.exists() or (base.is_dir() and not any(base.iterdir())):
        return base, None
    n = 2
    while (candidate := base.with_name(f"{run_name}-{n}")).exists():
        n += 1
    return candidate, f"{base} already holds a run, so this one goes to {candidate}"


def check_writable(path: Path) -> str | None:
    """None when ``path`` can be created, else the reason."""
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def check_free_space(path: Path, needed: int) -> None:
    """At least ``needed`` bytes free where ``path`` is (or will be), or StorageError."""
    folder = path
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise StorageError(f"{folder}: {free / 2**20:.1f} MiB free, but the run needs {needed / 2**20:.1f} MiB for "
                           "its checkpoints (each new one is written beside the last); free some space or choose "
                           "another --result-path")


def claim_run_dir(run_dir: Path, result_path: str, run_name: str, launch_id: str = "") -> Path:
    """Create ``run_dir`` and claim it with an exclusive marker file (holding ``launch_id``, torchrun's run id, so
    that a restarted launch finds it again); if another run took the name meanwhile (two launches at once), take
    the next free ``result_path/run_name-N``. Returns the folder claimed."""
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)  # an empty folder (made by hand, say) is free to use
            fd = os.open(run_dir / RUN_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            try:
                os.write(fd, launch_id.encode())
            finally:
                os.close(fd)
            return run_dir
        except FileExistsError:
            run_dir, _ = plan_run_dir(result_path, run_name)


NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)  # file systems that offer no locks


class RunLock:
    """Held by the process that trains in a run directory: ``.iddm-lock`` under an exclusive POSIX record lock
    (lockf: not inherited by forked DataLoader workers, and kept by NFS's lock manager), holding its PID and host.
    The kernel drops the lock when the process dies, however it dies, so a stale one is taken over. A lock is
    per process: two trainings of one run inside one Python process are not told apart."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.path, self.fd = run_dir, run_dir / LOCK_FILE, -1
        self.note: str | None = None  # set when the file system offers no locks

    def acquire(self) -> RunLock:
        try:
            fd = self._lock(os.O_RDWR | os.O_CREAT)
            if fd >= 0:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError as err:
            raise StorageError(f"cannot lock {self.path}: {(err.strerror or str(err)).lower()}") from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the lock; the file stays, and its text is overwritten by the next
            self.fd = -1

    def check(self) -> None:
        """Raise the same error as :meth:`acquire` when another process holds the lock; hold and write nothing.
        (Not for the holder itself: closing any descriptor of the file drops a POSIX lock.) A run this user cannot
        write is left to the planner's writability check."""
        if not self.path.exists():
            return
        try:
            fd = self._lock(os.O_RDWR)
        except PermissionError:
            return
        except OSError as err:
            if err.errno == errno.EROFS:
                return
            raise StorageError(f"cannot read the lock {self.path}: {(err.strerror or str(err)).lower()}") from None
        if fd >= 0:
            os.close(fd)

    def _lock(self, flags: int) -> int:
        """An open, locked descriptor; -1 when the file system has no locks (noted); ConfigError when held."""
        fd = os.open(self.path, flags, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in NO_LOCKS:
                os.close(fd)
                self.note = (f"warning: the file system of {self.run_dir} offers no locks, so nothing stops a second "
                             "process from training in this run at the same time")
                return -1
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = os.read(fd, 200).decode(errors="replace").split()
            os.close(fd)
            who = f"process {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
            raise ConfigError(f"{self.run_dir} is in use: {who} is training in it; wait for it to finish or stop it "
                              "(two processes writing one run would corrupt it)") from None
        return fd


def supersede(run_dir: Path, files: list[Path]) -> Path:
    """Move ``files`` into ``run_dir/superseded-<time>/`` (an --start-epoch --force continuation replaces them)."""
    folder = run_dir / time.strftime("superseded-%Y%m%d-%H%M%S")
    folder.mkdir(exist_ok=True)
    for path in files:
        path.replace(folder / path.name)
    return folder


def find_launch_run(result_path: str, run_name: str, launch_id: str) -> Path | None:
    """The run directory (``run_name``, ``run_name-2``, ...) whose marker holds ``launch_id``, if any."""
    base = Path(result_path).expanduser()
    for marker in sorted(base.glob(f"{glob.escape(run_name)}*/{RUN_MARKER}")):
        try:
            if launch_id and marker.read_text(encoding="utf-8") == launch_id:
                return marker.parent
        except OSError:
            continue
    return None


def write_run_files(run_dir: Path, config: Config, classes: dict[str, Any], provenance: dict[str, Any] | None,
                    resuming: bool) -> None:
    """config.toml, cli.json and classes.json, written once when the run is created: a resumed run leaves them as
    they are (its checkpoints carry the settings it continues with, and train.log the changes, with the plan)."""
    if resuming:
        return
    (run_dir / "config.toml").write_text(to_toml(config), encoding="utf-8")
    (run_dir / "cli.json").write_text(json.dumps({"argv": sys.argv, **(provenance or {})}, indent=2) + "\n",
                                      encoding="utf-8")
    (run_dir / "classes.json").write_text(json.dumps(classes, indent=2) + "\n", encoding="utf-8")


class RunLogger:
    """train.log (human), metrics.jsonl (one JSON record per line) and, when installed, TensorBoard events."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._log = open(run_dir / "train.log", "a", encoding="utf-8")
        self._metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._tb = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, line: str) -> None:
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        self._log.flush()

    def metrics(self, record: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if key not in ("step", "epoch", "event") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{record.get('event', 'train')}/{key}", value, record["step"])

    def close(self) -> None:
        self._log.close()
        self._metrics.close()
        if self._tb is not None:
            self._tb.close()


class NullLogger:
    """What ranks other than 0 log through: nothing (rank 0 alone writes the run directory)."""

    def log(self, line: str) -> None:
        pass

    def metrics(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
