"""Python API for scripts and notebooks, IDDM style, without Typer.

    from iddm_cli.api import DMTrainer
    DMTrainer(profile="demo", epochs=5).train()
    DMTrainer(args=argparse_namespace, dataset_path="/data/cifar10").train()   # IDDM's flat flag names

    # IDDM's training guide, unchanged but for the import line:
    from iddm_cli.api import DMTrainer, init_train_args
    args = init_train_args()
    setattr(args, "distributed", True)
    mp.spawn(DMTrainer(args=args).train, nprocs=2)

Settings resolve exactly as on the command line: defaults < profile < ``args`` and keyword overrides.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from iddm_cli.config import FIELDS, Config, check_runnable, resolve
from iddm_cli.config.loader import Resolved, suggest
from iddm_cli.core.reporting import Reporter
from iddm_cli.errors import ConfigError

# IDDM flags that have no meaning here and are accepted when they carry IDDM's default value.
IDDM_ONLY = {"mode": "class"}
# IDDM's argparse defaults for paths are placeholders ("/your/path/Defect-Diffusion-Model/datasets/dir"): a value
# that still holds one was never set, and is treated as unset.
PLACEHOLDER = "/your/path"


def _unset_placeholders(values: dict[str, Any], notes: list[str]) -> None:
    """In an ``args`` Namespace: drop IDDM's placeholder paths, IDDM's world_size where --distributed is off (IDDM
    ignores it then) and use_gpu = 0, IDDM's default, which --device auto already means (the first GPU)."""
    for name in list(values):
        if isinstance(values[name], str) and values[name].startswith(PLACEHOLDER):
            notes.append(f"{name}: {values.pop(name)!r} is IDDM's placeholder; treated as unset")
    if not values.get("distributed") and "world_size" in values:
        values.pop("world_size")
    if values.get("use_gpu") == 0:
        values.pop("use_gpu")


class DMTrainer:
    """Train a diffusion model (in pixel space, or in latent space with ``latent`` and ``autoencoder_ckpt``).
    ``args`` is an argparse Namespace or a dict of IDDM flag names (IDDM's own, from its ``init_train_args()``,
    works: placeholder paths count as unset); keyword arguments override it. Unknown names raise ConfigError with a
    suggestion."""

    def __init__(self, args: argparse.Namespace | Mapping[str, Any] | None = None, *, profile: str | None = None,
                 sets: list[str] | None = None, reporter: Reporter | None = None, **kwargs: Any):
        values = dict(vars(args) if isinstance(args, argparse.Namespace) else (args or {}))
        self.notes: list[str] = []
        _unset_placeholders(values, self.notes)
        values.update(kwargs)
        errors = []
        for name in list(values):
            if name in IDDM_ONLY:
                if values.pop(name) not in (IDDM_ONLY[name], None):
                    errors.append(f"{name}: only '{IDDM_ONLY[name]}' is supported")
            elif name not in FIELDS:
                errors.append(f"unknown setting '{name}'{suggest(name)}")
        if errors:
            raise ConfigError(*errors)
        self.resolved: Resolved = resolve(profile, sets or [], values)
        check_runnable(self.resolved)
        self.reporter = reporter
        # the rendezvous port of an mp.spawn launch, chosen here so that every spawned copy of this object agrees
        port = os.environ.get("MASTER_PORT") or str(_free_port())
        if not port.isdigit():
            raise ConfigError(f"environment: MASTER_PORT={port!r} is not a port number")
        self.port = int(port)

    @property
    def config(self) -> Config:
        return self.resolved.config

    def train(self, rank: int | None = None) -> Any:
        """Train; returns a TrainResult (run_dir, steps, final_loss, checkpoint, previews). With several devices
        (--devices, --distributed, or several GPUs) it starts one worker process per device, as the command does.

        ``train(rank)`` is IDDM's form for ``mp.spawn(trainer.train, nprocs=N)``: each spawned process joins the
        group as ``rank`` of N, where N is the number of processes the settings give (``--devices``, or
        ``--distributed`` with ``--world-size``/every GPU); rank 0 returns the result."""
        from iddm_cli.train.job import Job
        from iddm_cli.train.launch import execute

        job = Job("new", config=self.config.to_dict(), provenance={"api": True, "sources": self.resolved.sources})
        if rank is None:
            return execute(job, self.reporter or Reporter())
        return self._train_as_rank(job, rank)

    def _train_as_rank(self, job: Any, rank: int) -> Any:
        import torch

        from iddm_cli.core.devices import plan_layout
        from iddm_cli.train.launch import execute, rank_env

        n = plan_layout(self.config).nproc
        if not 0 <= rank < n:
            raise ConfigError(f"train(rank={rank}): these settings train on {n} process(es) (--devices, or "
                              f"--distributed with --world-size); start mp.spawn with nprocs={n}")
        if n == 1:
            return execute(job, self.reporter or Reporter())
        saved = dict(os.environ)
        # what iddm's own launcher gives its workers: the group's variables, threads per process, gloo on loopback
        env = rank_env(rank, n, os.environ.get("MASTER_ADDR") or "127.0.0.1", self.port)
        os.environ.update(env)
        threads = torch.get_num_threads()
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))  # torch read the variable when it was imported
        try:
            return execute(job, self.reporter or Reporter())
        finally:  # called in the user's own process (a notebook, a debugger), it must leave no launcher state
            os.environ.clear()
            os.environ.update(saved)
            torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_train_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """IDDM's ``init_train_args()``: every training setting as an argparse Namespace, parsed from the command line
    (``sys.argv`` by default) in IDDM's underscore spelling or ours, defaults from the schema."""
    parser = argparse.ArgumentParser(description="iddm training settings (IDDM's init_train_args)")
    types = {"int": int, "float": float}
    for name, spec in FIELDS.items():
        flags = sorted({f"--{name}", spec.flag})
        if spec.kind in ("bool", "tristate"):
            parser.add_argument(*flags, dest=name, default=spec.default, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(*flags, dest=name, default=spec.default, type=types.get(spec.kind, str))
    for name, value in IDDM_ONLY.items():
        parser.add_argument(f"--{name}", default=value, choices=[value])
    return parser.parse_args(sys.argv[1:] if argv is None else list(argv))
