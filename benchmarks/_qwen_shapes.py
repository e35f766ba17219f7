"""Qwen2 model shapes the benchmarks share, built with random weights (no download)."""

from __future__ import annotations

QWEN_SHAPES = {
    # hidden, layers, heads, kv heads, intermediate, vocab
    "tiny": (64, 2, 4, 2, 128, 1024),
    "small": (256, 4, 4, 2, 1024, 151936),
    "0.5b": (896, 24, 14, 2, 4864, 151936),  # Qwen2-0.5B, tied embeddings
}


def qwen_model(shape: str, seed: int = 0):
    """A ``Qwen2ForCausalLM`` of ``shape`` with weights drawn from ``seed``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    h, n, heads, kv, inter, vocab = QWEN_SHAPES[shape]
    cfg = Qwen2Config(
        hidden_size=h,
        num_hidden_layers=n,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        vocab_size=vocab,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg)
