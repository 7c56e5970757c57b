"""Starting training: in this process, in one worker process per device that iddm starts itself, or as one rank
of a group that torchrun (or a Slurm wrapper) started.

:func:`execute` is the one entry point of the CLI and the Python API:

- under a launcher (RANK and WORLD_SIZE set) this process joins the group and trains as its rank;
- otherwise it plans the run here (so every user error appears before any process starts), then trains in this
  process when the layout has one process, or starts one worker per device (``python -m iddm_cli.train.worker_entry``)
  with a rendezvous port chosen once here on 127.0.0.1 (MASTER_ADDR and MASTER_PORT override it) and supervises
  them: a signal is passed on to every worker (a second one kills them), and when one worker fails the others are
  stopped and its error is raised here with its exit code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from iddm_cli.core.devices import Layout, world_from_env
from iddm_cli.core.reporting import Relay, Reporter
from iddm_cli.errors import STOP_CODES, ExitCode, IddmError, exit_code_for_signal
from iddm_cli.train.engine import TrainResult, train
from iddm_cli.train.job import Job, prepare
from iddm_cli.train.worker import run_worker

GRACE_S = 5.0  # after one worker fails, how long the others get to exit by themselves before they are killed


class WorkerFailed(IddmError):
    """A worker process failed (or all were interrupted): its own error, with its exit code."""

    def __init__(self, exit_code: int, *problems: str):
        self.exit_code = exit_code  # type: ignore[assignment]
        super().__init__(*problems)


def execute(job: Job, reporter: Reporter, dry_run: bool = False) -> TrainResult | None:
    """Train as ``job`` says, in whichever way the environment and the device layout call for."""
    world = world_from_env()
    if world is not None and not dry_run:
        return run_worker(job, world, reporter)
    plan, state, notes = prepare(job)
    quiet = world is not None and not world.is_main
    for line in notes + (plan.describe(cost=True) if dry_run else []):
        if not quiet:
            reporter.info(line)
    if dry_run:
        return None
    if plan.world_size == 1:
        return train(plan, reporter, job.provenance, state)
    # rank 0 plans again without re-scanning, and sends its reports here, to the caller's reporter
    layout, job = plan.layout, replace(job, data=plan.data.to_json(), reporter="forward")
    if job.kind == "resume":  # the workers pick their devices from the job: the run's settings, not config.toml's
        job.overrides = {**job.overrides, **asdict(plan.config.device)}
    del plan, state  # the workers build their own; this process only supervises
    return launch(job, layout, reporter)


# ----------------------------------------------------------------------------------------------- self-launch
def free_port() -> int:
    """A port nobody listens on now; chosen once, here, and handed to every worker."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def rank_env(rank: int, n: int, addr: str, port: int) -> dict[str, str]:
    """The environment of rank ``rank`` of ``n`` processes on this machine: the process-group variables, the
    threads each may use, gloo on loopback. Values the user set (OMP_NUM_THREADS, GLOO_SOCKET_IFNAME) stay."""
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n),
           "MASTER_ADDR": addr, "MASTER_PORT": str(port)}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, cpus // n)))  # n processes share the cores
    if addr in ("127.0.0.1", "localhost"):  # gloo (CPU runs, and object collectives beside NCCL) on loopback
        env["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")  # its own interface choice is unreliable
    return env


def worker_env(rank: int, n: int, addr: str, port: int, folder: Path) -> dict[str, str]:
    """A self-launched worker's whole environment: this one, its rank's, and where it reports to the launcher."""
    return {**os.environ, **rank_env(rank, n, addr, port), "IDDM_LAUNCHED": "1",
            "IDDM_LAUNCHER_PID": str(os.getpid()), "IDDM_ERROR_FILE": str(folder / f"error-{rank}.json"),
            "IDDM_RESULT_FILE": str(folder / "result.json")}


def launch(job: Job, layout: Layout, reporter: Reporter) -> TrainResult:
    """Start ``layout.nproc`` workers on this machine, supervise them, and return rank 0's result."""
    n = layout.nproc
    addr = os.environ.get("MASTER_ADDR") or "127.0.0.1"
    port = int(os.environ.get("MASTER_PORT") or free_port())
    reporter.info(f"starting {n} worker processes ({layout.backend}, rendezvous {addr}:{port}); "
                  "for several machines start iddm with torchrun (see README)")
    with tempfile.TemporaryDirectory(prefix="iddm-launch-") as tmp:
        folder = Path(tmp)
        (folder / "job.json").write_text(json.dumps(asdict(job)), encoding="utf-8")
        cmd = [sys.executable, "-m", "iddm_cli.train.worker_entry", str(folder / "job.json")]
        read_end, write_end = os.pipe()  # rank 0's reports (ForwardingReporter) come back through it
        relay = Relay(read_end, reporter)
        try:
            procs = [subprocess.Popen(cmd, env={**worker_env(r, n, addr, port, folder),
                                                **({"IDDM_REPORT_FD": str(write_end)} if r == 0 else {})},
                                      pass_fds=(write_end,) if r == 0 else ()) for r in range(n)]
        finally:
            os.close(write_end)
        try:
            exits, signals, killed = _supervise(procs, relay.pump)
        finally:
            relay.close()
            reporter.close()  # as a one-process run closes it (a live progress bar stops)
        if signals:  # a worker stopped before its handlers were installed ended by the signal itself
            exits = [(t, r, exit_code_for_signal(-c) if c in (-signal.SIGINT, -signal.SIGTERM) else c)
                     for t, r, c in exits]
        if len(signals) > 1 and any(code != 0 for _, _, code in exits):
            raise WorkerFailed(exit_code_for_signal(signals[0]),
                               f"stopped at once by a second {signal.Signals(signals[1]).name}; the last complete "
                               f"checkpoint is kept (iddm resume RUN_DIR continues from it)")
        _raise_for(exits, folder, killed)
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    return TrainResult(Path(result["run_dir"]), result["steps"], result["final_loss"], Path(result["checkpoint"]),
                       [Path(p) for p in result["previews"]], result["skipped_steps"])


def _supervise(procs: list[subprocess.Popen], wait: Callable[[float], None] = time.sleep,
               ) -> tuple[list[tuple[float, int, int]], list[int], set[int]]:
    """Wait for every worker (``wait(seconds)`` between polls: the relay of rank 0's reports); pass signals on;
    after a failure give the rest GRACE_S, then kill them.
    Returns ((time, rank, exit code) in the order the workers ended, the signals received, the ranks killed
    here)."""
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum if len(received) == 1 else signal.SIGKILL)

    restore = {}
    if threading.current_thread() is threading.main_thread():
        restore = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    exits: list[tuple[float, int, int]] = []
    ended: set[int] = set()
    killed: set[int] = set()
    failed_at: float | None = None
    try:
        while len(exits) < len(procs):
            for rank, p in enumerate(procs):
                if rank not in ended and (code := p.poll()) is not None:
                    ended.add(rank)
                    exits.append((time.time(), rank, code))
                    if code not in (0, *STOP_CODES) and failed_at is None:
                        failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
                for rank, p in enumerate(procs):
                    if p.poll() is None:
                        p.kill()  # blocked in a collective, SIGTERM would not reach it
                        killed.add(rank)
            wait(0.05)
    except BaseException:  # never leave workers running unsupervised (a reporter that raised, say)
        for p in procs:
            if p.poll() is None:
                p.kill()
        raise
    finally:
        for sig, handler in restore.items():
            signal.signal(sig, handler)
    return exits, received, killed


def _raise_for(exits: list[tuple[float, int, int]], folder: Path, killed: set[int] = frozenset()) -> None:
    """Raise the error that explains the ending: the first failing worker's own, not its peers' lost contact,
    nor the ranks this launcher killed afterwards."""
    errors = {}
    for rank in range(len(exits)):
        path = folder / f"error-{rank}.json"
        if path.exists():
            errors[rank] = json.loads(path.read_text(encoding="utf-8"))
    failures = [(errors[r]["time"] if r in errors else t, r, c) for t, r, c in exits if c != 0]
    if not failures:
        return
    real = [f for f in failures if f[2] not in STOP_CODES and not errors.get(f[1], {}).get("peer_lost")
            and f[1] not in killed]
    interrupted = [f for f in failures if f[2] in STOP_CODES]
    reported = [f for f in failures if f[1] in errors]  # e.g. lost contact, when nothing else explains it
    _, rank, code = min(real or interrupted or reported or failures, key=lambda x: (x[0], x[1]))
    if not real and interrupted and errors.get(0, {}).get("code") in STOP_CODES:
        raise WorkerFailed(errors[0]["code"], *errors[0]["problems"])  # rank 0 saved and says how to resume
    if rank in errors:
        problems = errors[rank]["problems"]
        prefix = "" if errors[rank].get("all_ranks") else f"rank {rank}: "
        raise WorkerFailed(errors[rank]["code"], *(prefix + p for p in problems),
                           "the other worker processes were stopped" if len(exits) > 1 else "")
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    hint = " (out of memory?)" if code == -signal.SIGKILL else ""
    raise WorkerFailed(ExitCode.FAILURE, f"rank {rank} {how}{hint}; the other worker processes were stopped")
