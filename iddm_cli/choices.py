"""The names users may choose between, kept free of torch so ``--help`` and completion stay instant.

Each engine registry (networks, schedules, losses, ...) is keyed by exactly these names; a test holds them equal.
"""

NETWORKS = ("unet", "cspdarkunet")
ACTIVATIONS = ("gelu", "silu", "relu", "relu6", "lrelu")
OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("mse", "l1", "huber", "smooth_l1")
LR_FUNCS = ("linear", "cosine", "warmup_cosine")
NOISE_SCHEDULES = ("linear", "cosine", "sqrt_linear", "sqrt")
SAMPLERS = ("ddpm", "ddim", "plms", "dpm2", "dpmpp", "dpmpp2m", "dpmpp3m")
IMAGE_FORMATS = ("png", "jpg", "jpeg", "webp", "tif")
AUGMENTS = ("iddm", "resize", "hflip")
AUTOENCODERS = ("vae",)
CONDITIONAL = ("auto", "true", "false")
