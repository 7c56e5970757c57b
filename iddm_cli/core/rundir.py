"""The run directory: created fresh for every run (never reusing another run's folder) and its log writers."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from iddm_cli.config import Config, to_toml

RUN_MARKER = ".iddm-run"  # created exclusively: the run directory belongs to the process that made it


def plan_run_dir(result_path: str, run_name: str) -> tuple[Path, str | None]:
    """``result_path/run_name``, or ``run_name-2``, ``-3``, ... when that folder already holds files."""
    base = Path(result_path).expanduser() / run_name
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
    """config.toml (every start, so a resumed run records its overrides), cli.json and classes.json."""
    (run_dir / "config.toml").write_text(to_toml(config), encoding="utf-8")
    if resuming:
        return
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
