"""Python API for scripts and notebooks, IDDM style, without Typer.

    from iddm_cli.api import DMTrainer
    DMTrainer(profile="demo", epochs=5).train()
    DMTrainer(args=argparse_namespace, dataset_path="/data/cifar10").train()   # IDDM's flat flag names

Settings resolve exactly as on the command line: defaults < profile < ``args`` and keyword overrides.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from iddm_cli.config import FIELDS, Config, check_runnable, resolve
from iddm_cli.config.loader import Resolved, suggest
from iddm_cli.core.reporting import Reporter
from iddm_cli.errors import ConfigError

# IDDM flags that have no meaning here and are accepted when they carry IDDM's default value.
IDDM_ONLY = {"mode": "class"}


class DMTrainer:
    """Train a pixel-space diffusion model. ``args`` is an argparse Namespace or a dict of IDDM flag names;
    keyword arguments override it. Unknown names raise ConfigError with a suggestion."""

    def __init__(self, args: argparse.Namespace | Mapping[str, Any] | None = None, *, profile: str | None = None,
                 sets: list[str] | None = None, reporter: Reporter | None = None, **kwargs: Any):
        values = dict(vars(args) if isinstance(args, argparse.Namespace) else (args or {}))
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

    @property
    def config(self) -> Config:
        return self.resolved.config

    def train(self) -> Any:
        """Train; returns a TrainResult (run_dir, steps, final_loss, checkpoint, previews). With several devices
        (--devices, or several GPUs) it starts one worker process per device, as the command does."""
        from iddm_cli.core.reporting import Reporter
        from iddm_cli.train.job import Job
        from iddm_cli.train.launch import execute

        job = Job("new", config=self.config.to_dict(), provenance={"api": True, "sources": self.resolved.sources})
        return execute(job, self.reporter or Reporter())
