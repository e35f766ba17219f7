"""How an architecture maps to GGUF: one declarative table per architecture (PUBLIC).

An adapter whose model llama.cpp runs declares a :class:`GGUFMapping` as its ``gguf_mapping``
class attribute: the llama.cpp architecture name, the ``config.json`` ``architectures`` it
accepts, how each Hugging Face module name becomes a GGUF tensor name, and which
``config.json`` values become the GGUF hyper-parameters. Nothing else in llmforge's GGUF
export is architecture specific, so a third-party adapter adds GGUF export by declaring one
table (``docs/adapters.md``). :meth:`GGUFMapping.validate` checks a table against gguf-py's
own list of the tensors llama.cpp loads for that architecture, so a typo fails when the
export starts, not when llama.cpp refuses the file.

This module imports neither torch nor ``gguf`` (an optional extra): only ``validate`` needs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmforge.errors import ExportError

# A row permutation of one tensor for llama.cpp: (tensor, config.json) -> same-shaped tensor.
Transform = Callable[[Any, dict[str, Any]], Any]


@dataclass(frozen=True)
class HParam:
    """One GGUF hyper-parameter taken from ``config.json``.

    Attributes:
        key: The GGUF key; ``{arch}`` is replaced by the architecture name.
        sources: Dotted ``config.json`` paths, tried in order (``rope_parameters.rope_theta``).
        kind: The GGUF value type: ``u32`` or ``f32``.
        required: Whether a missing value refuses the export (else the key is left out and
            llama.cpp uses its default).
    """

    key: str
    sources: tuple[str, ...]
    kind: str = "u32"
    required: bool = True


@dataclass(frozen=True)
class GGUFMapping:
    """How one architecture maps to GGUF.

    Attributes:
        name: ``general.architecture`` (a llama.cpp architecture: ``qwen2``, ``qwen3``).
        hf_architectures: ``config.json`` ``architectures`` entries this table accepts.
        tensors: Hugging Face module name -> GGUF tensor name, without the ``.weight`` /
            ``.bias`` suffix (which is carried over); ``{bid}`` stands for the block index.
        hparams: The hyper-parameters written as ``{arch}.*`` keys.
        pre_tokenizer: ``tokenizer.ggml.pre``: which pre-tokenizer llama.cpp applies.
        pre_tokenizer_regex: The Split regex the Hugging Face tokenizer must use for
            ``pre_tokenizer`` to split text the same way (None: not checked).
        skip: Regexes of Hugging Face tensor names that are not written (buffers).
        transforms: Hugging Face module name (as in ``tensors``) -> a function of (tensor,
            config.json) that reorders the tensor's output rows for llama.cpp (e.g. the
            rotary permutation of Llama's q/k). It must keep the shape; a LoRA export
            applies it to ``lora_b``.
    """

    name: str
    hf_architectures: tuple[str, ...]
    tensors: dict[str, str]
    hparams: tuple[HParam, ...]
    pre_tokenizer: str
    pre_tokenizer_regex: str | None = None
    skip: tuple[str, ...] = (r"\.rotary_emb\.inv_freq$",)
    transforms: dict[str, Transform] = field(default_factory=dict)
    _rules: list[tuple[re.Pattern[str], str, str]] = field(
        default_factory=list, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for hf, gg in self.tensors.items():
            pattern = re.escape(hf).replace(re.escape("{bid}"), r"(?P<bid>\d+)")
            self._rules.append((re.compile(rf"^{pattern}\.(?P<suffix>weight|bias)$"), gg, hf))
        unknown = set(self.transforms) - set(self.tensors)
        if unknown:
            raise ExportError(
                f"The {self.name} GGUF mapping transforms unknown modules {sorted(unknown)}.",
                "Name only modules of its tensors table in transforms.",
            )

    def transform_for(self, hf_name: str) -> Transform | None:
        """The row transform of a Hugging Face tensor, if its module has one."""
        for pattern, _, hf in self._rules:
            if pattern.match(hf_name):
                return self.transforms.get(hf)
        return None

    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF name of a Hugging Face tensor; None for a skipped buffer.

        Raises:
            ExportError: If the table has no rule for the tensor (llama.cpp would not load
                a file with it, nor run the model without it).
        """
        if any(re.search(s, hf_name) for s in self.skip):
            return None
        for pattern, template, _ in self._rules:
            if m := pattern.match(hf_name):
                name = template.format(bid=m.groupdict().get("bid", ""))
                return f"{name}.{m['suffix']}"
        raise ExportError(
            f"The {self.name} GGUF mapping has no rule for the tensor {hf_name!r}.",
            "The model has a layer llama.cpp's architecture does not know; it cannot be "
            "exported to GGUF as this architecture (export --format hf instead).",
        )

    def validate(self, n_blocks: int = 2) -> None:
        """Check every GGUF name in the table against what llama.cpp loads for ``name``.

        Raises:
            ExportError: If ``name`` is not a llama.cpp architecture gguf-py knows, or a
                table entry names a tensor that architecture does not have.
        """
        import gguf

        arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(self.name)
        if arch is None:
            raise ExportError(
                f"gguf-py does not know the architecture {self.name!r} of a GGUF mapping.",
                "Fix the adapter's gguf_mapping, or upgrade the gguf package.",
            )
        known = set()
        for tensor in gguf.MODEL_TENSORS[arch]:
            template = gguf.TENSOR_NAMES[tensor]
            known.update(template.format(bid=b) for b in range(n_blocks))
        for gg in self.tensors.values():
            for b in range(n_blocks):
                if gg.format(bid=b) not in known:
                    raise ExportError(
                        f"The {self.name} GGUF mapping names {gg!r}, a tensor llama.cpp's "
                        f"{self.name} architecture does not load.",
                        "Fix the adapter's gguf_mapping.",
                    )

    def hparam_values(self, config: dict[str, Any]) -> list[tuple[str, str, Any]]:
        """``(key, kind, value)`` for every hyper-parameter found in ``config``.

        Raises:
            ExportError: If a required value is missing.
        """
        out = []
        for hp in self.hparams:
            value = next((v for s in hp.sources if (v := _lookup(config, s)) is not None), None)
            if value is None:
                if hp.required:
                    raise ExportError(
                        f"config.json has no {' or '.join(hp.sources)}, which the "
                        f"{self.name} GGUF key {hp.key.format(arch=self.name)} needs.",
                        "The model's config.json is incomplete; export a complete model.",
                    )
                continue
            out.append((hp.key.format(arch=self.name), hp.kind, value))
        return out


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


# Qwen2's pre-tokenizer Split regex, as in its tokenizer.json; llama.cpp's "qwen2"
# pre-tokenizer (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_QWEN2) implements exactly this one.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The hyper-parameters every LLaMA-like decoder writes (TextModel.set_gguf_parameters in
# llama.cpp's convert_hf_to_gguf.py).
LLAMA_LIKE_HPARAMS = (
    HParam("{arch}.block_count", ("num_hidden_layers",)),
    HParam("{arch}.context_length", ("max_position_embeddings",)),
    HParam("{arch}.embedding_length", ("hidden_size",)),
    HParam("{arch}.feed_forward_length", ("intermediate_size",)),
    HParam("{arch}.attention.head_count", ("num_attention_heads",)),
    HParam("{arch}.attention.head_count_kv", ("num_key_value_heads", "num_attention_heads")),
    HParam("{arch}.attention.layer_norm_rms_epsilon", ("rms_norm_eps",), "f32"),
    # transformers 5 writes rope_parameters.rope_theta; hub configs have rope_theta.
    HParam("{arch}.rope.freq_base", ("rope_parameters.rope_theta", "rope_theta"), "f32", False),
)

LLAMA_LIKE_TENSORS = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "model.layers.{bid}.input_layernorm": "blk.{bid}.attn_norm",
    "model.layers.{bid}.self_attn.q_proj": "blk.{bid}.attn_q",
    "model.layers.{bid}.self_attn.k_proj": "blk.{bid}.attn_k",
    "model.layers.{bid}.self_attn.v_proj": "blk.{bid}.attn_v",
    "model.layers.{bid}.self_attn.o_proj": "blk.{bid}.attn_output",
    "model.layers.{bid}.post_attention_layernorm": "blk.{bid}.ffn_norm",
    "model.layers.{bid}.mlp.gate_proj": "blk.{bid}.ffn_gate",
    "model.layers.{bid}.mlp.up_proj": "blk.{bid}.ffn_up",
    "model.layers.{bid}.mlp.down_proj": "blk.{bid}.ffn_down",
}
