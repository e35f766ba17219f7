"""The architectures llmforge can import and train, in one place.

They come from the adapter registry (``llmforge.adapters``): every adapter that loads Hugging
Face folders, built in (the Qwen family: ``qwen2`` covers Qwen2 and Qwen2.5, plus ``qwen3``) or
added by a third-party package through the ``llmforge.adapters`` entry-point group. Models
are never loaded with ``trust_remote_code``.
"""

from __future__ import annotations


def supported_architectures() -> list[str]:
    """The config.json ``model_type`` values that ``llmforge models import`` accepts, sorted."""
    from llmforge.adapters import importable_architectures

    return sorted(importable_architectures())


def is_supported(model_type: str | None) -> bool:
    """Whether a config.json ``model_type`` can be imported."""
    return model_type in supported_architectures()
