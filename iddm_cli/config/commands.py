"""The settings of every command, as the command line offers them: one dataclass per command (beside the training
sections of :mod:`iddm_cli.config.schema`) and :data:`COMMANDS`, which lists each command's options in the order
its ``--help`` shows them. The CLI builds every option from these specs; it writes none by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from iddm_cli import choices as C
from iddm_cli.config.fields import COMPAT_PANEL, FieldSpec, opt, pick, specs_of
from iddm_cli.config.schema import AUTOENCODER_FIELDS, FIELDS
from iddm_cli.diffusion.registry import default_steps_text


@dataclass(kw_only=True)
class RunOptions:
    """How a command runs, as opposed to what it computes; never stored in a run."""

    PANEL: ClassVar[str] = "Run"

    profile: str = opt(None, "A shipped profile (dm train: demo, cpu-32, latent-demo, cifar10, landscape, "
                       "ci-smoke; vae train: vae-demo, neu-det), one in ~/.config/iddm/profiles/ "
                       "($XDG_CONFIG_HOME/iddm/profiles/ when set), or a .toml file.",
                       kind="str", short="-p", metavar="NAME|FILE",
                       complete="profiles")
    sets: list = opt([], "Override one key (value parsed as TOML), e.g. --set optim.lr=1e-4. Repeatable; flags win.",
                     kind="strlist", flag="--set", metavar="KEY=VALUE", shown="")
    print_config: bool = opt(False, "Print the resolved config as TOML on stdout and exit.", off="")
    explain: bool = opt(False, "Show where each setting came from, then continue.", off="")
    dry_run: bool = opt(False, "Check everything and print the plan, then exit; nothing is written.", off="")
    debug: bool = opt(False, "Show tracebacks (also IDDM_DEBUG=1).", off="")
    mode: str = opt(None, "IDDM's conditioning mode: class, what every run here does (text was a stub in IDDM and is "
                    "not offered).", kind="str", choices=C.GENERATE_MODES, short="-m", shown="class")
    force: bool = opt(False, "With --start-epoch: continue even though newer states exist; they are moved to "
                      "RUN/superseded-<time>/, never deleted.", off="")


@dataclass(kw_only=True)
class ResumeTarget:
    PANEL: ClassVar[str] = "Run"

    run_dir: str = opt(None, "The run directory to continue.", kind="str", argument=True, required=True,
                       metavar="RUN_DIR")


@dataclass(kw_only=True)
class SampleConfig:
    """``iddm sample``: None means "from the checkpoint" (sampler, guidance) or "the sampler's own" (steps, eta).
    ``seed``, ``batch_size``, ``cfg_scale``, ``device`` and ``image_format`` are this command's own settings, not the
    training ones of the same names: a seed per image, a network batch, guidance at sampling time, one device."""

    PANEL: ClassVar[str] = "Sampling"

    checkpoint: str = opt(None, "Checkpoint file, or a run directory (its ckpt_last.pt).", kind="str", argument=True,
                          metavar="CKPT")
    sampler: str = opt(None, "Sampler.", choices=C.SAMPLERS, kind="str", short="-s", alias="--sample",
                       shown="the checkpoint's")
    steps: int = opt(None, "Sampling steps.", kind="int", ge=1, shown=f"the sampler's: {default_steps_text()}")
    eta: float = opt(None, "DDIM noise: 0 deterministic, 1 DDPM-like.", kind="float", ge=0.0, le=1.0, shown="0")
    cfg_scale: float = opt(None, "Classifier-free guidance scale; 1 = none. Conditional models only.", kind="float",
                           ge=0.0, le=100.0, shown="the checkpoint's")
    num: int = opt(8, "Images per selected class (conditional) or in total (unconditional).", short="-n",
                   alias="--num-images", ge=1, le=100_000)
    class_name: list = opt([], "A class to sample, by name or index (repeatable); IDDM's -1: one image of every class.",
                           kind="strlist", metavar="NAME", shown="every class")
    class_id: list = opt([], "A class to sample, by index (repeatable).", kind="intlist", metavar="N", ge=0,
                         shown="every class")
    seed: int = opt(0, "The same seed gives the same images, whatever --batch-size.", ge=0, le=2**63 - 1)
    batch_size: int = opt(16, "Images per network batch.", short="-b", ge=1, le=65_536)
    ema: bool = opt(True, "Use the EMA weights, or the raw ones.", alias="--use-ema")
    out: str = opt(None, "Output folder, used as named: it must be new or empty.", kind="str", short="-o",
                   alias="--result-path", metavar="DIR", panel="Output",
                   shown="RUN/samples/<sampler>-<steps>steps-seed<seed>")
    grid: bool = opt(True, "Also write grid.<format>.", panel="Output")
    image_format: str = opt("png", "Image file format.", choices=C.IMAGE_FORMATS, panel="Output")
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N.", kind="device",
                      metavar="auto|cpu|cuda|cuda:N", panel="Devices")
    autoencoder_ckpt: str = opt(None, "A latent checkpoint's autoencoder, when its file moved (a file, or the "
                                "run directory of `iddm vae train`).", kind="str", metavar="FILE", panel="Latent",
                                shown="the file the checkpoint recorded")
    verify: bool = opt(True, "Check that the autoencoder is the one the model was trained with (SHA-256); "
                       "--no-verify decodes with another one, with a warning.", panel="Latent")
    weight_path: str = opt(None, "IDDM's name for CKPT.", kind="str", metavar="FILE", compat=True)
    use_gpu: int = opt(None, "IDDM's GPU index: the same as --device cuda:N.", kind="int", ge=0, metavar="N",
                       compat=True)
    generate_name: str = opt(None, "IDDM's file-name prefix: NAME_<class>_<index>.<format> and NAME_grid.<format>.",
                             kind="str", metavar="NAME", compat=True)
    # IDDM's generator took these from the checkpoint when it held them; here the checkpoint always does, and a
    # value that disagrees with it is refused with the checkpoint's value
    image_size: Any = opt(None, "IDDM's image size: must match the checkpoint's (images come at its size).",
                          kind="size", short="-i", metavar="SIZE", compat=True)
    network: str = opt(None, "IDDM's network: must match the checkpoint's.", kind="str", choices=C.NETWORKS,
                       compat=True)
    act: str = opt(None, "IDDM's activation: must match the checkpoint's.", kind="str", choices=C.ACTIVATIONS,
                   compat=True)
    num_classes: int = opt(None, "IDDM's class count: must match the checkpoint's.", kind="int", ge=0, compat=True)
    conditional: bool = opt(None, "IDDM's conditional switch: must match the checkpoint's.", kind="bool",
                            short="-c", compat=True)
    mode: str = opt(None, "IDDM's conditioning mode: class (text was a stub in IDDM and is not offered).",
                    kind="str", choices=C.GENERATE_MODES, short="-m", compat=True)
    latent: bool = opt(None, "IDDM's latent switch: accepted for a latent checkpoint (it says so itself).",
                       kind="bool", off="", short="-l", compat=True)


@dataclass(kw_only=True)
class FidConfig(SampleConfig):
    """``iddm eval fid``: the sampling settings of ``iddm sample`` (for --ckpt) and what to compare against."""

    PANEL: ClassVar[str] = "Evaluation"

    ref: str = opt(None, "The reference: an image folder (class subfolders too), or a statistics file (.pt) that "
                   "an earlier evaluation cached.", kind="str", required=True, metavar="DIR|FILE", panel="Inputs")
    images: str = opt(None, "A folder of images to score (generated elsewhere).", kind="str", metavar="DIR",
                      panel="Inputs")
    num: int = opt(1000, "Samples to draw from --ckpt (a conditional model: the same number of every class).",
                   short="-n", ge=2, le=1_000_000)
    per_class: bool = opt(False, "Also FID per class (a conditional --ckpt against a class-folder reference).",
                          off="")
    json: bool = opt(False, "Write the scores as JSON on stdout.", off="")
    kid_subsets: int = opt(100, "KID: random subsets averaged.", ge=1, le=10_000)
    kid_subset_size: int = opt(1000, "KID: features per subset (capped at the smaller set).", ge=2, le=100_000)


@dataclass(kw_only=True)
class ReconstructionEvalConfig:
    """``iddm eval vae``: an autoencoder checkpoint's reconstructions of a folder of images."""

    PANEL: ClassVar[str] = "Evaluation"

    checkpoint: str = opt(None, "The autoencoder checkpoint, or its `iddm vae train` run directory (ckpt_best.pt).",
                          kind="str", argument=True, required=True, metavar="CKPT")
    images: str = opt(None, "The images to reconstruct (a folder, subfolders included), resized to the "
                      "autoencoder's training size.", kind="str", required=True, metavar="DIR", panel="Inputs")
    fid: bool = opt(True, "Also the reconstruction FID (reconstructions against the originals; needs the eval "
                    "extra).")
    batch_size: int = opt(64, "Images per network batch.", short="-b", ge=1, le=65_536)
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N.", kind="device",
                      metavar="auto|cpu|cuda|cuda:N", panel="Devices")
    json: bool = opt(False, "Write the scores as JSON on stdout.", off="")


@dataclass(kw_only=True)
class ConvertConfig:
    """``iddm convert``: an IDDM 1.x ``ckpt_last.pt`` as an iddm checkpoint. IDDM does not store its noise schedule
    or T, so they are given here (IDDM 1.x trains with linear and 1000 unless its code was edited)."""

    PANEL: ClassVar[str] = "Convert"

    checkpoint: str = opt(None, "The IDDM checkpoint (ckpt_last.pt of an IDDM 1.x run), or that run's folder.",
                          kind="str", argument=True, required=True, metavar="IDDM_CKPT")
    out: str = opt(None, "The iddm checkpoint to write (a new file).", kind="str", argument=True, required=True,
                   metavar="OUT")
    noise_schedule: str = opt("linear", "The beta schedule the IDDM model was trained with (IDDM's sqrt is not "
                              "iddm's and is refused; linear and sqrt_linear convert at T = 1000 only).",
                              choices=C.NOISE_SCHEDULES)
    noise_steps: int = opt(1000, "The diffusion steps T the IDDM model was trained with.", ge=2, le=100_000)


@dataclass(kw_only=True)
class DatasetCheckConfig:
    PANEL: ClassVar[str] = "Check"

    path: str = opt(None, "The dataset folder (or builtin:fashion-mnist).", kind="str", argument=True,
                    required=True, metavar="PATH")
    image_size: Any = opt(None, "Training size (64 or H,W): smaller images are reported.", kind="size", short="-i",
                          metavar="SIZE", shown="not checked")
    kind: str = opt("dm", "dm: class subfolders or a flat folder; vae: train/ and val/.", choices=C.DATASET_KINDS)
    deep: bool = opt(False, "--deep decodes every image; --quick reads headers only.", off="--quick")
    json: bool = opt(False, "Write the report as JSON on stdout (schema in README).", off="")


@dataclass(kw_only=True)
class DatasetGetConfig:
    PANEL: ClassVar[str] = "Get"

    name: str = opt(None, "The dataset.", choices=C.GETTABLE_DATASETS, kind="str", argument=True, required=True,
                    metavar="NAME")
    dir: str = opt(None, "The folder to write DIR/<class>/<index>.png into: new or empty.", kind="str",
                   argument=True, required=True, metavar="DIR")
    split: str = opt("train", "Which official split; all writes both (train-<index>.png, test-<index>.png).",
                     choices=C.GET_SPLITS)
    source: str = opt(None, "The official file(s) instead of a download: cifar-10-python.tar.gz, "
                      "cifar-100-python.tar.gz, or the folder holding MNIST's train-images-idx3-ubyte(.gz) and "
                      "its three siblings.", kind="str", flag="--from", metavar="FILE|DIR", shown="download")
    limit: int = opt(None, "At most N images per class (the first ones).", kind="int", ge=1, metavar="N",
                     shown="all")


# IDDM's --mode (train.py and generate.py): only class conditioning exists
MODE_TEXT_REFUSED = "--mode text: text conditioning was a stub in IDDM and is not offered; use --mode class or drop it"

RUN = specs_of({"run": RunOptions, "resume": ResumeTarget})
SAMPLE = specs_of({"sample": SampleConfig})
FID = specs_of({"fid": FidConfig})
RECONSTRUCTION = specs_of({"vae": ReconstructionEvalConfig})
CONVERT = specs_of({"convert": ConvertConfig})
DATASET_CHECK = specs_of({"check": DatasetCheckConfig})
DATASET_GET = specs_of({"get": DatasetGetConfig})

# the options of eval fid that shape the samples drawn from --ckpt (and so mean nothing for --images)
FID_SAMPLING = ("num", "sampler", "steps", "eta", "cfg_scale", "seed", "batch_size", "ema", "autoencoder_ckpt",
                "verify")

COMMANDS: dict[str, dict[str, FieldSpec]] = {
    "dm train": {**pick(RUN, "profile", "sets", "dry_run", "print_config", "explain", "debug"),
                 "force": replace(RUN["force"], panel=COMPAT_PANEL),  # beside --resume and --start-epoch
                 **{name: spec for name, spec in FIELDS.items() if not spec.compat},
                 **{name: spec for name, spec in FIELDS.items() if spec.compat},  # IDDM's spellings last
                 "mode": replace(RUN["mode"], panel=COMPAT_PANEL)},
    "vae train": {**pick(RUN, "profile", "sets", "dry_run", "print_config", "explain", "debug"),
                  "force": replace(RUN["force"], panel=COMPAT_PANEL),
                  **{name: spec for name, spec in AUTOENCODER_FIELDS.items() if not spec.compat},
                  **{name: spec for name, spec in AUTOENCODER_FIELDS.items() if spec.compat}},
    "resume": {**pick(RUN, "run_dir", "dry_run", "debug"), "start_epoch": replace(FIELDS["start_epoch"], panel="Run"),
               "force": RUN["force"],
               # a setting left out keeps the run's value, whatever the schema's default
               **{name: replace(spec, shown="the run's") for name, spec in FIELDS.items()
                  if spec.resumable and not spec.compat},
               **{name: replace(spec, shown="the run's") for name, spec in FIELDS.items()
                  if spec.resumable and spec.compat},
               # the rest are accepted but not shown, so that a changed value gets the reason it cannot change
               **{name: replace(spec, hidden=True) for name, spec in FIELDS.items()
                  if not spec.resumable and name != "start_epoch"},
               **{name: replace(spec, hidden=True, short=None) for name, spec in AUTOENCODER_FIELDS.items()
                  if name not in FIELDS}},  # an autoencoder's own (none may change)
    "sample": {**SAMPLE, **pick(RUN, "debug")},
    "eval fid": {**pick(FID, "ref", "images"),
                 "checkpoint": replace(FID["checkpoint"], argument=False, flag="--ckpt", panel="Inputs",
                                       help="A diffusion checkpoint (or its run directory) to draw --num samples from, "
                                            "with the sampler options below."),
                 **pick(FID, "num", "per_class", "kid_subsets", "kid_subset_size", "json"),
                 **pick(FID, *(name for name in FID_SAMPLING if name != "num"), "device"),
                 **pick(RUN, "debug")},
    "eval vae": {**RECONSTRUCTION, **pick(RUN, "debug")},
    "convert": {**CONVERT, **pick(RUN, "debug")},
    "dataset check": {**DATASET_CHECK, **pick(RUN, "debug")},
    "dataset get": {**DATASET_GET, **pick(RUN, "debug")},
}
"""Each command's options, in help order (``iddm resume`` shows only the settings that may change)."""
