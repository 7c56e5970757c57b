"""Continue an interrupted run exactly where it stopped, from its run directory alone.

The run's ``config.toml`` gives every setting; the newest readable training state (``ckpt_last.pt``, else the newest
``ckpt_NNN.pt``) gives the weights, EMA, optimizer, scaler, step, epoch and position inside the epoch. Because every
random draw derives from (seed, step) or (seed, epoch, index), the continuation is the same computation as a run that
was never interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from iddm_cli.config import FIELDS, Config, config_from_dict
from iddm_cli.config.loader import coerce
from iddm_cli.core.checkpoint import load_checkpoint
from iddm_cli.core.devices import World
from iddm_cli.data.folder import DatasetInfo
from iddm_cli.errors import CheckpointError, ConfigError, DataError
from iddm_cli.train.plan import Plan, plan_training

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Settings that may change on resume (marked resumable in the schema): none alters the model, the data or the
# optimisation.
RESUME_OVERRIDES = tuple(name for name, spec in FIELDS.items() if spec.resumable)
IGNORED_ON_RESUME = ("resume", "start_epoch", "run_name", "result_path", "pretrain", "pretrain_path")


def find_state(run_dir: Path, start_epoch: int = -1) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest training state that loads; ``start_epoch`` N picks ckpt_NNN.pt (the state after N epochs)."""
    if start_epoch >= 0:
        candidates = [run_dir / f"ckpt_{start_epoch:03d}.pt"]
    else:
        numbered = sorted(run_dir.glob("ckpt_[0-9][0-9][0-9]*.pt"), key=lambda p: int(p.stem[5:]), reverse=True)
        candidates = [run_dir / "ckpt_last.pt", *numbered]
    notes = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            return path, load_checkpoint(path), notes
        except CheckpointError as err:
            notes.append(f"skipped {path.name}: {err.problems[0]}")
    tried = ", ".join(p.name for p in candidates)
    raise CheckpointError(f"{run_dir} holds no readable training state (looked for {tried})"
                          + (f"; {notes[0]}" if notes else ""))


def plan_resume(run_dir: str | Path, overrides: dict[str, Any], start_epoch: int = -1, world: World | None = None,
                data: DatasetInfo | None = None) -> tuple[Plan, dict[str, Any], list[str]]:
    """(plan, state, notes). ``overrides`` are flag values by key; unchanged values are accepted, changed ones
    only when they are in RESUME_OVERRIDES (the device layout among them: a run may continue on another number
    of processes). ``world``: this process's place in a launched group; ``data``: a scan made already."""
    run = Path(run_dir).expanduser()
    toml = run / "config.toml"
    if not toml.is_file():
        raise ConfigError(f"{run} is not a run directory (it has no config.toml)")
    config = config_from_dict(tomllib.loads(toml.read_text(encoding="utf-8")), str(toml))
    _apply_overrides(config, overrides, run)
    path, state, notes = find_state(run, start_epoch)
    done, position = state["progress"]["epoch"], state["progress"].get("position", 0)
    if done >= config.train.epochs:
        state_is = f"is the state after {done} epochs" + (f" and {position} batches" if position else "")
        raise ConfigError(f"{path} {state_is}, and the run has train.epochs = {config.train.epochs}: nothing is "
                          f"left to train; extend it with --epochs {done + 10}, for example")
    plan = plan_training(config, run, world, data)
    if plan.data.class_names != state["data"]["class_names"] or plan.data.channels != state["data"]["channels"]:
        raise DataError(f"the dataset at {config.data.dataset_path} no longer matches the run (classes or channels "
                        "changed); resume needs the data the run was started with")
    notes.append(f"continuing from {path.name}: epoch {done + 1}, batch {position}, step {state['progress']['step']}")
    return plan, state, notes


def _apply_overrides(config: Config, overrides: dict[str, Any], run: Path) -> None:
    errors = []
    for name, raw in overrides.items():
        if raw is None or name in IGNORED_ON_RESUME:
            continue
        spec = FIELDS[name]
        value, expected = coerce(spec, raw)
        if expected is not None:
            errors.append(f"{spec.flag}: {spec.dotted} = {raw!r}: expected {expected}")
            continue
        section = getattr(config, spec.section)
        if value == getattr(section, name):
            continue
        if name not in RESUME_OVERRIDES:
            errors.append(f"{spec.flag}: {spec.dotted} cannot change when resuming ({getattr(section, name)!r} -> "
                          f"{value!r}): it would change the model, the data or the training computation. Start a new "
                          f"run instead (--pretrain --pretrain-path {run / 'ckpt_last.pt'} keeps the weights)")
            continue
        setattr(section, name, value)
    if errors:
        raise ConfigError(*errors)
