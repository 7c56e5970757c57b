"""The training configuration: one dataclass per section, the single source of truth.

Defaults, value kinds, choices, bounds and help text live here and nowhere else: ``--help``, ``--print-config``,
the shipped profiles, ``config.toml`` in a run directory and the checkpoint metadata are all derived from these
classes. Key names are unique across sections, so each key is also a flag (``batch_size`` -> ``--batch-size`` and
IDDM's ``--batch_size``) and ``--set batch_size=16`` works as well as ``--set data.batch_size=16``.

Every number has bounds, and NaN or infinity is never accepted. Upper bounds guard what could exhaust memory or time
(batch_size, image_size, base_channels, noise_steps, epochs, num_workers, num_vis, vis_steps, num_classes) or
make no sense (lr above 10, cfg_scale above 100, seed beyond 64 bits, dist_timeout beyond a week).

Every IDDM diffusion-training flag has a field here with the same name and meaning (``compat``: shown in the
IDDM compatibility panel). A field marked ``resumable`` may change when a run resumes: that mark alone makes
``iddm resume``'s options and rules. The options of the other commands (``sample``, ``dataset check``, ``resume``)
are declared the same way in :mod:`iddm_cli.config.commands`.

Two trainers have a schema each (:class:`Schema`): the diffusion model's (:class:`Config`, ``iddm dm train``) and the
autoencoder's (:class:`AutoencoderRunConfig`, ``iddm vae train``, every IDDM autoencoder flag). They share the
sections that mean the same in both (train, save, device) and the declarations of the settings both have.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from iddm_cli import choices as C
from iddm_cli.config.fields import FieldSpec, opt, specs_of
from iddm_cli.nets import NETWORKS


def _image_size(default: int) -> Any:
    return opt(default, "Training size: 64 or H,W (IDDM spellings [64,32] and (64,32) parse too).", kind="size",
               short="-i", metavar="SIZE", le=4096)


def _augment(default: str) -> Any:
    return opt(default, "iddm: resize to 1.25x then RandomResizedCrop(0.8-1.0); resize: plain resize; hflip: resize "
               "plus random horizontal flips.", choices=C.AUGMENTS)


def _batch_size(default: int) -> Any:
    return opt(default, "Images per step (per device, as in IDDM).", short="-b", ge=1, le=65_536)


def _num_workers() -> Any:
    return opt(-1, "DataLoader worker processes per training process; -1 = auto: none on the CPU (training uses "
               "every core), min(8, CPU cores per process - 1) on CUDA.", ge=-1, le=256, resumable=True)


def _strict_data() -> Any:
    return opt(False, "Stop at the first image that fails to decode instead of logging it and training on the next "
                      "image in its place.", resumable=True)


@dataclass(kw_only=True)
class DataConfig:
    PANEL: ClassVar[str] = "Data"

    dataset_path: str = opt(
        "", "Image folder: class subfolders train a conditional model, a folder of images an unconditional one. "
        "'builtin:fashion-mnist' is the embedded demo set. On resume: where the run's images moved (its classes "
        "must be there).", metavar="DIR", kind="path", resumable=True
    )
    image_size: Any = _image_size(64)
    conditional: Any = opt("auto", "Class-conditional training; auto = conditional when the folder has 2+ class "
                           "subfolders.", kind="tristate", short="-c")
    num_classes: int = opt(0, "Expected number of classes (0 = count the class subfolders).", ge=0,
                           le=100_000)
    augment: str = _augment("iddm")
    batch_size: int = _batch_size(2)
    num_workers: int = _num_workers()
    strict_data: bool = _strict_data()


@dataclass(kw_only=True)
class ModelConfig:
    PANEL: ClassVar[str] = "Model"

    network: str = opt("unet", "Denoising network: unet and cspdarkunet are IDDM's; adm-xs, adm-s and adm-m an "
                       "ADM-style U-Net in three sizes (residual blocks, scale-shift conditioning, attention at 1/4 "
                       "of the resolution and below). --dry-run shows parameters and GFLOP.", choices=C.NETWORKS)
    base_channels: int = opt(64, "Network width: channels of the first U-Net stage (64 = IDDM's unet; "
                             "cspdarkunet uses half of it at its stem; the adm networks' sizes fix their widths). "
                             + "; ".join(f"{name}: a multiple of {net.width_multiple}, image sides divisible by "
                                         f"{net.size_divisor}" for name, net in NETWORKS.items()
                                         if net.uses_base_channels)
                             + "; " + ", ".join(f"{name}: image sides divisible by {net.size_divisor}"
                                                for name, net in NETWORKS.items() if not net.uses_base_channels)
                             + ".", ge=4, le=1024)
    act: str = opt("gelu", "Activation used throughout the network.", choices=C.ACTIVATIONS)
    latent: bool = opt(False, "Latent diffusion: train in the latent space of a frozen autoencoder "
                       "(--autoencoder-ckpt, from `iddm vae train`); image_size stays the image size.", short="-l",
                       panel="Latent diffusion")
    autoencoder_network: str = opt("vae", "Autoencoder network (must be the checkpoint's).", choices=C.AUTOENCODERS,
                                   panel="Latent diffusion")
    autoencoder_ckpt: str = opt("", "Autoencoder checkpoint (ckpt_best.pt of an `iddm vae train` run or its run "
                                "directory). On resume: where the run's autoencoder moved (its SHA-256 is checked).",
                                metavar="FILE", panel="Latent diffusion", resumable=True, kind="path")
    cache_latents: bool = opt(False, "Encode the dataset once (posterior mean and std kept in memory) and draw a "
                              "latent from the posterior each step, instead of encoding every batch; no "
                              "augmentation then.", panel="Latent diffusion")


@dataclass(kw_only=True)
class DiffusionConfig:
    PANEL: ClassVar[str] = "Diffusion"

    noise_steps: int = opt(1000, "Diffusion steps T.", ge=2, le=100_000)
    noise_schedule: str = opt("linear", "Beta schedule.", choices=C.NOISE_SCHEDULES)
    prediction: str = opt("epsilon", "What the network predicts: epsilon (the noise, IDDM's), v (alpha eps - sigma "
                          "x0) or x0 (the clean image); stored in the checkpoint, samplers convert.",
                          choices=C.PREDICTIONS)
    min_snr_gamma: float = opt(0.0, "Min-SNR-gamma loss weighting (5 in the paper): with the mse loss, each "
                               "sample's loss becomes its x0 error times min(SNR, gamma), whatever the prediction "
                               "(other losses take the same weights); 0 = off, every step weighted alike.",
                               ge=0.0, le=1e6)
    sample: str = opt("ddpm", "Default sampler recorded in the checkpoint for `iddm sample`; training previews "
                      "use deterministic DDIM.", choices=C.SAMPLERS, short="-s")
    cfg_scale: float = opt(3.0, "Classifier-free guidance scale for previews (1 = no guidance).", ge=0.0,
                             le=100.0)
    cfg_dropout: float = opt(0.1, "Per-sample probability of training on the null class (conditional only).",
                             ge=0.0, le=1.0)


def one_choice(flags: str, what: str, none: str) -> str:
    """The help sentence of settings that make one choice together (:data:`iddm_cli.config.loader.ONE_CHOICE`)."""
    return (f"Of {flags}, the one given at the highest layer (flag, --set, profile) sets {what} ({none} counts as "
            "not given)")


ONE_LENGTH = (one_choice("--epochs, --kimg and --max-time", "the length", "a kimg of 0 or an empty max_time")
              + "; --kimg and --max-time in one layer are refused.")
ONE_EMA = (one_choice("--ema-decay and --ema-halflife-kimg", "the EMA", "a half-life of 0")
           + "; given in one layer, a half-life above 0 wins.")


def _seed(short: str | None = None) -> Any:
    return opt(0, "Random seed.", short=short, ge=0, le=2**63 - 1)


def _lr(default: float) -> Any:
    return opt(default, "Peak learning rate.", gt=0.0, le=10.0)


def _lr_func(default: str) -> Any:
    return opt(default, "Learning-rate schedule, computed every step: linear = constant (IDDM), cosine, "
               "warmup_cosine.", choices=C.LR_FUNCS)


@dataclass(kw_only=True)
class OptimConfig:
    PANEL: ClassVar[str] = "Optimisation"

    optim: str = opt("adamw", "Optimizer.", choices=C.OPTIMIZERS)
    lr: float = _lr(3e-4)
    lr_func: str = _lr_func("linear")
    warmup_epochs: float = opt(5.0, "Warm-up length for warmup_cosine, in epochs (fractions allowed).", ge=0.0,
                                 le=1_000_000.0)
    loss: str = opt("mse", "Loss between the network's output and its target (the noise, v or x0: --prediction).",
                    choices=C.LOSSES)
    max_grad_norm: float = opt(1.0, "Clip the gradient norm to this value (0 = no clipping).", ge=0.0)
    ema_decay: float = opt(0.995, "EMA decay after warm-up; the warm-up uses min(decay, (1+n)/(10+n)). " + ONE_EMA,
                           ge=0.0, le=1.0)
    ema_halflife_kimg: float = opt(0.0, "EMA by half-life in thousands of training images (EDM's), the same for "
                                   "any batch size and number of devices: each step of B images (all devices) "
                                   "decays the average by 0.5^(B / half-life); 0 = use ema_decay per step. " + ONE_EMA,
                                   ge=0.0, le=1e9, metavar="KIMG")
    ema_rampup: float = opt(0.05, "With ema_halflife_kimg: the half-life is at most this fraction of the images "
                            "seen so far, so early averages forget the random start (EDM's 0.05; 0 = no ramp-up).",
                            ge=0.0, le=1e6)
    amp: bool = opt(False, "Mixed precision: bf16 autocast where supported, else fp16 with a GradScaler on CUDA.")
    channels_last: bool = opt(False, "Train in the channels_last memory layout (NHWC): faster convolutions on some "
                              "CPUs and on GPUs with tensor cores, slower on others (benchmarks/train_throughput.py "
                              "measures it); the same computation up to rounding.")
    compile: bool = opt(False, "Compile the training step's network with torch.compile (a C++ compiler on the CPU, "
                        "Triton on CUDA): faster steps after a compilation of a minute or more at the start and at "
                        "the first smaller batch (an epoch's last); pays off on long runs. Its generated code is "
                        "cached in RUN/compile-cache.", resumable=True)


@dataclass(kw_only=True)
class TrainConfig:
    PANEL: ClassVar[str] = "Training"

    seed: int = _seed()
    epochs: int = opt(300, "Epochs to train; on resume, a new count sets where a run planned in epochs ends.",
                      short="-e", ge=1, le=1_000_000, resumable=True)
    max_time: str = opt("", "Train for a wall-clock budget instead of --epochs: 90s, 10m, 2h, 1h30m. The first steps "
                        "measure the speed; the step count, and with it the learning-rate schedule, is then fixed "
                        "and stored so that the run, its epoch ends and its final checkpoint (and preview) fit in "
                        "the budget as estimated. " + ONE_LENGTH,
                        metavar="DURATION")
    kimg: float = opt(0.0, "Train for this many thousand images instead of --epochs (EDM's unit): "
                      "ceil(kimg x 1000 / global batch) steps, ending wherever in an epoch that falls; --epochs is "
                      "then ignored. " + ONE_LENGTH, ge=0, metavar="KIMG")
    run_name: str = opt("df", "Run directory name under result_path: one folder name.", short="-n",
                         metavar="NAME")
    result_path: str = opt("results", "Folder that holds run directories.", metavar="DIR", kind="path")
    log_every: int = opt(50, "Steps between status lines and metrics.jsonl records.", ge=1, resumable=True)
    max_nonfinite: int = opt(20, "Stop after this many steps in a row with a non-finite loss or gradient "
                             "(each one is skipped; the run is stopped at the next status line, epoch end or "
                             "checkpoint, before the checkpoint is written).", ge=1, resumable=True)
    resume: bool = opt(False, "Continue the run result_path/run_name where it stopped (like `iddm resume`).",
                       short="-r", compat=True)
    start_epoch: int = opt(-1, "With resume: continue from ckpt_NNN.pt, the state after N epochs (-1 = the newest "
                           "state).", ge=-1, metavar="N", compat=True)
    pretrain: bool = opt(False, "Initialise the network from --pretrain-path.")
    pretrain_path: str = opt("", "Checkpoint whose weights initialise the network, or a run directory (its "
                             "ckpt_last.pt; an autoencoder run's ckpt_best.pt).", metavar="FILE|RUN_DIR",
                             kind="path")


@dataclass(kw_only=True)
class SaveConfig:
    PANEL: ClassVar[str] = "Checkpoints"

    save_model_interval: bool = opt(False, "Also keep ckpt_NNN.pt every save_model_interval_epochs epochs.",
                                    resumable=True)
    save_model_interval_epochs: int = opt(10, "Epochs between kept checkpoints.", ge=1, resumable=True)
    start_model_interval: int = opt(-1, "Keep interval checkpoints only after this many epochs.", ge=-1,
                                    resumable=True)
    keep_last: int = opt(0, "Keep only the newest N interval checkpoints ckpt_NNN.pt (0 = keep all).", ge=0,
                         resumable=True)


@dataclass(kw_only=True)
class VisConfig:
    PANEL: ClassVar[str] = "Previews"

    vis: bool = opt(False, "Write a sample grid from the EMA weights during training.", short="-v", resumable=True)
    vis_interval: int = opt(1, "Epochs between sample grids (the last epoch always gets one).", ge=1,
                            resumable=True)
    num_vis: int = opt(-1, "Images per class in the grid (conditional) or in total (unconditional); -1 = 8.",
                       ge=-1, le=1000, resumable=True)
    vis_steps: int = opt(50, "DDIM steps for the preview grid.", ge=1, le=100_000, resumable=True)
    image_format: str = opt("png", "Format of sample grids.", choices=C.IMAGE_FORMATS, resumable=True)


@dataclass(kw_only=True)
class EvalConfig:
    PANEL: ClassVar[str] = "Evaluation"

    eval_interval: int = opt(0, "Every N epochs (and after the last), FID and KID of eval_num DDIM samples from the "
                             "EMA weights against eval_ref; the best FID is kept as ckpt_best_fid.pt (0 = off). "
                             "Needs iddm's eval extra (the Inception weights).", ge=0, metavar="N", resumable=True)
    eval_num: int = opt(1000, "Samples per evaluation (a conditional model: the same number of every class).", ge=2,
                        le=100_000, resumable=True)
    eval_steps: int = opt(20, "DDIM steps of the evaluation samples.", ge=1, le=100_000, resumable=True)
    eval_ref: str = opt("", "Reference images or statistics file (empty = the training images; their statistics "
                        "are cached).", metavar="DIR|FILE", resumable=True, kind="path")


@dataclass(kw_only=True)
class DeviceConfig:
    PANEL: ClassVar[str] = "Devices"

    device: str = opt("auto", "auto (CUDA when present, else CPU), cpu, cuda (the GPUs --devices picks) or cuda:N "
                              "(one GPU).", kind="device", metavar="auto|cpu|cuda|cuda:N",
                          resumable=True)
    devices: Any = opt("all", "How many processes: all = every visible GPU (1 on CPU); N > 1 starts N DDP workers "
                              "(gloo processes on CPU). 1 turns multi-GPU off.", kind="count", alias="--nproc",
                      metavar="all|N", le=4096, resumable=True)
    use_gpu: int = opt(-1, "IDDM's GPU index: the same as --device cuda:N (-1 = not set). Without a GPU, CPU is used.",
                       ge=-1, metavar="N", compat=True, resumable=True)
    distributed: bool = opt(False, "IDDM's DDP switch: the same as --devices all, or --devices WORLD_SIZE when "
                                   "--world-size is given.", short="-d", compat=True, resumable=True)
    main_gpu: int = opt(0, "IDDM's saving rank: accepted, but rank 0 always writes (it changes nothing else).", ge=0,
                       metavar="N", compat=True, resumable=True)
    world_size: int = opt(0, "IDDM's DDP process count: with --distributed, the same as --devices N (0 = all GPUs).",
                          ge=0, metavar="N", compat=True, resumable=True)
    dist_timeout: int = opt(30, "Minutes a process waits for the others at a collective before the run fails.",
                            ge=1, le=10_080, metavar="MIN", resumable=True)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "save": SaveConfig,
    "vis": VisConfig,
    "eval": EvalConfig,
    "device": DeviceConfig,
}


@dataclass(kw_only=True)
class Config:
    KIND: ClassVar[str] = "dm"

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    vis: VisConfig = field(default_factory=VisConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


FIELDS: dict[str, FieldSpec] = specs_of(SECTIONS)  # key name -> spec, in section order


# ----------------------------------------------------------------------------------------------- autoencoder
@dataclass(kw_only=True)
class AutoencoderDataConfig:
    PANEL: ClassVar[str] = "Data"

    train_dataset_path: str = opt("", "Training images: a folder of images, directly or in subfolders (IDDM's "
                                  "train/images/). 'builtin:fashion-mnist' is the embedded demo set. On resume: where "
                                  "the run's images moved.", metavar="DIR", kind="path", resumable=True)
    val_dataset_path: str = opt("", "Validation images, the same layout: PSNR and SSIM on them every epoch choose "
                                "ckpt_best.pt. 'builtin:fashion-mnist-val' is the embedded demo set's. On resume: "
                                "where they moved.", metavar="DIR", kind="path", resumable=True)
    image_size: Any = _image_size(512)
    augment: str = _augment("hflip")
    batch_size: int = _batch_size(8)
    num_workers: int = _num_workers()
    strict_data: bool = _strict_data()


@dataclass(kw_only=True)
class AutoencoderModelConfig:
    PANEL: ClassVar[str] = "Model"

    network: str = opt("vae", "Autoencoder network: a KL-regularised convolutional VAE.", choices=C.AUTOENCODERS)
    latent_channels: int = opt(4, "Channels of the latent (IDDM's flag, which IDDM ignored, is used).", short="-l",
                               ge=1, le=64)
    downsample: int = opt(8, "Down-sampling factor from image to latent: 8 or 4; image sides must be divisible by "
                          "it.", ge=2, le=32)
    base_channels: int = opt(64, "Width of the first stage (stages: x1, x2, x4, x4); 64 = about IDDM's vae.", ge=8,
                             le=1024)
    act: str = opt("silu", "Activation used throughout the network (IDDM stored it and used SiLU regardless).",
                   choices=C.ACTIVATIONS)


@dataclass(kw_only=True)
class AutoencoderOptimConfig(OptimConfig):
    lr: float = _lr(1e-4)
    lr_func: str = _lr_func("cosine")
    loss: str = opt("mse_kl", "Reconstruction MSE plus kl_weight x KL divergence per element (IDDM's MSEKLLoss).",
                    choices=C.AUTOENCODER_LOSSES)
    kl_weight: float = opt(1e-4, "Weight of the KL term (IDDM's 1e-4).", ge=0.0, le=1.0)
    ema_decay: float = opt(0.0, "EMA of the weights, which validation and the latent diffusion use (0 = none, as in "
                           "IDDM: the weights themselves). " + ONE_EMA, ge=0.0, le=1.0)


@dataclass(kw_only=True)
class AutoencoderTrainConfig(TrainConfig):
    epochs: int = opt(100, "Epochs to train; on resume, a new count sets where a run planned in epochs ends.",
                      short="-e", ge=1, le=1_000_000, resumable=True)
    run_name: str = opt("autoencoder", "Run directory name under result_path: one folder name.", short="-n",
                         metavar="NAME")
    seed: int = _seed(short="-s")  # IDDM's autoencoder trainer's -s (its diffusion trainer's -s is --sample)


@dataclass(kw_only=True)
class AutoencoderVisConfig:
    PANEL: ClassVar[str] = "Previews"

    num_vis: int = opt(8, "Validation images in each epoch's reconstruction grid, spread evenly over the set "
                       "(originals above reconstructions).", ge=1, le=1000, resumable=True)
    image_format: str = opt("png", "Format of the reconstruction grids.", choices=C.IMAGE_FORMATS, resumable=True)


AUTOENCODER_SECTIONS: dict[str, type] = {
    "data": AutoencoderDataConfig,
    "model": AutoencoderModelConfig,
    "optim": AutoencoderOptimConfig,
    "train": AutoencoderTrainConfig,
    "save": SaveConfig,
    "vis": AutoencoderVisConfig,
    "device": DeviceConfig,
}


@dataclass(kw_only=True)
class AutoencoderRunConfig:
    KIND: ClassVar[str] = "vae"

    data: AutoencoderDataConfig = field(default_factory=AutoencoderDataConfig)
    model: AutoencoderModelConfig = field(default_factory=AutoencoderModelConfig)
    optim: AutoencoderOptimConfig = field(default_factory=AutoencoderOptimConfig)
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    vis: AutoencoderVisConfig = field(default_factory=AutoencoderVisConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)

    def to_dict(self) -> dict[str, Any]:
        """With ``kind = "vae"`` first, so that config.toml and checkpoint metadata say which trainer they are for."""
        return {"kind": self.KIND, **dataclasses.asdict(self)}


AUTOENCODER_FIELDS: dict[str, FieldSpec] = specs_of(AUTOENCODER_SECTIONS)


@dataclass(frozen=True)
class Schema:
    """One trainer's settings: its sections, config class and fields (key name -> spec)."""

    kind: str  # "dm" | "vae": also a checkpoint's and a profile's ``kind``
    command: str  # the command that trains it
    sections: dict[str, type]
    config: type
    fields: dict[str, FieldSpec]


DM = Schema("dm", "iddm dm train", SECTIONS, Config, FIELDS)
VAE = Schema("vae", "iddm vae train", AUTOENCODER_SECTIONS, AutoencoderRunConfig, AUTOENCODER_FIELDS)
SCHEMAS: dict[str, Schema] = {"dm": DM, "vae": VAE}


def schema_of(config: Any) -> Schema:
    return VAE if isinstance(config, AutoencoderRunConfig) else DM
