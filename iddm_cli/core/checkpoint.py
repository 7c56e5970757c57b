"""Self-describing checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

One file holds everything: the resolved config, the network name and arguments, image size and channels, class
names and counts, the diffusion schedule, versions, training progress, the raw and EMA weights, and the optimizer
and GradScaler state. Only tensors and plain Python values are stored, so loading never runs code.
"""

from __future__ import annotations

import os
import pickle
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iddm_cli import __version__
from iddm_cli.errors import CheckpointError, first_line

FORMAT = "iddm"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    return {"iddm": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``: readers only ever see a
    complete old file or a complete new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an iddm checkpoint safely; every failure is a one-line CheckpointError naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [x.strip() for x in str(err).splitlines()]
        unsafe = next((x for x in lines if "Unsupported global" in x), None)
        if unsafe is None:  # not a pickle at all, or a damaged one
            detail = next((x for x in lines if x.startswith("Unsupported")), "unreadable pickle")
            raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({detail[:160]}); "
                                  "try an earlier checkpoint of the run") from None
        raise CheckpointError(f"{path} holds objects that could run code when loaded, so it was not loaded "
                              f"({unsafe[:200]}); use checkpoints written by iddm") from None
    except Exception as err:  # any other failure to parse: a damaged or foreign file (never executed)
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({first_line(err)[:160]}); "
                              "try an earlier checkpoint of the run") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an iddm checkpoint (no 'format': 'iddm' entry)")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer iddm (format {data['format_version']}); upgrade iddm")
    return data


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """DDP and torch.compile wrap the model; their keys carry a prefix that plain models lack."""
    out = {}
    for key, value in state.items():
        for p in (prefix, "_orig_mod."):
            key = key.removeprefix(p)
        out[key] = value
    return out


def load_pretrained(model: nn.Module, ckpt: dict[str, Any], path: Path) -> list[str]:
    """Copy weights for fine-tuning. Returns notes; any mismatch other than the class embedding is an error."""
    source = "ema" if ckpt.get("ema") else "model"
    state = strip_prefix(ckpt[source])
    own = model.state_dict()
    notes = [f"pretrained weights: {path} ({'EMA' if source == 'ema' else 'raw'} weights)"]
    class_key = "label_emb.weight"
    if class_key in state and class_key in own and state[class_key].shape != own[class_key].shape:
        old, new = state[class_key].shape[0] - 1, own[class_key].shape[0] - 1
        notes.append(f"the checkpoint has {old} classes and this dataset {new}: the class embedding starts fresh")
        del state[class_key]
    elif class_key in own and class_key not in state:
        notes.append("the checkpoint is unconditional: the class embedding starts fresh")
    elif class_key in state and class_key not in own:
        notes.append("the checkpoint is conditional and this run is not: its class embedding is dropped")
        del state[class_key]
    problems = []
    for key, value in state.items():
        if key not in own:
            problems.append(f"unexpected {key}")
        elif own[key].shape != value.shape:
            problems.append(f"{key} has shape {tuple(value.shape)} in the checkpoint, {tuple(own[key].shape)} here")
    missing = [k for k in own if k not in state and k != class_key]
    problems += [f"missing {k}" for k in missing]
    if problems:
        net = ckpt.get("network", {})
        raise CheckpointError(
            f"{path} does not fit this network ({len(problems)} mismatches, first: {problems[0]}); it was trained "
            f"as {net.get('name', '?')} with {net.get('kwargs', {})}: use the same --network, --base-channels, "
            "--act and image channels")
    model.load_state_dict(state, strict=False)
    return notes
