"""IDDM 1.x checkpoints (``ckpt_last.pt`` of IDDM's trainer) turned into iddm checkpoints.

IDDM stores state dicts plus a few settings (network, act, image size, classes, conditional, sampler, epoch); it does
not store the noise schedule or T, which IDDM hard-codes to linear / 1000 unless its code was edited, so they come
from the caller. The weights go through one explicit key map per network; every IDDM tensor is either mapped to
exactly one of ours or dropped with a reason, and every one of ours must be filled, or the conversion fails.

The converted network computes what IDDM's computes (``time_embedding="iddm"``, and ``up_block="iddm"`` for
cspdarkunet); tests/test_iddm_import.py holds it to IDDM's own outputs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iddm_cli.config import Config
from iddm_cli.config.loader import name_problem, parse_image_size
from iddm_cli.core import checkpoint as ckpt
from iddm_cli.diffusion.registry import SAMPLERS
from iddm_cli.errors import CheckpointError, ConfigError, first_line
from iddm_cli.nets import build_network

IDDM_KEYS = ("model", "network", "act", "image_size", "start_epoch")  # all present in IDDM 1.x's ckpt dicts
ACTS = ("gelu", "silu", "relu", "relu6")  # IDDM's own activations that equal ours in every layer

# ------------------------------------------------------------------------------------------ key maps
# Tails of IDDM's building blocks -> ours (nets/layers.py, nets/cspdarkunet.py).
DOUBLE_CONV = {f"double_conv.{i}.{p}": f"block.{i}.{p}" for i in (0, 1, 3, 4) for p in ("weight", "bias")}
ATTENTION = {"mha.in_proj_weight": "qkv.weight", "mha.in_proj_bias": "qkv.bias",  # q, k, v stacked in one order
             "mha.out_proj.weight": "out.weight", "mha.out_proj.bias": "out.bias",
             "ln.weight": "norm.weight", "ln.bias": "norm.bias",
             **{f"ff_self.{i}.{p}": f"ff.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}}
BASE_CONV = {"conv.weight": "0.weight", "gn.weight": "1.weight", "gn.bias": "1.bias"}
EMB = {"emb_layer.1.weight": "emb.proj.1.weight", "emb_layer.1.bias": "emb.proj.1.bias"}
LABELS = ("condition_adapter.label_emb.weight", "label_emb.weight")  # IDDM 1.2+, and earlier releases

LATENT_ADVICE = ("IDDM autoencoders do not convert; train one with `iddm vae train`, then `iddm dm train --latent "
                 "--autoencoder-ckpt RUN`")


def _csp_layer(tail: str) -> str | None:
    """IDDM's CSPLayer (conv1 -> m bottlenecks, conv2 beside them, conv3 fuses) -> ours (main, short, fuse)."""
    if m := re.fullmatch(r"m\.(\d+)\.conv([12])\.(.+)", tail):  # bottleneck j: 1x1 then 3x3
        return f"main.{int(m[1]) + 1}.convs.{int(m[2]) - 1}.{BASE_CONV[m[3]]}"
    if m := re.fullmatch(r"conv([123])\.(.+)", tail):
        return {"1": "main.0", "2": "short", "3": "fuse"}[m[1]] + "." + BASE_CONV[m[2]]
    return None


def unet_key(key: str) -> str | None:
    """IDDM ``unet`` (networks/unet.py, modules/block.py) -> ours (nets/unet.py)."""
    if m := re.fullmatch(r"inc\.(.+)", key):
        return "inc." + DOUBLE_CONV[m[1]]
    if m := re.fullmatch(r"down(\d)\.maxpool_conv\.([12])\.(.+)", key):  # 0 is the max-pool
        return f"down{m[1]}.convs.{m[2]}.{DOUBLE_CONV[m[3]]}"
    if m := re.fullmatch(r"up(\d)\.conv\.([01])\.(.+)", key):
        return f"up{m[1]}.convs.{m[2]}.{DOUBLE_CONV[m[3]]}"
    if m := re.fullmatch(r"((?:down|up)\d)\.(emb_layer\..+)", key):
        return f"{m[1]}.{EMB[m[2]]}"
    if m := re.fullmatch(r"bot([123])\.(.+)", key):
        return f"bot.{int(m[1]) - 1}.{DOUBLE_CONV[m[2]]}"
    if m := re.fullmatch(r"(sa[1-6])\.(.+)", key):
        return f"{m[1]}.{ATTENTION[m[2]]}"
    if m := re.fullmatch(r"outc\.(weight|bias)", key):
        return key
    return None


def cspdarkunet_key(key: str) -> str | None:
    """IDDM ``cspdarkunet`` (networks/cspdarkunet.py, modules/block.py) -> ours (nets/cspdarkunet.py): IDDM's
    down1..4 and up1..4 are our downs.0..3 and ups.0..3, its sa1..4 sit in our down stages, sa5..8 in the up ones."""
    if m := re.fullmatch(r"inc\.(.+)", key):
        return "inc." + BASE_CONV[m[1]]
    if m := re.fullmatch(r"down([1-4])\.conv_csp\.0\.(.+)", key):  # 3x3 stride-2 conv
        return f"downs.{int(m[1]) - 1}.convs.0.{BASE_CONV[m[2]]}"
    if (m := re.fullmatch(r"down([1-4])\.conv_csp\.1\.(.+)", key)) and (tail := _csp_layer(m[2])):
        return f"downs.{int(m[1]) - 1}.convs.1.{tail}"
    if m := re.fullmatch(r"(down|up)([1-4])\.(emb_layer\..+)", key):
        return f"{m[1]}s.{int(m[2]) - 1}.{EMB[m[3]]}"
    if m := re.fullmatch(r"up([1-4])\.conv\.(.+)", key):
        return f"ups.{int(m[1]) - 1}.reduce.{BASE_CONV[m[2]]}"
    if m := re.fullmatch(r"sa([1-8])\.(.+)", key):
        k = int(m[1]) - 1
        return f"{'downs' if k < 4 else 'ups'}.{k % 4}.sa.{ATTENTION[m[2]]}"
    if re.fullmatch(r"outc\.(weight|bias)", key):
        return key
    return None


KEY_MAPS: dict[str, Callable[[str], str | None]] = {"unet": unet_key, "cspdarkunet": cspdarkunet_key}
DROPPED: dict[str, tuple[str, str]] = {  # network -> (IDDM key pattern, why it has no counterpart)
    "cspdarkunet": (r"up[1-4]\.csp\..+", "IDDM's CSPDarkUpBlock builds this CSP layer but its forward never calls it"),
}


# ------------------------------------------------------------------------------------------ conversion
@dataclass
class Conversion:
    checkpoint: dict[str, Any]  # an iddm checkpoint, as load_checkpoint returns one
    mapped: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)  # (IDDM key, ours, shape)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (IDDM key, why)

    def summary(self, path: Path | str) -> str:
        net = self.checkpoint["network"]
        kw, data = net["kwargs"], self.checkpoint["data"]
        classes = f"{len(data['class_names'])} classes" if data["conditional"] else "unconditional"
        dropped = f", {len(self.dropped)} unused by IDDM dropped" if self.dropped else ""
        return (f"converted IDDM checkpoint {path}: {net['name']}, act {kw['act']}, base {kw['base_channels']}, "
                f"{classes}, {len(self.mapped)} tensors mapped{dropped}; schedule "
                f"{self.checkpoint['diffusion']['name']}, T={self.checkpoint['diffusion']['noise_steps']} (IDDM "
                "does not store them)")


def is_iddm_checkpoint(data: Any) -> bool:
    return isinstance(data, dict) and "format" not in data and all(k in data for k in IDDM_KEYS)


def convert_state(network: str, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                  ) -> tuple[dict[str, torch.Tensor], Conversion]:
    """IDDM state dict (without DDP's ``module.`` prefix) -> ours, checked both ways: each IDDM tensor goes to
    exactly one of ours (or is dropped with its reason), each of ours is filled once, shapes agree. IDDM's n class
    rows become our n + 1 with a zero null row: IDDM adds nothing for y=None, and adding zeros reproduces that."""
    out, report, problems = {}, Conversion({}), []
    drop = DROPPED.get(network)
    for key, value in state.items():
        if drop and re.fullmatch(drop[0], key):
            report.dropped.append((key, drop[1]))
            continue
        if key in LABELS:
            ours = "label_emb.weight"
            value = torch.cat([value, value.new_zeros(1, value.shape[1])])  # (n + 1, 256): the null row adds 0
        else:
            try:
                ours = KEY_MAPS[network](key)
            except KeyError:  # a known block with an unknown tail
                ours = None
        if ours is None:
            problems.append(f"IDDM tensor {key} has no counterpart")
        elif ours in out:
            problems.append(f"{key} and another IDDM tensor both map to {ours}")
        elif ours not in own:
            problems.append(f"IDDM tensor {key} maps to {ours}, which this network lacks")
        elif own[ours].shape != value.shape:
            problems.append(f"{key} has shape {tuple(value.shape)}, {ours} here {tuple(own[ours].shape)} (a channel "
                            "list other than IDDM's doubling [b/2, b, 2b, 4b, 8b, 16b]?)")
        else:
            out[ours] = value
            report.mapped.append((key, ours, tuple(value.shape)))
    problems += [f"nothing in the IDDM checkpoint fills {k}" for k in own if k not in out]
    if problems:
        raise CheckpointError(f"cannot convert this IDDM {network} ({len(problems)} problems, first: {problems[0]})")
    return out, report


def iddm_settings(data: dict[str, Any], path: Path) -> tuple[str, str, tuple[int, int], list[str]]:
    """(network, act, (h, w), class names) from an IDDM checkpoint, refusing what no network here computes."""
    network, act = data["network"], data["act"]
    if network not in KEY_MAPS:
        raise CheckpointError(f"{path}: IDDM network {network!r} has no counterpart here (convertible: "
                              f"{', '.join(KEY_MAPS)})")
    if act not in ACTS:
        why = (" (IDDM's 'lrelu' is not in its own activation table, so it computes SiLU in most layers and "
               "LeakyReLU(0.01) after residual convolutions)" if act == "lrelu" else "")
        raise CheckpointError(f"{path}: IDDM act {act!r} cannot be reproduced{why}; convertible: {', '.join(ACTS)}")
    if data.get("latent"):
        raise CheckpointError(f"{path}: an IDDM latent-diffusion checkpoint, which needs IDDM's own autoencoder: "
                              f"{LATENT_ADVICE}")
    if data.get("mode") not in (None, "class"):  # IDDM stores None for unconditional runs
        raise CheckpointError(f"{path}: IDDM mode {data['mode']!r}; only class conditioning converts")
    size = parse_image_size(data["image_size"])
    if size is None:
        raise CheckpointError(f"{path}: IDDM image_size {data['image_size']!r} is not a size")
    hw = (size, size) if isinstance(size, int) else (size[0], size[1])
    names = [str(n) for n in (data.get("classes_name") or [])]
    num = int(data.get("num_classes") or 0)
    if data.get("conditional") and len(names) != num:
        names = names[:num] + [str(i) for i in range(len(names), num)]  # IDDM may store no names: use indices
    # class names become file names when sampling: one that could not be a file name becomes its index
    names = [name if name_problem(name) is None else str(i) for i, name in enumerate(names)]
    return network, act, hw, names if data.get("conditional") else []


def convert(data: dict[str, Any], path: Path | str, noise_schedule: str = "linear",
            noise_steps: int = 1000) -> Conversion:
    """An iddm checkpoint equal to IDDM's ``data`` (a loaded IDDM ckpt dict). ``noise_schedule``/``noise_steps``:
    what IDDM trained with; it does not store them (IDDM 1.x: linear, 1000). A damaged or foreign dict is a
    one-line CheckpointError naming the file, never a traceback."""
    try:
        return _convert(data, Path(path), noise_schedule, noise_steps)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a usable IDDM checkpoint ({type(err).__name__}: {first_line(err)[:120]})"
                              ) from None


def _convert(data: dict[str, Any], path: Path, noise_schedule: str, noise_steps: int) -> Conversion:
    network, act, (h, w), names = iddm_settings(data, path)
    first = {"unet": "inc.double_conv.0.weight", "cspdarkunet": "down1.conv_csp.0.conv.weight"}[network]
    if not isinstance(data["model"], dict) or not all(isinstance(v, torch.Tensor) for v in data["model"].values()):
        raise CheckpointError(f"{path}: its 'model' is not a state dict of tensors")
    state = ckpt.strip_prefix(data["model"])  # IDDM saves DDP-wrapped models with module. in front of every key
    needed = [first, "outc.weight", *(["inc.conv.weight"] if network == "cspdarkunet" else [])]
    if any(key not in state for key in needed):
        raise CheckpointError(f"{path}: the IDDM {network} weights lack one of {', '.join(needed)}")
    if int(state["outc.weight"].shape[0]) not in (1, 3):  # IDDM keeps no 'latent' key: 4 channels are latents
        raise CheckpointError(f"{path}: a network with {int(state['outc.weight'].shape[0])} output channels is an "
                              f"IDDM latent-diffusion model, which needs IDDM's own autoencoder: {LATENT_ADVICE}")
    kwargs: dict[str, Any] = {
        "in_channels": int(state["inc.conv.weight" if network == "cspdarkunet" else first].shape[1]),
        "out_channels": int(state["outc.weight"].shape[0]),
        "base_channels": int(state[first].shape[0]),  # IDDM's channel[1]; its channel[0] is half of it
        "num_classes": len(names), "act": act, "time_embedding": "iddm",
        **({"up_block": "iddm"} if network == "cspdarkunet" else {}),
    }
    own = build_network(network, **kwargs).state_dict()
    model, report = convert_state(network, state, own)
    ema = convert_state(network, ckpt.strip_prefix(data["ema_model"]), own)[0] if data.get("ema_model") else None

    config = Config()
    config.data.image_size = h if h == w else [h, w]
    config.data.conditional = bool(names)
    config.data.num_classes = len(names)
    config.model.network, config.model.base_channels, config.model.act = network, kwargs["base_channels"], act
    config.diffusion.noise_schedule, config.diffusion.noise_steps = noise_schedule, noise_steps
    if data.get("sample") in SAMPLERS:
        config.diffusion.sample = data["sample"]
    report.checkpoint = {
        "format": ckpt.FORMAT, "format_version": ckpt.BASE_FORMAT_VERSION, "kind": "dm",
        "config": config.to_dict(), "created_config": config.to_dict(),
        "network": {"name": network, "kwargs": kwargs},
        "data": {"image_size": [h, w], "channels": kwargs["out_channels"], "conditional": bool(names),
                 "class_names": names, "class_counts": None},
        "diffusion": {"name": noise_schedule, "noise_steps": noise_steps, "prediction": "epsilon"},
        "versions": ckpt.versions(),
        "progress": {"epoch": int(data.get("start_epoch") or 0), "step": None},
        "imported_from": {"format": "IDDM 1.x", "file": str(path), "network": network, "act": act,
                          "tensors_mapped": len(report.mapped), "tensors_dropped": len(report.dropped)},
        "model": model, "ema": ema,
    }
    return report


def load_any(path: Path | str, noise_schedule: str = "linear", noise_steps: int = 1000,
             ) -> tuple[dict[str, Any], str | None]:
    """(checkpoint, note): an iddm checkpoint as it is, or an IDDM 1.x one converted on the fly (note says so)."""
    path = Path(path).expanduser()
    data = ckpt.read_checkpoint_file(path)
    if is_iddm_checkpoint(data):
        report = convert(data, path, noise_schedule, noise_steps)
        return report.checkpoint, report.summary(path)
    return ckpt.check_format(data, path), None


def write_converted(path: Path, out: Path, noise_schedule: str = "linear", noise_steps: int = 1000) -> Conversion:
    """``iddm convert``: read an IDDM checkpoint, write the iddm one atomically to ``out`` (a new file)."""
    if noise_schedule == "sqrt":
        raise ConfigError("--noise-schedule sqrt: IDDM's sqrt schedule (betas linspace(1e-4, 0.02) ** 0.5) is not "
                          "iddm's (Diffusion-LM's), so a model trained with it cannot be converted faithfully; "
                          "cosine can at any T, linear and sqrt_linear at T = 1000")
    if noise_schedule in ("linear", "sqrt_linear") and noise_steps != 1000:
        raise ConfigError(f"--noise-steps {noise_steps}: IDDM's {noise_schedule} betas span 1e-4 to 0.02 at any T "
                          "and iddm's are scaled by 1000/T, so they agree at T = 1000 only; a model trained with "
                          "another T cannot be converted faithfully (cosine can)")
    path, out = path.expanduser(), out.expanduser()
    data = ckpt.read_checkpoint_file(path)
    if not is_iddm_checkpoint(data):
        what = "already an iddm checkpoint" if isinstance(data, dict) and data.get("format") == ckpt.FORMAT else \
            f"not an IDDM 1.x checkpoint (it lacks one of {', '.join(IDDM_KEYS)})"
        raise CheckpointError(f"{path} is {what}")
    if out.exists():
        raise ConfigError(f"OUT {out}: already exists; give a new file name, so that nothing is overwritten")
    if not out.parent.is_dir():
        raise ConfigError(f"OUT {out}: the folder {out.parent} does not exist")
    report = convert(data, path, noise_schedule, noise_steps)
    ckpt.save_checkpoint(out, report.checkpoint)
    return report
