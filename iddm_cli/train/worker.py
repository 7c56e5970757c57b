"""One rank of a multi-process run: join the group, let rank 0 plan, share its plan, train.

iddm's own launcher starts ``python -m iddm_cli.train.worker_entry JOB.json`` (which calls :func:`main`); under
torchrun the ``iddm`` command itself calls :func:`run_worker`. Rank 0 alone reads the dataset listing, the run
directory and any checkpoint, and broadcasts them, so every rank indexes the same files and the other ranks need no
access to the run directory (on other nodes it may not exist).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from iddm_cli.config import FIELDS, Config, config_from_dict
from iddm_cli.config.loader import coerce
from iddm_cli.config.schema import DeviceConfig
from iddm_cli.core.devices import World, plan_layout, world_from_env
from iddm_cli.core.latent import codec_from_record
from iddm_cli.core.reporting import Reporter, SilentReporter, build_reporter
from iddm_cli.core.rundir import find_launch_run
from iddm_cli.errors import ConfigError, ExitCode, IddmError, exit_code_for_signal, first_line
from iddm_cli.train import distributed as dist
from iddm_cli.train.distributed import PeerLost
from iddm_cli.train.engine import TrainResult, plan_training, train
from iddm_cli.train.job import Job, prepare

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class FailedOnRankZero(IddmError):
    """What the other ranks raise when rank 0 could not plan the run; rank 0 reports the reason."""


class Stopped(IddmError):
    """A signal while the worker was starting or finishing, outside the training loop's own handling."""

    def __init__(self, signum: int):
        self.exit_code = exit_code_for_signal(signum)
        super().__init__(f"stopped by {signal.Signals(signum).name} while starting or finishing; the last saved "
                         "checkpoint, if any, is kept", all_ranks=True)


def _stop(signum: int, frame: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):  # one-shot: the terminal and the launcher both deliver it
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def _die_with_launcher() -> None:
    """Linux: if the launcher is killed, this worker gets SIGTERM, so it saves and stops instead of running on
    orphaned (set here rather than in a preexec_fn, which is unsafe in a threaded parent)."""
    launcher = int(os.environ.get("IDDM_LAUNCHER_PID", "0"))
    if not launcher or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher:  # the launcher died before the line above
        raise Stopped(signal.SIGTERM)


def _device_settings(job: Job) -> Config:
    """The settings that pick this rank's device, known before the group exists: the job's config, or for a
    resume the device settings iddm's launcher put in the job; under torchrun, the run's config.toml (as the run was
    created) with the flags given, which a node without the run directory must give as --device (every rank must
    choose the same backend)."""
    if job.config is not None:
        return config_from_dict(job.config, "the resolved configuration")
    config = Config()
    toml = Path(job.run_dir or "").expanduser() / "config.toml"
    if toml.is_file():
        try:
            config = config_from_dict(tomllib.loads(toml.read_text(encoding="utf-8")), str(toml))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{toml}: unreadable ({first_line(err)}); give the run's --device on the command "
                              "line") from None
    elif job.overrides.get("device") is None:
        raise ConfigError(f"this node cannot read {toml}; give the run's --device (and --dist-timeout if it was "
                          "changed) on the command line, or put the run directory on a shared filesystem")
    for name in DeviceConfig.__dataclass_fields__:
        if job.overrides.get(name) is None:
            continue
        value, expected = coerce(FIELDS[name], job.overrides[name])
        if expected is None:
            setattr(config.device, name, value)
    return config


def launch_id() -> str:
    """torchrun's run id (``--rdzv-id``, or the id ``--standalone`` makes up), the same across its restarts; empty
    when there is none or it is torchrun's default "none", which unrelated launches share."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return "" if run_id in ("", "none") else run_id


def _after_restart(job: Job, reporter: Reporter) -> Job:
    """Under ``torchrun --max-restarts``, a restarted ``iddm dm train`` continues the run that its first attempt
    created (found by torchrun's run id) from the last checkpoint, instead of starting a new one."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if job.kind != "new" or not restarts or job.config is None:
        return job
    train_cfg = job.config["train"]
    run = find_launch_run(train_cfg["result_path"], train_cfg["run_name"], launch_id())
    if run is None or not any(run.glob("ckpt_*.pt")):
        if not launch_id():
            reporter.info("note: torchrun restarted this command; give torchrun --rdzv-id (or --standalone) so "
                          "that a restart continues the run instead of starting a new one")
        return job
    reporter.info(f"torchrun restart {restarts}: continuing {run} from its last checkpoint")
    return Job("resume", run_dir=str(run), provenance=job.provenance)


def run_worker(job: Job, world: World, reporter: Reporter) -> TrainResult | None:
    """Train as rank ``world.rank``; returns the result on rank 0."""
    config = _device_settings(job)
    device = plan_layout(config, world).device(world)
    dist.init_group(world, device, config.device.dist_timeout)
    shared: Any = None
    if world.is_main:
        try:
            job = _after_restart(job, reporter)
            plan, state, notes = prepare(job, world)
            if state is None:
                plan.claim(launch_id())
            if not os.environ.get("IDDM_LAUNCHED"):  # iddm's launcher printed them already
                for line in notes:
                    reporter.info(line)
            codec = (plan.codec.record, plan.codec.model.state_dict()) if plan.codec is not None else None
            shared = (plan.config.to_dict(), plan.data, str(plan.run_dir), state, plan.network, plan.val, codec)
        except BaseException as err:  # the other ranks wait for the plan: tell them, then fail
            problems = err.problems if isinstance(err, IddmError) else [f"rank 0 failed: {type(err).__name__}"]
            dist.broadcast_object(("failed", list(problems)), world)
            raise
    shared = dist.broadcast_object(shared, world)
    if not world.is_main:
        if shared[0] == "failed":
            raise FailedOnRankZero(*shared[1], all_ranks=True)
        config_dict, data, run_dir, state, network, val, codec = shared
        plan = plan_training(config_from_dict(config_dict, "rank 0's configuration"), Path(run_dir), world, data,
                             network=network, val=val,  # computes as rank 0's model (a pretrained or resumed one's)
                             codec=codec_from_record(*codec) if codec is not None else None)
        reporter = SilentReporter()
    try:
        result = train(plan, reporter, job.provenance, state, world)
    except RuntimeError as err:  # DDP's own all-reduce (in backward) meets a dead peer
        if world.size > 1 and dist.is_comm_failure(err):
            raise dist.peer_lost(err, "a training step") from err
        raise
    dist.shutdown()  # on failure the process just ends: tearing down NCCL with a dead peer can hang
    return result if world.is_main else None


def _write(path: str | None, record: dict[str, Any]) -> None:
    if path:
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(path)


def _report(world: World | None, code: int, problems: list[str], peer_lost: bool = False,
            all_ranks: bool = False) -> None:
    """The error record the launcher reads (IDDM_ERROR_FILE) to tell which rank failed first, and why."""
    _write(os.environ.get("IDDM_ERROR_FILE"), {"rank": world.rank if world else -1, "code": code,
                                               "time": time.time(), "problems": problems, "peer_lost": peer_lost,
                                               "all_ranks": all_ranks})


def main(argv: list[str], early_signals: list[int] | None = None) -> int:
    """Entry point of a worker started by :func:`iddm_cli.train.launch.launch` (through
    :mod:`iddm_cli.train.worker_entry`); the launcher reports errors. ``early_signals``: signals that arrived
    before this function ran."""
    world = world_from_env()
    # until the training loop installs its own handling, a signal stops the worker where it is
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if early_signals:
            raise Stopped(early_signals[0])
        _die_with_launcher()
        if world is None or len(argv) != 1:
            raise IddmError("iddm_cli.train.worker_entry is started by iddm itself (iddm dm train --devices N)")
        job = Job(**json.loads(Path(argv[0]).read_text(encoding="utf-8")))
        reporter = build_reporter(job.reporter) if world.is_main else SilentReporter()
        result = run_worker(job, world, reporter)
        if result is not None:
            _write(os.environ.get("IDDM_RESULT_FILE"), {
                "run_dir": str(result.run_dir), "steps": result.steps, "final_loss": result.final_loss,
                "checkpoint": str(result.checkpoint), "previews": [str(p) for p in result.previews],
                "skipped_steps": result.skipped_steps})
        return 0
    except IddmError as err:
        _report(world, int(err.exit_code), err.problems, isinstance(err, (PeerLost, FailedOnRankZero)),
                err.all_ranks)
        if not os.environ.get("IDDM_ERROR_FILE"):
            print("\n".join(f"error: {p}" for p in err.problems), file=sys.stderr)
        return int(err.exit_code)
    except BaseException as err:  # a bug: keep the traceback, and tell the launcher which rank failed
        traceback.print_exc()
        _report(world, int(ExitCode.FAILURE), [f"{type(err).__name__}: {err} (a bug in iddm; the traceback is above)"])
        return int(ExitCode.FAILURE)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
