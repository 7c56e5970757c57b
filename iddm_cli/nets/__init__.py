"""Network registry: name -> what the network needs of its settings, and where its class lives.

The registry stays free of torch at import (``--help``, completion and config validation read it); the module of a
network is imported only when one is built. The config schema takes its ``network`` choices from here, and
:func:`iddm_cli.config.loader.check_runnable` its size rules.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iddm_cli.errors import CheckpointError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class NetworkSpec:
    factory: str  # "module:Class"
    width_multiple: int  # base_channels must be a multiple of it (4 attention heads on the narrowest stage)
    size_divisor: int  # image height and width must be divisible by it (the down-sampling stages)
    summary: str
    size: str | None = None  # a named size that fixes every width: base_channels does not apply

    @property
    def uses_base_channels(self) -> bool:
        return self.size is None


NETWORKS: dict[str, NetworkSpec] = {
    "unet": NetworkSpec("iddm_cli.nets.unet:UNet", 4, 8, "IDDM's U-Net: 3 down/up stages with self-attention"),
    "cspdarkunet": NetworkSpec("iddm_cli.nets.cspdarkunet:CSPDarkUNet", 8, 16,
                               "IDDM's CSPDarknet U-Net: 4 stages, a stem of half the base width"),
    "adm-xs": NetworkSpec("iddm_cli.nets.adm:ADMUNet", 1, 4, "ADM-style U-Net, 32-64 channels, 3 levels (1.8 M)",
                          size="xs"),
    "adm-s": NetworkSpec("iddm_cli.nets.adm:ADMUNet", 1, 4, "ADM-style U-Net, 64-128 channels, 3 levels (7.0 M)",
                         size="s"),
    "adm-m": NetworkSpec("iddm_cli.nets.adm:ADMUNet", 1, 8, "ADM-style U-Net, 128-256 channels, 4 levels (40 M)",
                         size="m"),
}


AUTOENCODER_NETWORKS: dict[str, NetworkSpec] = {
    "vae": NetworkSpec("iddm_cli.nets.autoencoder:Autoencoder", 1, 1,
                       "KL-regularised convolutional autoencoder (down-sampling 4 or 8)"),
}
"""The autoencoders of latent diffusion (``iddm vae train``); their size rule is the down-sampling factor, a
setting of its own (checked by :func:`iddm_cli.config.loader.check_runnable`)."""


LEGACY_KWARGS: dict[str, Any] = {"time_embedding": "legacy"}
"""What network kwargs stored without these keys (iddm 0.1 checkpoints) meant: see ``nets.layers.TIME_EMBEDDINGS``.
New runs store ``time_embedding="iddm"`` explicitly; ``cspdarkunet`` also takes ``up_block`` ("csp", or "iddm" for
an imported IDDM checkpoint), whose default has not changed."""


FLAVOR_KWARGS = ("time_embedding", "up_block")  # how a network computes, beyond what the config's settings say


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """kwargs: in_channels, out_channels, base_channels (ignored by a network of a named size), num_classes, act,
    time_embedding, and for cspdarkunet up_block (stored in checkpoints as-is); an autoencoder's: in_channels,
    latent_channels, base_channels, downsample, act."""
    spec = {**NETWORKS, **AUTOENCODER_NETWORKS}[name]
    module, _, cls = spec.factory.partition(":")
    if spec.size is not None:  # the name fixes the widths (checkpoints store the size too: theirs is kept)
        kwargs = {"size": spec.size} | {k: v for k, v in kwargs.items() if k != "base_channels"}
    return getattr(importlib.import_module(module), cls)(**kwargs)


def stored_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's network kwargs, completed so that an older checkpoint rebuilds the network it was trained as."""
    return {**LEGACY_KWARGS, **kwargs}


def flavor_of(network: dict[str, Any], name: str) -> dict[str, Any]:
    """How a stored network computes beyond what the config says (time embedding, up block); nothing when it is
    another network, or an autoencoder (stored complete)."""
    if network["name"] != name or name in AUTOENCODER_NETWORKS:
        return {}
    stored = stored_kwargs(network["kwargs"])
    return {k: stored[k] for k in FLAVOR_KWARGS if k in stored}


def build_stored(network: dict[str, Any]) -> nn.Module:
    """The network a checkpoint's ``{"name", "kwargs"}`` describes."""
    if network.get("name") not in NETWORKS and network.get("name") not in AUTOENCODER_NETWORKS:
        raise CheckpointError(f"the checkpoint's network {network.get('name')!r} is not one this iddm knows "
                              f"({', '.join([*NETWORKS, *AUTOENCODER_NETWORKS])}); was it written by a newer iddm?")
    if network["name"] in AUTOENCODER_NETWORKS:  # stored complete since the first release that had them
        return build_network(network["name"], **network["kwargs"])
    return build_network(network["name"], **stored_kwargs(network["kwargs"]))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
