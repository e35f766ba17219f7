"""The Qwen family, as ``transformers`` supports it natively.

``qwen2`` covers Qwen2 and Qwen2.5; ``qwen3`` is Qwen3. Both load through
``AutoModelForCausalLM`` with their native tokenizer (see ``hf_causal.py``).
"""

from __future__ import annotations

from llmforge.adapters.hf_causal import HFCausalLMAdapter


class Qwen2Adapter(HFCausalLMAdapter):
    """Qwen2 and Qwen2.5 models."""

    architecture = "qwen2"


class Qwen3Adapter(HFCausalLMAdapter):
    """Qwen3 models."""

    architecture = "qwen3"
