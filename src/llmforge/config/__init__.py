"""``TrainingConfig``: every key of a training run, loaded from YAML with ``--set`` overrides.

One concern in three files (split for size): :mod:`~llmforge.config.training_config` holds the
keys and loading, :mod:`~llmforge.config.defaults` the rules beyond each key's type (defaults
by what is trained, the warmup cap, run names), :mod:`~llmforge.config.reading` the YAML file
and ``--set`` values (through the one bounded YAML loader) and the message for a bad key.
Everyone imports from ``llmforge.config``.
"""

from llmforge.config.defaults import DEFAULT_WARMUP, KIND_DEFAULTS, KIND_PHRASES
from llmforge.config.reading import parse_overrides, read_yaml
from llmforge.config.training_config import (
    ARCHITECTURE_KEYS,
    RESUMABLE_KEYS,
    LoraSettings,
    TrainingConfig,
    load_config,
)

__all__ = [
    "ARCHITECTURE_KEYS",
    "DEFAULT_WARMUP",
    "KIND_DEFAULTS",
    "KIND_PHRASES",
    "RESUMABLE_KEYS",
    "LoraSettings",
    "TrainingConfig",
    "load_config",
    "parse_overrides",
    "read_yaml",
]
