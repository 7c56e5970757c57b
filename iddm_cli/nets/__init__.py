"""Network registry: name -> what the network needs of its settings, and where its class lives.

The registry stays free of torch at import (``--help``, completion and config validation read it); the module of a
network is imported only when one is built. The config schema takes its ``network`` choices from here, and
:func:`iddm_cli.config.loader.check_runnable` its size rules.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class NetworkSpec:
    factory: str  # "module:Class"
    width_multiple: int  # base_channels must be a multiple of it (4 attention heads on the narrowest stage)
    size_divisor: int  # image height and width must be divisible by it (the down-sampling stages)
    summary: str


NETWORKS: dict[str, NetworkSpec] = {
    "unet": NetworkSpec("iddm_cli.nets.unet:UNet", 4, 8, "IDDM's U-Net: 3 down/up stages with self-attention"),
    "cspdarkunet": NetworkSpec("iddm_cli.nets.cspdarkunet:CSPDarkUNet", 8, 16,
                               "IDDM's CSPDarknet U-Net: 4 stages, a stem of half the base width"),
}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """kwargs: in_channels, out_channels, base_channels, num_classes, act (stored in checkpoints as-is)."""
    module, _, cls = NETWORKS[name].factory.partition(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
