"""The Qwen family, as ``transformers`` supports it natively.

``qwen2`` covers Qwen2 and Qwen2.5; ``qwen3`` is Qwen3. Both load through
``AutoModelForCausalLM`` with their native tokenizer (see ``hf_causal.py``).
"""

from __future__ import annotations

from llmforge.adapters.gguf_mapping import (
    LLAMA_LIKE_HPARAMS,
    LLAMA_LIKE_TENSORS,
    QWEN2_SPLIT_REGEX,
    GGUFMapping,
    HParam,
)
from llmforge.adapters.hf_causal import HFCausalLMAdapter

# llama.cpp's qwen2: the LLaMA-like table (q/k/v biases map through the same rules) with
# NEOX RoPE, which is what transformers computes: no row permutation is needed.
QWEN2_GGUF = GGUFMapping(
    name="qwen2",
    hf_architectures=("Qwen2ForCausalLM",),
    tensors=dict(LLAMA_LIKE_TENSORS),
    hparams=LLAMA_LIKE_HPARAMS,
    pre_tokenizer="qwen2",
    pre_tokenizer_regex=QWEN2_SPLIT_REGEX,
)
QWEN3_GGUF = GGUFMapping(
    name="qwen3",
    hf_architectures=("Qwen3ForCausalLM",),
    tensors={
        **LLAMA_LIKE_TENSORS,
        "model.layers.{bid}.self_attn.q_norm": "blk.{bid}.attn_q_norm",
        "model.layers.{bid}.self_attn.k_norm": "blk.{bid}.attn_k_norm",
    },
    hparams=(
        *LLAMA_LIKE_HPARAMS,
        # Qwen3's head_dim is not hidden_size / heads in general: llama.cpp must be told.
        HParam("{arch}.attention.key_length", ("head_dim",), required=False),
        HParam("{arch}.attention.value_length", ("head_dim",), required=False),
    ),
    pre_tokenizer="qwen2",
    pre_tokenizer_regex=QWEN2_SPLIT_REGEX,
)


class Qwen2Adapter(HFCausalLMAdapter):
    """Qwen2 and Qwen2.5 models."""

    architecture = "qwen2"
    gguf_mapping = QWEN2_GGUF


class Qwen3Adapter(HFCausalLMAdapter):
    """Qwen3 models."""

    architecture = "qwen3"
    gguf_mapping = QWEN3_GGUF
