"""The architectures llmforge can import and train, in one place.

For now this is a fixed set; the adapter registry (``llmforge.adapters``) will later supply it
from the adapters it finds (including third-party ones via entry points), so every caller asks
:func:`supported_architectures` instead of hard-coding names.
"""

from __future__ import annotations

# config.json ``model_type`` values of the Qwen family that transformers supports natively
# (``qwen2`` covers Qwen2 and Qwen2.5). Never loaded with ``trust_remote_code``.
_IMPORTABLE = frozenset({"qwen2", "qwen3"})


def supported_architectures() -> list[str]:
    """The config.json ``model_type`` values that ``llmforge models import`` accepts, sorted."""
    return sorted(_IMPORTABLE)


def is_supported(model_type: str | None) -> bool:
    """Whether a config.json ``model_type`` can be imported."""
    return model_type in _IMPORTABLE
