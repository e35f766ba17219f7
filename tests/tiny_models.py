"""Tiny random models laid out like hub repositories, built with the real libraries.

:func:`build_tiny_qwen` writes a random 2-layer Qwen2 (hidden size 64) with a byte-level BPE
tokenizer trained on the fly (Qwen's pre-tokenizer and special tokens) into a folder that
looks like a Hugging Face repository: config.json, model.safetensors, tokenizer files,
generation_config.json and a README.md with license metadata.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's pre-tokenizer split pattern (from its tokenizer.json).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Language models predict the next token from the tokens before it.",
    "Fine-tuning adapts a pretrained model to a new task with a little data.",
    "Qwen is a family of open language models; llmforge trains them locally.",
    "def add(a, b):\n    return a + b\n",
    "1 2 3 4 5 6 7 8 9 10 100 1000",
] * 20
README = """---
license: apache-2.0
library_name: transformers
tags:
- text-generation
---

# Tiny model

A random 2-layer model for tests.
"""
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(out_dir: Path, vocab_size: int = 384) -> int:
    """Train a byte-level BPE tokenizer with Qwen's pre-tokenizer and save it to ``out_dir``.

    Returns:
        The tokenizer's vocabulary size (including special tokens).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return len(fast)


def _qwen2_config(**common: object):
    from transformers import Qwen2Config

    return Qwen2Config(**common)


def _qwen3_config(**common: object):
    from transformers import Qwen3Config

    # Qwen3 normalises queries and keys per head (q_norm / k_norm, RMSNorm over head_dim).
    return Qwen3Config(head_dim=16, **common)


# architecture (config.json model_type) -> its real transformers config, at a tiny size
TINY_CONFIGS = {
    "qwen2": _qwen2_config,
    "qwen3": _qwen3_config,
}


def build_tiny_model(
    out_dir: Path,
    architecture: str = "qwen2",
    *,
    seed: int = 0,
    readme: str | None = README,
    max_position_embeddings: int = 512,
    initializer_range: float = 0.02,
    tied: bool = True,
    vocab_multiple: int = 1,
) -> Path:
    """Write a tiny random model of ``architecture`` (a key of TINY_CONFIGS) into ``out_dir``.

    Args:
        out_dir: The folder to create (parents included).
        architecture: Which built-in architecture.
        seed: Seed of the random weights.
        readme: The model card text; None writes no README.md.
        max_position_embeddings: The model's context length.
        initializer_range: Std of the random weights. transformers' default (0.02) makes a
            model whose every next token is nearly equally likely, so its greedy output hardly
            depends on the context; ~0.3 gives one whose output does (for generation tests).
        tied: Tie the output layer to the token embedding (else a separate ``lm_head``).
        vocab_multiple: Round the embedding's rows up to a multiple of this (Qwen's own have
            rows no token uses: 151936 for 151665 tokens).

    Returns:
        ``out_dir``.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = -(-build_tokenizer(out_dir) // vocab_multiple) * vocab_multiple
    config = TINY_CONFIGS[architecture](
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    assert model.config.model_type == architecture
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(eos_token_id=0, pad_token_id=0, max_new_tokens=32).save_pretrained(out_dir)
    if readme is not None:
        (out_dir / "README.md").write_text(readme, encoding="utf-8")
    return out_dir


def build_tiny_qwen(out_dir: Path, *, seed: int = 0, readme: str | None = README) -> Path:
    """Write a tiny random Qwen2 repository into ``out_dir`` and return it."""
    return build_tiny_model(out_dir, "qwen2", seed=seed, readme=readme)


def num_parameters(repo: Path) -> int:
    """The parameter count transformers reports for a saved tiny model."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(repo).num_parameters()
