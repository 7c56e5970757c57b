"""Continue an interrupted run exactly where it stopped, from its run directory alone.

The run's ``config.toml`` gives every setting; the newest readable training state (``ckpt_last.pt``, else the newest
``ckpt_NNN.pt``) gives the weights, EMA, optimizer, scaler, step, epoch and position inside the epoch. Because every
random draw derives from (seed, step) or (seed, epoch, index), the continuation is the same computation as a run that
was never interrupted.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import tomllib

from iddm_cli.config import Config, config_from_dict
from iddm_cli.config.loader import coerce, kind_of
from iddm_cli.config.schema import SCHEMAS, schema_of
from iddm_cli.core.checkpoint import load_checkpoint, load_stored, numbered_checkpoints, read_checkpoint_file
from iddm_cli.core.devices import World
from iddm_cli.core.iddm_import import iddm_settings, is_iddm_checkpoint
from iddm_cli.core.latent import LatentCodec, load_autoencoder
from iddm_cli.core.rundir import RunLock
from iddm_cli.data.folder import DatasetInfo
from iddm_cli.errors import CheckpointError, ConfigError, DataError, IddmError, first_line
from iddm_cli.train.plan import Plan, absolute_path, plan_training

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Settings marked resumable in the schema may change on resume: none alters the model, the data or the optimisation.
IGNORED_ON_RESUME = ("resume", "start_epoch", "run_name", "result_path", "pretrain", "pretrain_path",
                     "autoencoder_ckpt")  # the last: where the same autoencoder moved (checked by its SHA-256)


def _kind(run_dir: Path) -> str:
    """The trainer of a run ("dm" or "vae"), from its config.toml."""
    try:
        return kind_of(tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return "dm"


def find_state(run_dir: Path, start_epoch: int = -1) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest training state that loads; ``start_epoch`` N picks ckpt_NNN.pt (the state after N epochs)."""
    if start_epoch >= 0:
        candidates = [run_dir / f"ckpt_{start_epoch:03d}.pt"]
    else:
        candidates = [run_dir / "ckpt_last.pt", *(path for _, path in reversed(numbered_checkpoints(run_dir)))]
    notes = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
            load_stored(state["network"], state["model"], path, check_only=True)  # else an older state
            return path, state, notes
        except CheckpointError as err:
            notes.append(f"skipped {path.name}: {err.problems[0]}")
    tried = ", ".join(p.name for p in candidates)
    if not notes and start_epoch < 0:  # no checkpoint at all: the run stopped before its first epoch ended
        raise CheckpointError(f"{run_dir} holds no checkpoint ({tried}): the run stopped before its first epoch ended "
                              "(the end of its train.log says why), so there is nothing to continue; a new run with "
                              f"its settings (in a new folder beside it): iddm {_kind(run_dir)} train --profile "
                              f"{shlex.quote(str(run_dir / 'config.toml'))}")
    raise CheckpointError(f"{run_dir} holds no readable training state (looked for {tried})"
                          + (f"; {notes[0]}" if notes else ""))


def _not_a_run(run: Path) -> ConfigError:
    """A folder without config.toml; an IDDM run directory (its ckpt_last.pt is IDDM's) gets the way forward."""
    last = run / "ckpt_last.pt"
    try:
        data = read_checkpoint_file(last) if last.is_file() else None
    except IddmError:
        data = None
    if not is_iddm_checkpoint(data):
        return ConfigError(f"{run} is not a run directory (it has no config.toml)")
    try:
        iddm_settings(data, last)  # one that no command here can take says why instead
    except CheckpointError as err:
        return ConfigError(f"{run} is an IDDM run, which cannot be resumed, and its weights do not convert: {err}")
    q = shlex.quote(str(last))
    return ConfigError(f"{run} is an IDDM run: its checkpoint lacks what an exact resume needs (the noise "
                       "schedule, data and training settings), so train on from its weights in a new run (iddm dm "
                       f"train ... --pretrain --pretrain-path {q}), or write an iddm checkpoint once with: iddm "
                       f"convert {q} OUT.pt")


def plan_resume(run_dir: str | Path, overrides: dict[str, Any], start_epoch: int = -1, world: World | None = None,
                data: DatasetInfo | None = None, force: bool = False) -> tuple[Plan, dict[str, Any], list[str]]:
    """(plan, state, notes). The checkpoint's own config is the truth; ``config.toml`` is the record written when
    the run was created, and any difference from it is an error naming the keys. ``overrides`` are flag values by
    key: unchanged values are accepted, changed ones only when the key is resumable. ``start_epoch`` N continues
    from ckpt_NNN.pt; newer states then need ``force`` and are moved aside when training starts. ``world``: this
    process's place in a launched group; ``data``: a scan made already. Writes nothing."""
    run = Path(run_dir).expanduser()
    toml = run / "config.toml"
    if not run.is_dir():
        raise ConfigError(f"{run} does not exist: give the run directory to continue (RESULT_PATH/RUN_NAME)"
                          if not run.exists() else f"{run} is a file, not a run directory")
    if not toml.is_file():
        raise _not_a_run(run)
    if world is None or world.is_main:
        RunLock(run).check()
    path, state, notes = find_state(run, start_epoch)
    config = config_from_dict(state["config"], f"{path} (the config saved in it)")
    created = _check_record(toml, path, state)
    changed = _apply_overrides(config, overrides, run)
    newer = _newer_states(run, path, state) if start_epoch >= 0 else []
    if newer and not force:
        raise ConfigError(f"--start-epoch {start_epoch}: newer states exist ({', '.join(p.name for p in newer)}); "
                          "continuing from an older one would replace them. Add --force to move them to "
                          f"{run}/superseded-<time>/ (nothing is deleted)")
    done, position = state["progress"]["epoch"], state["progress"].get("position", 0)
    total = state["progress"].get("total_steps")
    if config.train.kimg or config.train.max_time:  # a step budget: --epochs plays no part
        if total is not None and state["progress"]["step"] >= total:
            raise ConfigError(f"{path} is the end of its run ({_step_budget(config)}: {total} steps, all done); "
                              "nothing is left to train. To train on, start a new run from it: --pretrain "
                              f"--pretrain-path {path}")
    elif done >= config.train.epochs:
        state_is = f"is the state after {done} epochs" + (f" and {position} batches" if position else "")
        raise ConfigError(f"{path} {state_is}, and the run has train.epochs = {config.train.epochs}: nothing is "
                          f"left to train; extend it with --epochs {done + 10}, for example")
    plan = plan_training(config, run, world, data, classes=state["data"]["class_names"], network=state["network"],
                         codec=_stored_codec(state, overrides.get("autoencoder_ckpt")))
    plan.created_config, plan.superseded = created, newer
    saved_world = state["progress"].get("world_size", 1)
    if (config.train.kimg or config.train.max_time) and saved_world != plan.world_size:
        raise ConfigError(f"{path} was trained by {saved_world} process(es) and this resume would use "
                          f"{plan.world_size}: a --kimg or --max-time run counts its length in steps of its global "
                          f"batch, so it continues on {saved_world} (--devices {saved_world})")
    if changed:  # part of the plan, so train.log records them (config.toml stays the creation record)
        plan.notes.append(f"changed on resume: {', '.join(changed)}")
    if plan.data.class_names != state["data"]["class_names"] or plan.data.channels != state["data"]["channels"]:
        raise DataError(f"the dataset at {plan.data.root} no longer matches the run (classes or channels "
                        "changed); resume needs the data the run was started with")
    changed_data = _data_changes(plan.data, state["data"])
    if changed_data:
        plan.notes.append(f"note: the dataset changed since {path.name} was saved ({changed_data}): training goes "
                          "on with it, so the run is no longer the one an uninterrupted run would have made")
    if newer:
        notes.append(f"--force: {', '.join(p.name for p in newer)} will be moved to {run}/superseded-<time>/")
    notes.append(f"continuing from {path.name}: epoch {done + 1}, batch {position}, step {state['progress']['step']}")
    return plan, state, notes


def _data_changes(data: DatasetInfo, saved: dict[str, Any]) -> str:
    """How the images differ in number from those the checkpoint was trained on ("" = not at all, or not known:
    checkpoints before the total was stored have only the per-class counts)."""
    images = saved.get("images")
    changes = [f"{len(data.samples)} images, it had {images}"] if images not in (None, len(data.samples)) else []
    old = saved.get("class_counts", {})
    changes += [f"{name}: {n}, it had {old[name]}" for name, n in data.class_counts.items() if old.get(name, n) != n]
    return "; ".join(changes)


def _check_record(toml: Path, path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Compare config.toml with the config the run was created with (the checkpoint carries it; older checkpoints
    only their current one, so then only the settings that cannot change are compared). Returns the creation
    config."""
    try:
        recorded = config_from_dict(tomllib.loads(toml.read_text(encoding="utf-8")), str(toml))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{toml}: unreadable ({first_line(err)}); it is the run's record, written when the run "
                          "was created: restore it from a backup, or copy the settings from `iddm resume --dry-run` "
                          "of a copy of the run") from None
    created = state.get("created_config")
    written_by = SCHEMAS[kind_of(state["config"])]  # the kind alone: the config itself is checked below
    if schema_of(recorded) is not written_by:
        raise ConfigError(f"{toml} is for `{schema_of(recorded).command}` and {path} was written by "
                          f"`{written_by.command}`: the run directory is mixed up; restore its config.toml")
    reference = config_from_dict(created or state["config"], f"{path} (the config saved in it)")
    keys = [spec for name, spec in schema_of(reference).fields.items() if created or not spec.resumable]
    differ = [f"{spec.dotted} ({_value(reference, spec)!r} in {path.name}, {_value(recorded, spec)!r} in config.toml)"
              for spec in keys if _value(reference, spec) != _value(recorded, spec)]
    if differ:
        raise ConfigError(f"{toml} differs from {path}: {'; '.join(differ)}. config.toml records how the run was "
                          "created and is never read back: undo the edit. Settings that may change take a flag "
                          "(iddm resume RUN --epochs N, see iddm resume --help); others need a new run")
    return created or recorded.to_dict()


def _value(config: Config, spec: Any) -> Any:
    return getattr(getattr(config, spec.section), spec.name)


def _newer_states(run: Path, chosen: Path, state: dict[str, Any]) -> list[Path]:
    """States that a continuation from ``chosen`` would replace: later ckpt_NNN.pt, and a later ckpt_last.pt,
    ckpt_best.pt (an autoencoder's) or ckpt_best_fid.pt."""
    done = state["progress"]["epoch"]
    newer = [p for epochs, p in numbered_checkpoints(run) if epochs > done and p != chosen]
    for other in (run / "ckpt_last.pt", run / "ckpt_best.pt", run / "ckpt_best_fid.pt"):
        if not other.exists() or other == chosen:
            continue
        try:
            if load_checkpoint(other)["progress"]["step"] > state["progress"]["step"]:
                newer.append(other)
        except CheckpointError:
            newer.append(other)  # unreadable: kept aside all the same
    return newer


def _step_budget(config: Config) -> str:
    """The flag that set a step-budget run's length, as the user gave it: --max-time 10m or --kimg 26.688."""
    return f"--max-time {config.train.max_time}" if config.train.max_time else f"--kimg {config.train.kimg:g}"


def _apply_overrides(config: Config, overrides: dict[str, Any], run: Path) -> list[str]:
    """Apply the flags given with a resume; returns one line per setting changed (train.log records them)."""
    errors, changed = [], []
    schema = schema_of(config)
    for name, raw in overrides.items():
        if raw is None or name in IGNORED_ON_RESUME:
            continue
        spec = schema.fields.get(name)
        if spec is None:  # a flag of the other trainer's command (iddm resume accepts both)
            errors.append(f"--{name.replace('_', '-')}: not a setting of a `{schema.command}` run")
            continue
        value, expected = coerce(spec, raw)
        if expected is not None:
            errors.append(f"{spec.flag}: {spec.dotted} = {raw!r}: expected {expected}")
            continue
        section = getattr(config, spec.section)
        if spec.kind == "path":  # as the run records it; a run recorded relative paths before they were absolute
            value = absolute_path(value)
            if value == absolute_path(getattr(section, name)):
                continue
        if value == getattr(section, name):
            continue
        if name == "epochs" and (config.train.kimg or config.train.max_time):  # a step budget: epochs play no part
            errors.append(f"{spec.flag}: {spec.dotted} = {value}: {run} is a {_step_budget(config)} run, whose "
                          "length the epoch count cannot change; resume without it, and to train on after its end, "
                          f"start a new run from it (--pretrain --pretrain-path {run / 'ckpt_last.pt'})")
            continue
        if not spec.resumable:
            errors.append(f"{spec.flag}: {spec.dotted} cannot change when resuming ({getattr(section, name)!r} -> "
                          f"{value!r}): it would change the model, the data or the training computation. Start a new "
                          f"run instead (--pretrain --pretrain-path {run / 'ckpt_last.pt'} keeps the weights)")
            continue
        changed.append(f"{spec.dotted} {getattr(section, name)!r} -> {value!r}")
        setattr(section, name, value)
    if errors:
        raise ConfigError(*errors)
    return changed


def _stored_codec(state: dict[str, Any], moved_to: str | None) -> LatentCodec | None:
    """A resumed latent run's autoencoder: the file its checkpoint recorded, or ``--autoencoder-ckpt`` when that file
    moved, verified by its SHA-256 either way."""
    latent = state.get("latent")
    if latent is None:
        return None
    record = latent["autoencoder"]
    key = "--autoencoder-ckpt" if moved_to else "the run's autoencoder"
    if not moved_to and not Path(record["path"]).exists():
        raise CheckpointError(f"the run's autoencoder, {record['path']}, is not there: give it with "
                              "--autoencoder-ckpt FILE (its SHA-256 is checked)")
    return load_autoencoder(moved_to or record["path"], key, expect_sha256=record["sha256"],
                            hint="a latent run continues with the autoencoder it started with: give that file")
