"""Resolve a configuration: defaults < profile (with ``extends``) < ``--set key=value`` < explicit flags.

Every problem is collected and raised together as one :class:`ConfigError`, each line naming where the value came
from (file, ``--set`` or flag), its dotted key, the value and what was expected. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from iddm_cli import __version__
from iddm_cli.config.schema import DM, SCHEMAS, VAE, Config, FieldSpec, Schema, schema_of
from iddm_cli.errors import ConfigError
from iddm_cli.nets import NETWORKS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_EXTENDS_DEPTH = 8

# Common spellings from other trainers that difflib cannot guess.
ALIASES = {
    "learning_rate": "lr", "img_size": "image_size", "resolution": "image_size", "bs": "batch_size",
    "workers": "num_workers", "optimizer": "optim", "sampler": "sample", "timesteps": "noise_steps",
    "schedule": "noise_schedule", "ema": "ema_decay", "grad_clip": "max_grad_norm", "width": "base_channels",
    "channels": "base_channels", "activation": "act", "output_dir": "result_path", "data": "dataset_path",
}


@dataclass
class Resolved:
    config: Any  # Config (iddm dm train) or AutoencoderRunConfig (iddm vae train)
    sources: dict[str, str]  # key name -> "default" | "profile:<path>" | "--set" | "--flag"
    profile_files: list[Path]


# ----------------------------------------------------------------------------------------------- profiles
def shipped_profile_dir() -> Path:
    """Profiles inside an installed wheel, or the repository's top-level ``profiles/`` in a checkout."""
    packaged = Path(str(resources.files("iddm_cli"))) / "profiles"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "profiles"


def user_profile_dir() -> Path:
    """``$XDG_CONFIG_HOME/iddm/profiles`` (``~/.config/iddm/profiles`` when unset), as the FID cache follows
    ``$XDG_CACHE_HOME``."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / "iddm" / "profiles"


def available_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in (user_profile_dir(), shipped_profile_dir()):  # shipped names win over user ones
        if folder.is_dir():
            found.update({p.stem: p for p in sorted(folder.glob("*.toml"))})
    return found


def find_profile(name: str, relative_to: Path | None = None) -> Path:
    if name.endswith(".toml") or "/" in name or "\\" in name:
        path = Path(name).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if not path.is_file():
            raise ConfigError(f"profile file {path} does not exist")
        return path
    profiles = available_profiles()
    if name in profiles:
        return profiles[name]
    hint = difflib.get_close_matches(name, list(profiles), n=1, cutoff=0.5)
    did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
    raise ConfigError(f"unknown profile '{name}': {did_you_mean}available: {', '.join(sorted(profiles))} "
                      "(or give a path to a .toml file)")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); TOML files must be saved as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read profile: {err.strerror or err}") from None


def load_profile_chain(name: str) -> list[tuple[Path, dict[str, Any]]]:
    """The profile and its ``extends`` ancestors, base first."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    path = find_profile(name)
    while True:
        if any(path.resolve() == p.resolve() for p, _ in chain):
            raise ConfigError(f"{path}: 'extends' forms a cycle ({' -> '.join(str(p) for p, _ in chain)})")
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise ConfigError(f"{path}: 'extends' is nested more than {MAX_EXTENDS_DEPTH} deep")
        data = _read_toml(path)
        chain.append((path, data))
        parent = data.get("extends")
        if parent is None:
            break
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: extends = {parent!r}: expected a profile name or path")
        path = find_profile(parent, relative_to=path.parent)
    return chain[::-1]


# ----------------------------------------------------------------------------------------------- keys
def suggest(key: str, schema: Schema = DM) -> str:
    """' (did you mean [train] epochs?)' or ''."""
    name = key.split(".")[-1].lower()
    fields = schema.fields
    target = ALIASES.get(name) if ALIASES.get(name) in fields else None
    target = target or next(iter(difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)), None)
    if target is None:
        return ""
    spec = fields[target]
    return f" (did you mean [{spec.section}] {spec.name}?)"


def lookup_key(key: str, schema: Schema = DM) -> FieldSpec | None:
    """A key as a profile spells it: ``section.name`` or a bare ``name``."""
    if "." in key:
        section, _, name = key.partition(".")
        spec = schema.fields.get(name)
        return spec if spec is not None and spec.section == section else None
    return schema.fields.get(key)


def kind_of(data: dict[str, Any]) -> str:
    """The trainer a profile, config.toml or stored config is for: its top-level ``kind`` ("dm" when absent)."""
    kind = data.get("kind", "dm")
    return kind if isinstance(kind, str) and kind in SCHEMAS else "dm"


def profile_kind(name: str) -> str | None:
    """The trainer a profile is for (its own or its nearest ancestor's ``kind``), or None when it cannot be read."""
    try:
        chain = load_profile_chain(name)
    except ConfigError:
        return None
    return next((kind_of(data) for _, data in reversed(chain) if "kind" in data), "dm")


def check_kind(chain: list[tuple[Path, dict[str, Any]]], schema: Schema) -> None:
    """A profile chain is for one trainer: the ``kind`` of the nearest file that sets one (``extends`` inherits it)."""
    for path, data in reversed(chain):
        if "kind" not in data:
            continue
        kind = data["kind"]
        if not isinstance(kind, str) or kind not in SCHEMAS:
            raise ConfigError(f"{path}: kind = {kind!r}: expected one of {', '.join(map(repr, SCHEMAS))}")
        if kind != schema.kind:
            raise ConfigError(f"{path}: is for `{SCHEMAS[kind].command}` (kind = {kind!r}), not `{schema.command}`")
        return
    if schema.kind != "dm":
        raise ConfigError(f"{chain[-1][0]}: is for `iddm dm train` (it sets no kind); a profile for "
                          f"`{schema.command}` says kind = {schema.kind!r}")


def flatten_profile(path: Path, data: dict[str, Any], errors: list[str], schema: Schema = DM) -> dict[str, Any]:
    """Profile tables -> {key name: value}. Top-level bare keys (IDDM's flat names) are accepted too."""
    flat: dict[str, Any] = {}
    fields, sections = schema.fields, schema.sections
    for top, value in data.items():
        if top in ("extends", "kind"):
            continue
        if top in sections and isinstance(value, dict):
            for name, inner in value.items():
                spec = fields.get(name)
                if spec is None or spec.section != top:
                    where = f" (it lives in [{spec.section}])" if spec else suggest(name, schema)
                    errors.append(f"{path}: unknown key [{top}] {name}{where}")
                else:
                    flat[name] = inner
        elif top in fields and not isinstance(value, dict):
            flat[top] = value
        else:
            kind = "section" if isinstance(value, dict) else "key"
            hint = suggest(top, schema) if kind == "key" else _section_hint(top, sections)
            errors.append(f"{path}: unknown {kind} '{top}'{hint}")
    return flat


def _section_hint(name: str, sections: dict[str, type]) -> str:
    match = difflib.get_close_matches(name, list(sections), n=1, cutoff=0.6)
    return f" (did you mean [{match[0]}]?)" if match else f" (sections: {', '.join(sections)})"


def parse_set(item: str, errors: list[str], schema: Schema = DM) -> tuple[FieldSpec, Any] | None:
    """``key=value`` with the value read as TOML (bare words fall back to strings)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        errors.append(f"--set {item!r}: expected KEY=VALUE, for example --set optim.lr=1e-4")
        return None
    spec = lookup_key(key, schema)
    if spec is None:
        errors.append(f"--set: unknown key '{key}'{suggest(key, schema)}")
        return None
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return spec, value


# ----------------------------------------------------------------------------------------------- values
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


MAX_DURATION_S = 366 * 24 * 3600  # a year


def parse_duration(text: str) -> float | None:
    """'90s', '10m', '2h', '1h30m', '1.5h' or plain seconds -> seconds; None when it is not a duration between 0
    (excluded) and a year."""
    text = text.strip().lower()
    match = _DURATION_RE.match(text + "s" if re.fullmatch(r"\d+(?:\.\d+)?", text) else text)
    if not text or match is None:
        return None
    h, m, sec = (float(g) if g else 0.0 for g in match.groups())
    seconds = 3600 * h + 60 * m + sec
    return seconds if 0 < seconds <= MAX_DURATION_S else None
_SIZE_RE = re.compile(r"^[\[(]?\s*(\d+)\s*(?:,\s*(\d+)\s*)?[\])]?$")


def parse_image_size(value: Any) -> int | list[int] | None:
    """64 | [64, 32] | "64" | "64,32" | "[64, 32]" | "(64,32)" -> 64 or [h, w]; None when malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        h, w = value
        return h if h == w else [h, w]
    if isinstance(value, str):
        m = _SIZE_RE.match(value.strip())
        if m:
            return parse_image_size(int(m.group(1)) if m.group(2) is None else [int(m.group(1)), int(m.group(2))])
    return None


def coerce(spec: FieldSpec, value: Any) -> tuple[Any, str | None]:
    """(value in its canonical form, None) or (None, what was expected)."""
    k = spec.kind
    if k == "device":
        text = str(value).strip().lower() if isinstance(value, str) else None
        return (text, None) if text and DEVICE_RE.match(text) else (None, "auto, cpu, cuda or cuda:N")
    if k == "count":
        if isinstance(value, str) and value.strip().lower() == "all":
            return "all", None
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= (spec.le or value):
            return value, None
        return None, f'a number of processes from 1 to {spec.le:g}, or "all"'
    if k == "size":
        size = parse_image_size(value)
        if size is not None and spec.le is not None and max([size] if isinstance(size, int) else size) > spec.le:
            return None, f"a size of at most {spec.le:g} px a side"
        return (size, None) if size is not None else (None, "a positive size: 64 or [H, W]")
    if k == "tristate":
        if isinstance(value, bool) or value == "auto":
            return value, None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true", None
        return None, 'true, false or "auto"'
    if k == "bool":
        return (value, None) if isinstance(value, bool) else (None, "true or false")
    if k in ("strlist", "intlist"):
        items = value if isinstance(value, (list, tuple)) else [value]
        item_spec = replace(spec, kind=k.removesuffix("list"))
        out = []
        for item in items:
            item, expected = coerce(item_spec, item)
            if expected is not None:
                return None, f"a list of {expected.removeprefix('a ').removeprefix('an ')}"
            out.append(item)
        return out, None
    if k == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, "an integer"
    elif k == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, "a number"
        value = float(value)
        if not math.isfinite(value):  # NaN compares false with every bound, so it would pass them all
            return None, "a finite number"
    elif k in ("str", "path") and not isinstance(value, str):
        return None, "a string"
    if spec.choices and value not in spec.choices:
        return None, "one of " + ", ".join(spec.choices)
    if spec.ge is not None and value < spec.ge:
        return None, f"a value >= {spec.ge:g}"
    if spec.gt is not None and value <= spec.gt:
        return None, f"a value > {spec.gt:g}"
    if spec.le is not None and value > spec.le:
        return None, f"a value <= {spec.le:g}"
    return value, None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one folder inside another (a run or output name), or None when it can."""
    if not name.strip():
        return "it is empty"
    if "/" in name or "\\" in name or "\0" in name:
        return "it has a path separator"
    if len(name.encode()) > 255:
        return "it is longer than 255 bytes"
    if name in (".", ".."):
        return f"{name!r} is not a folder of its own"
    return None


# ----------------------------------------------------------------------------------------------- resolve
# Settings that make one choice together: the highest layer that gives one of a group (a flag over --set over a
# profile, an extending profile over its parent) makes the choice alone, and the group's values from the layers below
# are dropped. Each setting maps to its value that chooses nothing (a kimg of 0 gives no length), or None when every
# value chooses.
ONE_CHOICE: tuple[dict[str, Any], ...] = (
    {"epochs": None, "kimg": 0, "max_time": ""},  # the run's length
    {"ema_decay": None, "ema_halflife_kimg": 0},  # the EMA: a decay per step, or a half-life in images
)


def chooses(layer: dict[str, Any], group: dict[str, Any]) -> bool:
    """Whether a layer makes the group's choice: it gives one of the group's settings a value that chooses."""
    return any(name in layer and layer[name] != off for name, off in group.items())


def resolve(profile: str | None = None, sets: list[str] | tuple[str, ...] = (),
            flags: dict[str, Any] | None = None, schema: Schema = DM) -> Resolved:
    """Merge the layers, type-check every value, and return the config with each value's source. ``schema``: the
    trainer's settings (the diffusion model's, or the autoencoder's)."""
    fields = schema.fields
    errors: list[str] = []
    layers: list[tuple[str, dict[str, Any]]] = []  # (source, {key: raw value}), lowest first
    files: list[Path] = []
    if profile:
        chain = load_profile_chain(profile)
        check_kind(chain, schema)
        for path, data in chain:
            files.append(path)
            layers.append((f"profile:{path}", flatten_profile(path, data, errors, schema)))
    set_values: dict[str, Any] = {}
    for item in sets:
        parsed = parse_set(item, errors, schema)
        if parsed:
            set_values[parsed[0].name] = parsed[1]
    layers.append(("--set", set_values))
    layers.append(("flag", {k: v for k, v in (flags or {}).items() if v is not None}))

    values = {name: spec.default for name, spec in fields.items()}
    sources = dict.fromkeys(fields, "default")
    for source, layer in layers:
        for group in ONE_CHOICE:  # say, --epochs replaces the profile's max_time
            if chooses(layer, group):
                for name in group.keys() & fields.keys():
                    values[name], sources[name] = fields[name].default, "default"
        for name, raw in layer.items():
            spec = fields[name]
            origin = spec.flag if source == "flag" else source.removeprefix("profile:")
            value, expected = coerce(spec, raw)
            if expected is not None:
                errors.append(f"{origin}: {spec.dotted} = {raw!r}: expected {expected}")
                continue
            values[name] = value
            sources[name] = spec.flag if source == "flag" else source
    if errors:
        raise ConfigError(*errors)
    return Resolved(build_config(values, schema), sources, files)


def settings_from(cls: type, specs: dict[str, FieldSpec], flags: dict[str, Any]) -> Any:
    """One command's settings (a dataclass of :mod:`iddm_cli.config.commands`) from its flag values: a flag left
    out (None) keeps the schema's default; every value given is checked, and all problems are raised at once."""
    errors, values = [], {}
    for name, spec in specs.items():
        raw = flags.get(name)
        if raw is None or raw == []:
            continue
        value, expected = coerce(spec, raw)
        if expected is not None:
            errors.append(f"{spec.flag} {raw!r}: expected {expected}")
        values[name] = value
    errors += [f"{spec.flag} is not set: give {spec.flag} {spec.metavar}" for name, spec in specs.items()
               if spec.required and not spec.argument and name not in values]  # Typer checks the arguments
    if errors:
        raise ConfigError(*errors)
    return cls(**values)


def build_config(values: dict[str, Any], schema: Schema = DM) -> Any:
    sections = {s: cls(**{n: values[n] for n, spec in schema.fields.items() if spec.section == s})
                for s, cls in schema.sections.items()}
    return schema.config(**sections)


def config_from_dict(data: dict[str, Any], origin: str) -> Any:
    """Rebuild a config saved by :func:`to_toml` (config.toml, checkpoint metadata), checking every value; its
    ``kind`` says which trainer's it is."""
    errors: list[str] = []
    schema = SCHEMAS[kind_of(data)]
    flat = flatten_profile(Path(origin), data, errors, schema)
    values = {name: spec.default for name, spec in schema.fields.items()}
    for name, raw in flat.items():
        value, expected = coerce(schema.fields[name], raw)
        if expected is not None:
            errors.append(f"{origin}: {schema.fields[name].dotted} = {raw!r}: expected {expected}")
        values[name] = value
    if errors:
        raise ConfigError(*errors)
    return build_config(values, schema)


def to_toml(config: Any, header: str = "") -> str:
    text = tomli_w.dumps(config.to_dict())
    head = f"# resolved by iddm {__version__}{header}; usable as a profile (--profile FILE)\n"
    return head + text


# ----------------------------------------------------------------------------------------------- checks
def source_of(resolved: Resolved, name: str) -> str:
    src = resolved.sources[name]
    return src.removeprefix("profile:")


def check_runnable(resolved: Resolved, data: bool = True) -> None:
    """Cross-field rules that no single value shows. All problems at once. ``data=False``: a config without its
    dataset paths passes (--print-config writes profiles that the command line completes)."""
    c, errors = resolved.config, []
    schema = schema_of(c)

    def bad(name: str, message: str) -> None:
        errors.append(f"{source_of(resolved, name)}: {schema.fields[name].dotted}: {message}")

    if not c.device.distributed and c.device.world_size:
        bad("world_size", "only applies together with --distributed (or use --devices N)")
    if c.device.distributed and c.device.world_size and c.device.devices not in ("all", c.device.world_size):
        bad("world_size", f"{c.device.world_size} contradicts device.devices = {c.device.devices}; give one of them")
    if c.device.use_gpu >= 0 and not c.device.distributed and c.device.device not in ("auto",
                                                                                    f"cuda:{c.device.use_gpu}"):
        bad("use_gpu", f"{c.device.use_gpu} contradicts device.device = {c.device.device!r}; give one of them")
    if c.device.device.startswith("cuda:") and (c.device.devices not in ("all", 1) or c.device.distributed):
        name = "distributed" if c.device.distributed else "devices"
        bad(name, f"asks for several processes, but device.device = {c.device.device!r} names one GPU; use --device "
                  "cuda with --devices N (CUDA_VISIBLE_DEVICES picks which GPUs)")
    problem = name_problem(c.train.run_name)
    if problem:  # a new run's folder is one name inside result_path (runs resumed from older versions may differ)
        bad("run_name", f"{c.train.run_name!r}: expected one folder name ({problem})")
    if c.train.start_epoch != -1 and not c.train.resume:
        bad("start_epoch", "only applies together with --resume")
    if c.train.pretrain and not c.train.pretrain_path:
        bad("pretrain", "needs --pretrain-path FILE|RUN_DIR")
    if c.train.pretrain_path and not c.train.pretrain:
        bad("pretrain_path", "is set but --pretrain is not: add --pretrain, or drop the path")
    if c.train.max_time and parse_duration(c.train.max_time) is None:
        bad("max_time", f"{c.train.max_time!r}: expected a duration such as 90s, 10m, 2h or 1h30m (at most a year)")
    if c.train.max_time and c.train.kimg:
        bad("kimg", "and train.max_time both set the length of the run: give one of them")
    h, w = image_hw(c)
    if schema is VAE:
        for name in ("train_dataset_path", "val_dataset_path"):
            if data and not getattr(c.data, name):  # nothing set it, so no source to name
                errors.append(f"{schema.fields[name].dotted} is not set: give --{name.replace('_', '-')} DIR")
        f = c.model.downsample
        if f not in (4, 8):
            bad("downsample", f"{f}: expected 4 or 8")
        elif h % f or w % f:
            bad("image_size", f"{h}x{w} is not divisible by the down-sampling factor {f} (try "
                              f"{max(f, round(h / f) * f)})")
    else:
        _check_diffusion(c, h, w, bad)
    if errors:
        raise ConfigError(*errors)


NUM_VIS_ZERO = "0: expected -1 (8 images) or 1 or more (--no-vis: no previews)"  # dm train's num_vis; -1 is IDDM's


def _check_diffusion(c: Config, h: int, w: int, bad: Any) -> None:
    if c.vis.num_vis == 0:  # checked again while planning, which resumed runs go through
        bad("num_vis", NUM_VIS_ZERO)
    if c.model.latent and not c.model.autoencoder_ckpt:
        bad("latent", "needs --autoencoder-ckpt FILE: an autoencoder checkpoint from `iddm vae train`")
    for name in ("autoencoder_ckpt", "cache_latents"):
        if getattr(c.model, name) and not c.model.latent:
            bad(name, "only applies to latent diffusion: add --latent, or drop it")
    net = NETWORKS[c.model.network]  # the network's own size rules, from its registry entry
    multiple = net.width_multiple
    if net.uses_base_channels and c.model.base_channels % multiple:
        bad("base_channels", f"{c.model.base_channels} is not a multiple of {multiple}, which {c.model.network} "
                             "needs (its attention has 4 heads)")
    divisor = net.size_divisor
    if not c.model.latent and (h % divisor or w % divisor):  # a latent's size is checked with its autoencoder's
        bad("image_size", f"{h}x{w} is not divisible by {divisor}, which the {c.model.network} network needs "
                          f"(try {max(divisor, round(h / divisor) * divisor)})")


def image_hw(config: Any) -> tuple[int, int]:
    size = config.data.image_size
    return (size, size) if isinstance(size, int) else (size[0], size[1])
