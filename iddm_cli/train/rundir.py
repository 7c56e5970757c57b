"""The run directory: created fresh for every run (never reusing another run's folder) and its log writers."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any


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
