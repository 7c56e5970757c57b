"""iddm: train and sample diffusion models on your own image folders.

The package root stays free of torch so that ``iddm --help`` and shell completion are instant.
The Python API lives in :mod:`iddm_cli.api` (``from iddm_cli.api import DMTrainer``).
"""

__version__ = "0.1.0"
