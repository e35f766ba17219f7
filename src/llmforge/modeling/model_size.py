"""A model's size from its ``config.json`` alone, before anything is built, and the memory
the machine has for it.

A config is untrusted (a checkpoint's or a repository's): one that claims a 65,536-wide,
64-layer model would make torch ask the allocator for tens of gigabytes (or let the kernel's
OOM killer end the process) before any check on the weights ran. Training
(:mod:`llmforge.training.memory`) and inference (:mod:`llmforge.inference.model_source`) both
compare this size with :func:`memory_available` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.untrusted import load_json


@dataclass(frozen=True)
class ModelShape:
    """A model's size as its config states it, known before anything is built.

    Attributes:
        parameters: All parameters (for a Hugging Face config a slight underestimate: norms,
            biases and architecture extras are left out, so the pre-check never refuses a
            run that the exact check after building would accept).
        trainable: The trainable ones (0 for a LoRA base: the adapter is small).
        describe: Layers, width, heads and vocabulary, as ``ModelAdapter.describe`` has them.
    """

    parameters: int
    trainable: int
    describe: dict[str, Any]


def memory_available() -> int:
    """Bytes this process may still use: ``MemAvailable`` plus what the process already holds
    (``MemAvailable`` excludes the process's own pages), or 0 when unknown (no check)."""
    try:
        info = Path("/proc/meminfo").read_text()
        avail = next(
            int(line.split()[1]) * 1024
            for line in info.splitlines()
            if line.startswith("MemAvailable:")
        )
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * 4096
    except (OSError, StopIteration, ValueError, IndexError):
        return 0
    return avail + rss


def positive_ints(raw: dict[str, Any], *keys: str) -> list[int] | None:
    """The values of ``keys`` in ``raw`` when every one is a positive int, else None."""
    values = [raw.get(k) for k in keys]
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        return values  # type: ignore[return-value]
    return None


def folder_shape(folder: Path, *, frozen: bool = False) -> ModelShape | None:
    """The size of the model in ``folder`` from its ``config.json`` alone, or None when the
    config is missing or not of a known shape (the exact check after building still runs).

    Args:
        folder: A registry model's folder or a checkpoint.
        frozen: Its weights stay frozen (the base of a LoRA run).
    """
    try:
        if (folder / "config.json").stat().st_size > 1 << 20:
            return None
        raw = load_json((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    custom = positive_ints(raw, "vocab_size", "n_layers", "d_model", "block_size")
    if raw.get("architecture") == "custom-transformer" and custom:
        v, layers, d, t = custom
        params = v * d + t * d + layers * (12 * d * d + 4 * d) + 2 * d
        heads = raw.get("n_heads") if isinstance(raw.get("n_heads"), int) else 1
        describe = {"n_layers": layers, "d_model": d, "n_heads": heads, "vocab_size": v}
        return ModelShape(params, 0 if frozen else params, describe)
    hf = positive_ints(raw, "vocab_size", "hidden_size", "num_hidden_layers")
    if hf is None:
        return None
    v, h, layers = hf
    heads = raw.get("num_attention_heads") if positive_ints(raw, "num_attention_heads") else 1
    kv = raw.get("num_key_value_heads") if positive_ints(raw, "num_key_value_heads") else heads
    head_dim = raw.get("head_dim") if positive_ints(raw, "head_dim") else max(1, h // heads)
    inter = raw.get("intermediate_size") if positive_ints(raw, "intermediate_size") else 4 * h
    attention = 2 * h * heads * head_dim + 2 * h * kv * head_dim  # q, o; k, v
    mlp = 2 * h * inter  # at least up and down (gated MLPs have a third matrix)
    tied = raw.get("tie_word_embeddings", True) is not False
    params = v * h * (1 if tied else 2) + layers * (attention + mlp)
    describe = {"n_layers": layers, "hidden_size": h, "n_heads": heads, "vocab_size": v}
    return ModelShape(params, 0 if frozen else params, describe)
