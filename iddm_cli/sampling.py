"""Generate images from a checkpoint: everything about the model comes from the checkpoint itself.

Each image k of a request has its own generator seeded from (seed, k), which draws its start noise and any noise
a stochastic sampler adds, so a seed gives the same images whatever the batch size.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from iddm_cli import __version__
from iddm_cli.config.commands import COMMANDS, MODE_TEXT_REFUSED, SampleConfig
from iddm_cli.config.loader import name_problem
from iddm_cli.core.checkpoint import load_stored, resolve_checkpoint, storage_error
from iddm_cli.core.devices import parse_device, use_device, visible_gpus
from iddm_cli.core.iddm_import import load_any
from iddm_cli.core.images import PIL_FORMATS, save_grid, to_uint8
from iddm_cli.core.latent import LatentCodec, load_autoencoder
from iddm_cli.core.rundir import check_writable, plan_run_dir
from iddm_cli.diffusion.samplers import SAMPLERS, sample, timesteps
from iddm_cli.diffusion.schedule import PREDICTIONS, Diffusion
from iddm_cli.errors import CheckpointError, ConfigError

SampleRequest = SampleConfig  # the settings of one ``iddm sample`` call; defaults and bounds live in the schema


@dataclass
class SampleResult:
    out_dir: Path
    files: list[Path]
    grid: Path | None
    manifest: Path
    notes: list[str] = field(default_factory=list)


def select_device(spec: str, use_gpu: int | None = None) -> tuple[torch.device, str | None]:
    """(device, note): ``--device`` of ``iddm sample``, parsed as the trainers parse it; one device. IDDM's
    ``--use-gpu N`` is cuda:N, or the CPU with a note when no GPU is visible (as IDDM's generator did)."""
    gpus = visible_gpus()
    if use_gpu is not None:
        if spec not in ("auto", f"cuda:{use_gpu}"):
            raise ConfigError(f"--use-gpu {use_gpu} contradicts --device {spec}; give one of them")
        if not gpus:
            return torch.device("cpu"), f"note: --use-gpu {use_gpu}: no GPU is visible, so sampling runs on the CPU"
        spec = f"cuda:{use_gpu}"
    kind, index = parse_device(spec)
    if kind == "cpu" or (kind == "auto" and not gpus):
        return torch.device("cpu"), None
    if (index or 0) >= gpus:
        raise ConfigError(f"--device {spec}: no such GPU here ({gpus} visible)")
    return torch.device("cuda", index or 0), None


def selected_classes(req: SampleRequest, meta: dict[str, Any]) -> list[int] | None:
    """The selected class ids (each repeated ``num`` times later); None for an unconditional model."""
    names: list[str] = meta["class_names"]
    if not meta["conditional"]:
        if [name for name in req.class_name if name != "-1"] or req.class_id:  # IDDM passes -1 to any model
            raise ConfigError("--class-name/--class-id: this checkpoint is unconditional (it has no classes)")
        return None
    ids: list[int] = []
    for name in req.class_name:
        if name == "-1":  # IDDM's --class_name -1: every class
            ids.extend(range(len(names)))
        elif name in names:
            ids.append(names.index(name))
        elif name.isdigit() and int(name) < len(names):  # IDDM's --class_name took an index
            ids.append(int(name))
        else:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"--class-name {name!r}: no such class; {hint}classes: {', '.join(names)}")
    for i in req.class_id:
        if not 0 <= i < len(names):
            raise ConfigError(f"--class-id {i}: expected 0..{len(names) - 1} ({len(names)} classes)")
        ids.append(i)
    return ids or list(range(len(names)))


def check_request(req: SampleRequest, ckpt: dict[str, Any]) -> tuple[str, int, float]:
    """Validate against the checkpoint (the values alone were checked by the schema); returns (sampler, steps,
    cfg_scale)."""
    sampler = req.sampler or ckpt["config"]["diffusion"]["sample"]
    if sampler not in SAMPLERS:
        close = difflib.get_close_matches(sampler, list(SAMPLERS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"--sampler {sampler!r}: unknown sampler; {hint}choose from {', '.join(SAMPLERS)}")
    T = ckpt["diffusion"]["noise_steps"]
    steps = req.steps if req.steps is not None else min(SAMPLERS[sampler].default_steps, T)
    if not 1 <= steps <= T:
        raise ConfigError(f"--steps {steps}: expected 1..{T} (the model was trained with T={T})")
    if req.eta is not None and not SAMPLERS[sampler].eta:  # a sampler without that knob: it would change nothing
        with_eta = [name for name, spec in SAMPLERS.items() if spec.eta]
        raise ConfigError(f"--eta: {sampler} has no such setting (only {', '.join(with_eta)} has); drop --eta or "
                          f"add --sampler {with_eta[0]}")
    if req.cfg_scale is not None and not ckpt["data"]["conditional"]:
        raise ConfigError("--cfg-scale: this checkpoint is unconditional, so there is nothing to guide")
    cfg = req.cfg_scale if req.cfg_scale is not None else float(ckpt["config"]["diffusion"]["cfg_scale"])
    check_iddm_flags(req, ckpt)
    problem = name_problem(req.generate_name) if req.generate_name is not None else None
    if problem:  # it starts every file name: it must not lead out of the output folder
        raise ConfigError(f"--generate-name {req.generate_name!r}: expected a plain name ({problem})")
    return sampler, steps, cfg


def check_iddm_flags(req: SampleRequest, ckpt: dict[str, Any]) -> None:
    """IDDM's generate flags that describe the model: accepted when they agree with the checkpoint (which IDDM also
    preferred), refused with the checkpoint's value when they do not."""
    data, net = ckpt["data"], ckpt["network"]
    h, w = data["image_size"]
    stored = {"image_size": (h, w), "network": net["name"], "act": net["kwargs"].get("act"),
              "num_classes": len(data["class_names"]), "conditional": data["conditional"]}
    given = {"image_size": (req.image_size, req.image_size) if isinstance(req.image_size, int) else
             tuple(req.image_size) if req.image_size else None, "network": req.network, "act": req.act,
             "num_classes": req.num_classes, "conditional": req.conditional}
    problems = [f"--{name.replace('_', '-')} {given[name]!r}: the checkpoint says {stored[name]!r}, and a checkpoint "
                "computes only what it was trained as (drop the flag: iddm sample reads it from the checkpoint)"
                for name in given if given[name] is not None and given[name] != stored[name]]
    if req.mode == "text":
        problems.append(MODE_TEXT_REFUSED)
    if req.latent and "latent" not in ckpt:
        problems.append("--latent: this checkpoint is a pixel-space model (drop the flag: iddm sample reads it from "
                        "the checkpoint)")
    if problems:
        raise ConfigError(*problems)


@dataclass
class Loaded:
    """A diffusion checkpoint ready to sample: the network on its device, its schedule and, for a latent model, the
    autoencoder that decodes."""

    ckpt: dict[str, Any]
    model: torch.nn.Module
    diffusion: Diffusion
    codec: LatentCodec | None
    weights: str  # "ema" or "model"
    notes: list[str] = field(default_factory=list)


def load_for_sampling(ckpt: dict[str, Any], req: SampleRequest, device: torch.device,
                      source: Path | str | None = None) -> Loaded:
    """The network (EMA weights unless ``req.ema`` is off), the schedule and the verified autoencoder. ``source``:
    the checkpoint file, named by errors."""
    use_device(device)
    codec, codec_note = _codec(req, ckpt, device)
    weights = "ema" if req.ema and ckpt.get("ema") else "model"
    notes = [codec_note] if codec_note else []
    if req.ema and weights == "model":
        notes.append("note: the checkpoint holds no EMA weights, so its raw weights sample")
    model = load_stored(ckpt["network"], ckpt[weights], source or req.checkpoint or req.weight_path)
    # channels_last on a CPU: 12% faster convolutions for the unet at 32 px (batch 512, 1 and 2 threads)
    model.to(device, memory_format=torch.channels_last if device.type == "cpu" else torch.preserve_format).eval()
    prediction = ckpt["diffusion"].get("prediction", "epsilon")
    if prediction not in PREDICTIONS:
        raise CheckpointError(f"the checkpoint's network predicts {prediction!r}, which this iddm cannot sample "
                              f"from (it knows {', '.join(PREDICTIONS)}); upgrade iddm")
    diffusion = Diffusion(ckpt["diffusion"]["name"], ckpt["diffusion"]["noise_steps"], prediction)
    return Loaded(ckpt, model, diffusion, codec, weights, notes)


def draw(loaded: Loaded, labels: list[int] | None, n: int, *, sampler: str, steps: int, cfg_scale: float,
         eta: float | None, seed: int, batch_size: int, device: torch.device,
         progress: Callable[[int, int], None] | None = None, first: int = 0) -> torch.Tensor:
    """``n`` images in [-1, 1] on the CPU, (N, C, H, W); image k has its own generator from (seed, first + k), so a
    seed gives the same images whatever the batch size (and a shard starting at ``first`` the same as the whole)."""
    ckpt, codec = loaded.ckpt, loaded.codec
    shape = ckpt["latent"]["shape"] if codec is not None else [ckpt["data"]["channels"], *ckpt["data"]["image_size"]]
    gens = [torch.Generator().manual_seed((seed * 1_000_003 + first + k) % 2**63) for k in range(n)]
    noise = torch.stack([torch.randn(*shape, generator=g) for g in gens])  # (N, C, H, W): images or latents
    nfe = SAMPLERS[sampler].nfe(len(timesteps(loaded.diffusion, steps)))
    counted = _CountingModel(loaded.model, math.ceil(n / batch_size) * nfe, progress)
    images = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        y = torch.tensor(labels[start:stop], device=device) if labels is not None else None
        x = sample(counted, loaded.diffusion, noise[start:stop].to(device), y, sampler=sampler, steps=steps,
                   cfg_scale=cfg_scale if y is not None else 1.0, eta=eta, generators=gens[start:stop],
                   clip=ckpt["latent"].get("clip") if codec is not None else 1.0)
        if codec is not None:  # latents, scaled to unit variance in training, decode to images
            x = codec.decode(x / ckpt["latent"]["scale"])
        images.append(x.cpu())
    return torch.cat(images)


def generate(req: SampleRequest, progress: Callable[[int, int], None] | None = None) -> SampleResult:
    """Run a request end to end; ``progress(done, total)`` counts network evaluations."""
    if not (req.checkpoint or req.weight_path):
        raise ConfigError("give a checkpoint: iddm sample RUN_DIR or iddm sample path/to/ckpt_last.pt")
    path = resolve_checkpoint(req.checkpoint or req.weight_path)  # IDDM's --weight-path names it too
    ckpt, converted = load_diffusion_checkpoint(path, req)
    sampler, steps, cfg_scale = check_request(req, ckpt)
    ids = selected_classes(req, ckpt["data"])
    device, device_note = select_device(req.device, req.use_gpu)
    loaded = load_for_sampling(ckpt, req, device, path)
    out_dir = output_dir(req, path, sampler, steps)  # checked before any sampling

    per_class = 1 if "-1" in req.class_name else req.num  # IDDM's -1: one image of every class
    if "-1" in req.class_name and ids is not None and req.num != COMMANDS["sample"]["num"].default:
        result_notes = [f"note: --class-name -1 draws one image of every class (IDDM's meaning), so --num {req.num} "
                        "does not apply; without -1, every class gets --num images"]
    else:
        result_notes = []
    labels = [i for i in ids for _ in range(per_class)] if ids is not None else None
    n = len(labels) if labels is not None else req.num
    images = draw(loaded, labels, n, sampler=sampler, steps=steps, cfg_scale=cfg_scale, eta=req.eta, seed=req.seed,
                  batch_size=req.batch_size, device=device, progress=progress)
    try:
        result = _write(req, ckpt, path, out_dir, images, labels, sampler, steps, cfg_scale, loaded.weights)
    except OSError as err:  # the disk filled or the folder went away after the pre-flight check
        raise storage_error(err, Path(err.filename) if err.filename else out_dir,
                            f"{out_dir} may hold some of the images: remove it, or give another --out") from None
    result.notes += [n for n in (converted, device_note, *loaded.notes, *result_notes) if n]
    return result


def load_diffusion_checkpoint(path: Path, req: SampleRequest) -> tuple[dict[str, Any], str | None]:
    """(checkpoint, note): a diffusion-model checkpoint (an IDDM 1.x one converted in memory); an autoencoder's, or
    --autoencoder-ckpt for a pixel-space model, is refused."""
    ckpt, converted = load_any(path)
    if ckpt.get("kind", "dm") != "dm":
        raise ConfigError(f"{path} is an autoencoder checkpoint: this command draws from diffusion-model checkpoints "
                          "(an autoencoder's reconstructions are in its run's vis/ folder; iddm eval vae scores "
                          "an autoencoder)")
    if "latent" not in ckpt and (req.autoencoder_ckpt is not None or not req.verify):
        flag = "--autoencoder-ckpt" if req.autoencoder_ckpt is not None else "--no-verify"
        raise ConfigError(f"{flag}: this checkpoint is a pixel-space model; it has no autoencoder")
    return ckpt, converted


def _codec(req: SampleRequest, ckpt: dict[str, Any], device: torch.device) -> tuple[LatentCodec | None, str | None]:
    """A latent checkpoint's autoencoder: the file it recorded (or --autoencoder-ckpt), verified by its SHA-256
    unless --no-verify; (None, None) for a pixel-space checkpoint."""
    latent = ckpt.get("latent")
    if latent is None:
        return None, None
    record = latent["autoencoder"]
    given = req.autoencoder_ckpt is not None
    where = req.autoencoder_ckpt if given else record["path"]
    key = "--autoencoder-ckpt" if given else "the checkpoint's autoencoder"
    if not given and not Path(where).exists():
        raise CheckpointError(f"the autoencoder this model was trained with, {where}, is not there: give it with "
                              "--autoencoder-ckpt FILE")
    hint = "give the original with --autoencoder-ckpt, or --no-verify to decode with this one anyway"
    codec = load_autoencoder(where, key, record["sha256"] if req.verify else None, device, hint)
    note = None
    if codec.record["sha256"] != record["sha256"]:
        note = (f"warning: --no-verify: {codec.record['path']} is not the autoencoder the model was trained with "
                "(SHA-256 differs); the images may be wrong")
    if codec.record["network"] != record["network"]:
        raise ConfigError(f"{key}: {codec.record['path']} is a {codec.record['network']['kwargs']} autoencoder and "
                          f"the model was trained on a {record['network']['kwargs']} one; it cannot decode them")
    return codec, note


class _CountingModel(torch.nn.Module):
    """Wraps the model to report progress after every network evaluation."""

    def __init__(self, model: torch.nn.Module, total: int, progress: Callable[[int, int], None] | None):
        super().__init__()
        self.model, self.total, self.progress, self.calls = model, total, progress, 0
        self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(x, t, y)
        self.calls += 1
        if self.progress is not None:
            self.progress(self.calls, self.total)
        return out


def output_dir(req: SampleRequest, ckpt_path: Path, sampler: str, steps: int) -> Path:
    """Where the images go: ``--out`` itself, which must be new or empty (nothing is written beside it), or by
    default ``RUN/samples/<sampler>-<steps>steps-seed<seed>`` with a -2, -3, ... suffix when that one is taken."""
    if req.out:
        out = Path(req.out).expanduser()
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: is a file; give a folder (new or empty)")
        if out.is_dir() and any(out.iterdir()):
            raise ConfigError(f"--out {out}: the folder already holds files; give a new or empty folder, so that "
                              "nothing is overwritten")
    else:
        out, _ = plan_run_dir(str(ckpt_path.parent / "samples"), f"{sampler}-{steps}steps-seed{req.seed}")
    problem = check_writable(out)
    if problem and req.out:
        raise ConfigError(f"--out: cannot create {out}: {problem}")
    if problem:  # the default beside the checkpoint
        raise ConfigError(f"cannot write the samples beside the checkpoint ({out}): {problem}; give --out DIR")
    return out


def _write(req: SampleRequest, ckpt: dict[str, Any], path: Path, out_dir: Path, images: torch.Tensor,
           labels: list[int] | None, sampler: str, steps: int, cfg_scale: float, weights: str) -> SampleResult:
    names = ckpt["data"]["class_names"]
    out_dir.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images)
    files, counters = [], {}
    for k in range(pixels.shape[0]):
        stem = names[labels[k]] if labels is not None else "sample"
        stem = f"{req.generate_name}_{stem}" if req.generate_name else stem
        counters[stem] = counters.get(stem, -1) + 1
        array = pixels[k].permute(1, 2, 0).numpy() if pixels.shape[1] == 3 else pixels[k, 0].numpy()
        file = out_dir / f"{stem}_{counters[stem]:04d}.{req.image_format}"
        Image.fromarray(array).save(file, format=PIL_FORMATS[req.image_format])
        files.append(file)
    grid = None
    if req.grid:
        if labels is not None:
            rows, row_labels = len(set(labels)), [names[i] for i in dict.fromkeys(labels)]
        else:
            rows, row_labels = max(1, round(math.sqrt(len(files)))), None
        prefix = f"{req.generate_name}_" if req.generate_name else ""
        grid = save_grid(images, out_dir / f"{prefix}grid.{req.image_format}", rows, row_labels, req.image_format)
    manifest = out_dir / "manifest.json"
    settings = {**asdict(req), "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale if labels else None}
    manifest.write_text(json.dumps({
        "iddm": __version__, "checkpoint": str(path.resolve()), "weights": weights,
        "checkpoint_progress": ckpt.get("progress"), "settings": settings,
        "classes": [names[i] for i in dict.fromkeys(labels)] if labels is not None else None,
        "image_size": ckpt["data"]["image_size"], "files": [f.name for f in files],
        "grid": grid.name if grid else None,
    }, indent=2) + "\n", encoding="utf-8")
    return SampleResult(out_dir, files, grid, manifest)
