"""Which device(s) a run uses: one resolution, shared by every trainer, of ``--device``, ``--devices`` and IDDM's
``--use-gpu``, ``--distributed``, ``--world-size`` and ``--main-gpu``.

    --device auto|cpu|cuda|cuda:N     the kind of device (cuda:N: exactly one GPU)
    --devices all|N  (alias --nproc)  how many processes: all = every visible GPU, 1 on CPU
    --use-gpu N                       = --device cuda:N (CPU, with a note, when there is no GPU; ignored with
                                      --distributed, where each rank takes its own GPU, as in IDDM)
    --distributed [--world-size N]    = --devices all, or --devices N
    --main-gpu N                      accepted; rank 0 always writes the run directory
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from iddm_cli.config import Config
from iddm_cli.config.loader import DEVICE_RE
from iddm_cli.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1
    launched: bool = False  # started by torchrun or by iddm's own launcher: there is a process group to join

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def world_from_env(env: dict[str, str] | None = None) -> World | None:
    """The place a launcher (torchrun, iddm's own, a Slurm wrapper) gave this process, or None when there is none."""
    env = dict(os.environ) if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    except ValueError:
        raise ConfigError(f"environment: RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r}, LOCAL_RANK and "
                          "LOCAL_WORLD_SIZE must be integers") from None
    if not 0 <= rank < size:
        raise ConfigError(f"environment: RANK={rank} is outside WORLD_SIZE={size}")
    return World(rank, local_rank, size, local_size, launched=True)


@dataclass(frozen=True)
class Layout:
    kind: str  # "cpu" | "cuda"
    nproc: int  # processes on this machine; 1 = train in this process
    index: int | None  # the GPU of a one-process CUDA run
    notes: tuple[str, ...] = ()

    @property
    def backend(self) -> str:
        return "nccl" if self.kind == "cuda" else "gloo"

    def device(self, world: World | None = None) -> torch.device:
        """This process's device: a launched worker takes the GPU of its local rank."""
        if self.kind == "cpu":
            return torch.device("cpu")
        if world is not None and world.launched and self.index is None:
            return torch.device("cuda", world.local_rank)
        return torch.device("cuda", self.index or 0)


def parse_device(spec: str, key: str = "--device") -> tuple[str, int | None]:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> (kind, index)."""
    spec = spec.strip().lower()
    if not DEVICE_RE.match(spec):
        raise ConfigError(f"{key} {spec!r}: expected auto, cpu, cuda or cuda:N")
    kind, _, index = spec.partition(":")
    return kind, int(index) if index else None


def use_device(device: torch.device) -> None:
    """Make ``device`` this process's current GPU (else kernels and caches land on GPU 0 too) and let fp32 matrix
    products and convolutions use TF32 tensor cores (Ampere and newer; 10-bit mantissa, fp32 range). cuDNN
    convolutions do by default; matrix products do not, which would leave fp32 attention and linear layers at full
    fp32 cost. Nothing changes on a CPU."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def loader_workers(setting: int, kind: str, local_processes: int) -> int:
    """DataLoader worker processes for ``--num-workers``: the setting, or for -1 (auto) none on the CPU, where the
    training threads already use every core, and on CUDA min(8, CPU cores per process - 1), so that decoding and
    augmentation run beside the GPU instead of between its steps."""
    if setting >= 0:
        return setting
    if kind != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cores // max(local_processes, 1) - 1))


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_layout(config: Config, world: World | None = None) -> Layout:
    """The device layout of a run; ``world``: the process group a launcher (torchrun) already made, whose size
    then replaces --devices."""
    d, notes = config.device, []
    spec, key = d.device, "device.device"
    gpus = visible_gpus()
    if d.use_gpu >= 0 and d.distributed:
        notes.append(f"note: --use-gpu {d.use_gpu} is ignored with --distributed (each rank takes its own GPU)")
    elif d.use_gpu >= 0 and spec == "auto":
        spec, key = f"cuda:{d.use_gpu}", "device.use_gpu"
        if not gpus:
            spec = "cpu"
            notes.append(f"note: --use-gpu {d.use_gpu}: no GPU is visible here, so training runs on the CPU")
    count = d.devices
    if d.distributed and count == "all" and d.world_size:
        count = d.world_size
    if d.main_gpu:
        notes.append(f"note: --main-gpu {d.main_gpu}: iddm always writes files from rank 0; nothing else changes")
    kind, index = parse_device(spec, key)
    if kind == "auto":
        kind = "cuda" if gpus else "cpu"
        if d.distributed and not gpus:
            notes.append("note: --distributed: no GPU is visible here, so training runs on the CPU")
    if kind == "cuda" and not gpus:
        raise ConfigError(f"{key} = {spec!r}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                          "use --device cpu or --device auto")
    if world is not None and world.launched:
        if count not in ("all", world.size):
            notes.append(f"note: --devices {count} is ignored: the launcher started {world.size} processes")
        if kind == "cuda" and gpus == 1:  # Slurm's --gpus-per-task / --gpu-bind: each process sees its own GPU
            return Layout(kind, world.local_size, 0, tuple(notes))
        if kind == "cuda" and world.local_rank >= gpus:
            raise ConfigError(f"LOCAL_RANK={world.local_rank}, but this machine shows {gpus} GPU(s); start at most "
                              f"{gpus} processes per node (torchrun --nproc-per-node {gpus})")
        return Layout(kind, world.local_size, None, tuple(notes))
    if kind == "cpu":
        return Layout("cpu", 1 if count == "all" else count, None, tuple(notes))
    if index is not None:
        if index >= gpus:
            raise ConfigError(f"{key} = {spec!r}, but this machine shows {gpus} GPU(s) (valid: 0..{gpus - 1})")
        return Layout("cuda", 1, index, tuple(notes))
    n = gpus if count == "all" else count
    if n > gpus:
        raise ConfigError(f"device.devices = {n}, but this machine shows {gpus} GPU(s); use --devices {gpus} or "
                          "fewer (multi-node runs go through torchrun)")
    return Layout("cuda", n, 0 if n == 1 else None, tuple(notes))
