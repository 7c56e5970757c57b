"""Network registry: name -> constructor. Keys equal :data:`iddm_cli.choices.NETWORKS`."""

from __future__ import annotations

from typing import Any

from torch import nn

from iddm_cli.nets.cspdarkunet import CSPDarkUNet
from iddm_cli.nets.unet import UNet

NETWORKS: dict[str, type[nn.Module]] = {"unet": UNet, "cspdarkunet": CSPDarkUNet}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """kwargs: in_channels, out_channels, base_channels, num_classes, act (stored in checkpoints as-is)."""
    return NETWORKS[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
