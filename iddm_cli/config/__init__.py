"""Configuration: dataclass schema, profile loading and validation (torch-free)."""

from iddm_cli.config.loader import Resolved, check_runnable, config_from_dict, image_hw, resolve, to_toml
from iddm_cli.config.schema import FIELDS, SECTIONS, Config

__all__ = ["FIELDS", "SECTIONS", "Config", "Resolved", "check_runnable", "config_from_dict", "image_hw",
           "resolve", "to_toml"]
