"""The names users may choose between, kept free of torch so ``--help`` and completion stay instant.

Networks and samplers come from their registries' metadata (:mod:`iddm_cli.nets`, :mod:`iddm_cli.diffusion.registry`),
the datasets ``iddm dataset get`` writes from :mod:`iddm_cli.data.get`; the other engine registries (schedules,
losses, optimizers, ...) are keyed by exactly these names, and a test holds them equal.
"""

from iddm_cli.data.get import SOURCES as _SOURCES
from iddm_cli.data.get import SPLITS as _SPLITS
from iddm_cli.diffusion.registry import SAMPLERS as _SAMPLERS
from iddm_cli.nets import AUTOENCODER_NETWORKS as _AUTOENCODERS
from iddm_cli.nets import NETWORKS as _NETWORKS

NETWORKS = tuple(_NETWORKS)
SAMPLERS = tuple(_SAMPLERS)
ACTIVATIONS = ("gelu", "silu", "relu", "relu6", "lrelu")
OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("mse", "l1", "huber", "smooth_l1")
LR_FUNCS = ("linear", "cosine", "warmup_cosine")
NOISE_SCHEDULES = ("linear", "cosine", "sqrt_linear", "sqrt")
PREDICTIONS = ("epsilon", "v", "x0")
IMAGE_FORMATS = ("png", "jpg", "jpeg", "webp", "tif")
AUGMENTS = ("iddm", "resize", "hflip")
AUTOENCODERS = tuple(_AUTOENCODERS)
AUTOENCODER_LOSSES = ("mse_kl",)
DATASET_KINDS = ("dm", "vae")
GETTABLE_DATASETS = tuple(_SOURCES)  # iddm dataset get
GET_SPLITS = tuple(_SPLITS)
GENERATE_MODES = ("class", "text")
