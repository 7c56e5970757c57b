"""Process groups: joining the group a launcher set up, and the few
collectives the trainers use.

Every rank enters every collective at the same point of the loop, so nothing here waits on rank 0 alone. A failure
inside a collective means another process died or was stopped; it becomes :class:`PeerLost`, so that the error the
user reads is the failing process's own and not a gloo or NCCL traceback.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from iddm_cli.core.devices import World
from iddm_cli.errors import ConfigError, TrainingError, first_line

T = TypeVar("T")


class PeerLost(TrainingError):
    """A collective failed because another process failed or was stopped; that process's error is the real one."""


def is_comm_failure(err: BaseException) -> bool:
    """True for the errors gloo and NCCL raise when a peer is gone (also inside DDP's gradient all-reduce)."""
    text = str(err)
    return isinstance(err, dist.DistError) or any(
        mark in text for mark in ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer"))


def peer_lost(err: BaseException, what: str) -> PeerLost:
    return PeerLost(f"lost contact with the other processes during {what} (another one failed or was stopped): "
                    f"{first_line(err)}")


def _guard(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except RuntimeError as err:  # dist.DistError is a RuntimeError; anything else (CUDA OOM, say) stays itself
        if is_comm_failure(err):
            raise peer_lost(err, what) from err
        raise


def init_group(world: World, device: torch.device, timeout_minutes: int) -> None:
    """Join the process group (env:// rendezvous at MASTER_ADDR:MASTER_PORT): gloo on CPU; for GPUs one group with
    two backends, NCCL for CUDA tensors and gloo for CPU ones, so that pickled objects (rank 0's plan and checkpoint,
    skipped-file lists) travel over gloo instead of being copied into GPU memory on every rank, with no side group
    to create after NCCL's (torch picks the CPU backend for object collectives when the group has one)."""
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"environment: RANK and WORLD_SIZE are set but {' and '.join(missing)} not; start "
                          "multi-process runs with torchrun (or unset RANK and WORLD_SIZE)")
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    where, timeout = f"{addr}:{port}", timedelta(minutes=timeout_minutes)
    try:
        dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=timeout,
                                device_id=device if device.type == "cuda" else None, store=_restart_store(
                                    addr, port, world, timeout))
    except (RuntimeError, ValueError) as err:
        raise TrainingError(f"rank {world.rank} could not join the {backend} process group at {where}: "
                            f"{first_line(err)}") from None


def _restart_store(addr: str, port: int, world: World, timeout: timedelta) -> dist.Store | None:
    """After a torchrun restart, the store torchrun shares with its workers still holds the previous attempt's
    keys, and joining through it connects to addresses of processes that are gone (pytorch issue #135712). Keys
    under a prefix of the restart count are fresh. None (the usual env:// rendezvous) otherwise."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or restart in ("", "0"):
        return None
    store = dist.TCPStore(addr, port, world.size, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"iddm/restart-{restart}", store)


def shutdown() -> None:
    """Destroy the process groups once nothing uses them: collect first, so that a DDP reducer left in a reference
    cycle lets go of its group now rather than during the interpreter's teardown."""
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- collectives
def all_reduce_sum(tensor: torch.Tensor, what: str = "a training step") -> torch.Tensor:
    _guard(what, lambda: dist.all_reduce(tensor))
    return tensor


def broadcast_object(obj: Any, world: World, what: str = "the start of the run") -> Any:
    """Rank 0's ``obj`` on every rank (pickled between our own processes only)."""
    box = [obj if world.is_main else None]
    _guard(what, lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def all_gather_object(obj: Any, world: World, what: str = "a checkpoint") -> list[Any]:
    out: list[Any] = [None] * world.size
    _guard(what, lambda: dist.all_gather_object(out, obj))
    return out


def all_gather_tensor(tensor: torch.Tensor, world: World, what: str = "a preview") -> list[torch.Tensor]:
    """Every rank's ``tensor`` (all the same shape), in rank order."""
    out = [torch.empty_like(tensor) for _ in range(world.size)]
    _guard(what, lambda: dist.all_gather(out, tensor.contiguous()))
    return out


def broadcast_tensors(tensors: Iterable[torch.Tensor], what: str = "loading the pretrained weights") -> None:
    """Overwrite each tensor with rank 0's, in place (on the tensors' own device)."""
    for t in tensors:
        _guard(what, lambda t=t: dist.broadcast(t, src=0))


# ----------------------------------------------------------------------------------------------- consistency
def digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of the exact bytes of ``tensors``, in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_consistency(world: World, parts: dict[str, Iterable[torch.Tensor]]) -> str:
    """Compare a digest of each part across ranks (EDM2's check_ddp_consistency, exact); returns a log line and
    raises TrainingError when any part differs."""
    mine = {name: digest(tensors) for name, tensors in parts.items()}
    every = all_gather_object(mine, world, "the consistency check")
    differing = [name for name in mine if len({d[name] for d in every}) > 1]
    if differing:
        raise TrainingError(f"DDP consistency check failed: {', '.join(differing)} differ between the "
                            f"{world.size} processes; this is a bug in iddm, please report it")
    return (f"ddp check: {' and '.join(mine)} identical on all {world.size} ranks ("
            + ", ".join(f"{name} sha256 {d[:12]}" for name, d in mine.items()) + ")")
