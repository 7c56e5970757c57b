"""Self-describing checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

Every checkpoint file, ``ckpt_last.pt`` and the kept ``ckpt_NNN.pt`` alike, goes through :func:`atomic_write`.
One file holds everything: the resolved config, the network name and arguments, image size and channels, class
names and counts, the diffusion schedule, versions, training progress, the raw and EMA weights, and the optimizer
and GradScaler state. Only tensors and plain Python values are stored, so loading never runs code.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import platform
import re
import shutil
import signal
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from iddm_cli import __version__
from iddm_cli.errors import CheckpointError, StorageError, first_line
from iddm_cli.nets import build_stored

FORMAT = "iddm"
FORMAT_VERSION = 2  # the newest format this iddm reads
V_X0_FORMAT_VERSION = 2  # a network that predicts v or x0: older readers took every output for noise
BASE_FORMAT_VERSION = 1  # written when nothing in the checkpoint needs a newer reader


def versions() -> dict[str, str]:
    return {"iddm": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


NUMBERED = re.compile(r"^ckpt_(\d{3,})\.pt$")  # ckpt_NNN.pt: the state after NNN epochs; other names are ignored


def numbered_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(epochs, file) of every ckpt_NNN.pt in ``run_dir``, oldest first; files named otherwise are not parsed."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("ckpt_*.pt") if (m := NUMBERED.match(p.name))]
    return sorted(found)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends: a Ctrl-C during a save lets the file be finished first. (A
    handler that remembers them, rather than a signal mask: the kernel may hand a signal to any thread, and a
    torch or DataLoader thread would not have the main thread's mask.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in pending:  # delivered now, to whatever handled it before
            signal.raise_signal(signum)


class _Recorder:
    """A file that keeps the OSError of a failed write: torch.save reports it only as a RuntimeError."""

    def __init__(self, fh: BinaryIO):
        self.fh, self.error = fh, None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM, errno.EFBIG)


def storage_error(err: OSError, path: Path, then: str | None = None) -> StorageError:
    """'cannot write PATH: disk full (ENOSPC); the previous checkpoint is kept': one line naming the file and the
    errno, then ``then``, or by default (a training run's write) that last sentence where the run has a checkpoint."""
    code = errno.errorcode.get(err.errno or 0, "")
    what = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err)).lower()
    folder = path if path.is_dir() else path.parent
    if then is None:
        then = "the previous checkpoint is kept" if (folder / "ckpt_last.pt").exists() else ""
    kept = f"; {then}" if then else ""
    return StorageError(f"cannot write {path}: {what}" + (f" ({code})" if code else "") + kept)


def temp_name(path: Path) -> Path:
    """The temporary file beside ``path``, named after this host and process so a later start can tell whether
    its writer is still alive."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(file)`` into a temporary file in the same folder, fsync, rename over ``path``, fsync the
    folder: readers only ever see a complete old file or a complete new one. Signals wait until it is done. Any
    OSError (disk full, permission, I/O error) is a StorageError naming the file; ``path`` is then untouched."""
    tmp = temp_name(path)
    with signals_held():
        try:
            with open(tmp, "wb") as fh:
                recorder = _Recorder(fh)
                try:
                    write(recorder)
                except RuntimeError:
                    if recorder.error is not None:
                        raise recorder.error from None
                    raise
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            raise storage_error(err, path) from None
        finally:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda fh: torch.save(payload, fh))


def copy_checkpoint(source: Path, path: Path) -> None:
    """An interval checkpoint: a copy of ckpt_last.pt, written as atomically as the original."""
    with open(source, "rb") as src:
        atomic_write(path, lambda fh: shutil.copyfileobj(src, fh, 2**20))


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temporary checkpoint files whose writer is gone (killed mid-save on this host); returns them."""
    host, removed = socket.gethostname(), []
    for tmp in run_dir.glob(".ckpt_*.pt.tmp*"):
        _, sep, owner = tmp.name.rpartition(".tmp-")
        writer_host, _, pid = owner.rpartition("-")
        writer_host = writer_host or host  # .NAME.tmp-PID, as older versions named it: this host's
        if sep and (writer_host != host or not pid.isdigit() or _alive(int(pid))):
            continue  # another machine's, or its writer still runs
        with suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # this process writes nothing while it starts: the file is left from an earlier run
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    return True


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an iddm checkpoint safely; every failure is a one-line CheckpointError naming the file. (IDDM's own
    checkpoints: :func:`iddm_cli.core.iddm_import.load_any`.)"""
    path = Path(path).expanduser()
    return check_format(read_checkpoint_file(path, map_location), path)


def read_checkpoint_file(path: Path, map_location: str | torch.device = "cpu", content: bytes | None = None) -> Any:
    """``torch.load(weights_only=True)``: plain values and tensors only; a failure is a one-line CheckpointError.
    ``content``: the file's bytes, read already (so that what is loaded is exactly what was hashed)."""
    if content is None and not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns of a pickle protocol it did not write (a foreign file) before
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # refusing it: the error says it
            data = torch.load(io.BytesIO(content) if content is not None else path, map_location=map_location,
                              weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [x.strip() for x in str(err).splitlines()]
        unsafe = next((x for x in lines if "unsupported global" in x.lower()), None)  # an import: code could run
        if unsafe is None:  # not a pickle at all, or a damaged one
            raise _unreadable(path, content, "unreadable pickle") from None
        raise CheckpointError(f"{path} holds objects that could run code when loaded, so it was not loaded "
                              f"({unsafe[:200]}); use checkpoints written by iddm") from None
    except Exception as err:  # any other failure to parse: a damaged or foreign file (never executed)
        raise _unreadable(path, content, first_line(err).split(". ")[0]) from None  # torch's first sentence
    return data


def _unreadable(path: Path, content: bytes | None, reason: str) -> CheckpointError:
    """A file torch.load could not parse: a damaged checkpoint (torch.save's zip archive, or a pickle), or another
    kind of file, told apart by its first bytes."""
    if content is None:
        try:
            with open(path, "rb") as fh:
                content = fh.read(2)
        except OSError as err:  # unreadable (permissions): what torch.load met too
            return CheckpointError(f"{path} cannot be read ({err.strerror})")
    if content[:2] in (b"PK", b"\x80\x02"):  # a zip archive, or the pickle (protocol 2) of torch's legacy format
        return CheckpointError(f"{path} is a truncated or damaged checkpoint ({reason[:160]}); another checkpoint "
                               "of its run (ckpt_NNN.pt) may be intact")
    if not content:
        what = "the file is empty"
    elif len(content) > 1 and content[:1] == b"\x80":
        what = f"it is a pickle of protocol {content[1]}, which torch.load cannot read as one"
    else:
        what = "torch.save writes a zip archive or a pickle, and it is neither"
    return CheckpointError(f"{path} is not a PyTorch checkpoint ({what})")


def load_stored(network: dict[str, Any], state: dict[str, Any], source: Any, check_only: bool = False) -> nn.Module:
    """The network a checkpoint describes, holding ``state``; a description and weights that do not fit each other
    (a file changed after iddm wrote it) are a CheckpointError naming ``source``. ``check_only``: build it on the meta
    device, which checks every key and shape without allocating or copying anything."""
    try:
        with torch.device("meta") if check_only else nullcontext():
            model = build_stored(network)
        model.load_state_dict(strip_prefix(state), assign=check_only)  # a meta copy takes the tensors as they are
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err.problems[0]}") from err
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        detail = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]  # torch's header, then why
        raise CheckpointError(f"{source}: its weights and its network description do not fit each other (was the "
                              f"file edited?): {detail[:200]}") from err
    return model


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its ckpt_last.pt)."""
    p = Path(path).expanduser()
    return p / "ckpt_last.pt" if p.is_dir() else p


def check_format(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an iddm checkpoint (no 'format': 'iddm' entry)")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer iddm (format {data['format_version']}); upgrade iddm")
    lacking = [key for key in ("network", "model", "data", "config") if not isinstance(data.get(key), dict)]
    if data.get("kind", "dm") == "dm" and not isinstance(data.get("diffusion"), dict):
        lacking.append("diffusion")
    if "network" not in lacking:
        lacking += [f"network.{key}" for key, kind in (("name", str), ("kwargs", dict))
                    if not isinstance(data["network"].get(key), kind)]
    if lacking:  # every iddm checkpoint has them: the file was edited or damaged after it was written
        raise CheckpointError(f"{path} is damaged: its {', '.join(repr(k) for k in lacking)} "
                              f"{'entry is' if len(lacking) == 1 else 'entries are'} missing or of the wrong type "
                              "(another of the run's checkpoints, ckpt_NNN.pt, may be intact)")
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
        flags = "--base-channels, --latent-channels, --downsample" if ckpt.get("kind") == "vae" else \
            "--network, --base-channels, --act"
        raise CheckpointError(
            f"{path} does not fit this network ({len(problems)} mismatches, first: {problems[0]}); it was trained "
            f"as {net.get('name', '?')} with {net.get('kwargs', {})}: use the same {flags} and image channels")
    model.load_state_dict(state, strict=False)
    return notes
