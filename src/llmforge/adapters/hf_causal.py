"""Adapters over ``transformers`` causal language models stored in Hugging Face format.

:class:`HFCausalLMAdapter` does the work for any architecture that ``transformers`` supports
natively (loaded with ``AutoModelForCausalLM``, never ``trust_remote_code``). A concrete
adapter only names its architecture (the config's ``model_type``); see ``adapters/qwen.py``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from llmforge.adapters.base import GenerationCache, ModelAdapter
from llmforge.errors import CheckpointError
from llmforge.modeling.tokenizers import HFTokenizer, Tokenizer
from llmforge.store.registry import ModelEntry

# Attention implementations that keep packed examples apart given only their position ids.
PACKING_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


class HFCausalLMAdapter(ModelAdapter):
    """A ``transformers`` causal LM with its native (or an override) tokenizer.

    Args:
        model: The ``PreTrainedModel``.
        tokenizer: Its tokenizer.
    """

    importable: ClassVar[bool] = True

    def __init__(self, model: Any, tokenizer: Tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def _load_model(cls, folder: Path) -> Any:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        # llmforge reports progress itself; transformers' own bars would garble the log.
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()

        try:
            config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise CheckpointError(
                f"{folder} holds no readable Hugging Face config.json ({e}).",
                "Re-import the model, or use another checkpoint.",
            ) from e
        if config.model_type != cls.architecture:
            raise CheckpointError(
                f"{folder} holds a {config.model_type!r} model, not {cls.architecture!r}.",
                "The registry entry or checkpoint metadata does not match its files; "
                "re-import the model or use another checkpoint.",
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(folder),
                config=config,
                dtype=torch.float32,
                trust_remote_code=False,
                use_safetensors=True,
                local_files_only=True,
            )
        except Exception as e:  # safetensors raises its own error type for corrupt files
            raise CheckpointError(
                f"Cannot load the {cls.architecture} weights in {folder}: {e}",
                "The files are incomplete or corrupt: run `llmforge models validate` and "
                "re-import, or use another checkpoint.",
            ) from e
        return model

    @classmethod
    def from_registry(
        cls, entry: ModelEntry, folder: Path, tokenizer: Tokenizer | None = None
    ) -> HFCausalLMAdapter:
        if tokenizer is None:
            # A registered fine-tune trained with an override keeps that tokenizer's files.
            if entry.details.get("tokenizer_kind") == "override" and entry.tokenizer:
                tokenizer = HFTokenizer(folder, "override", entry.tokenizer)
            else:
                tokenizer = HFTokenizer(folder, "native", entry.model_id or entry.model_name)
        tok = tokenizer
        return cls(cls._load_model(folder), tok)

    @classmethod
    def load(cls, folder: Path, tokenizer: Tokenizer) -> HFCausalLMAdapter:
        return cls(cls._load_model(folder), tokenizer)

    def supports_packing(self) -> bool:
        # transformers (>= 4.53) reads restarts in position_ids as sequence boundaries: a
        # block-diagonal causal mask for these implementations, varlen for flash attention.
        # Older transformers ignore the restarts: packed examples would attend across
        # each other silently, so those versions pad (pyproject allows >= 4.45).
        import transformers
        from packaging.version import Version

        if Version(transformers.__version__) < Version("4.53"):
            return False
        impl = getattr(self.model.config, "_attn_implementation", None)
        return impl in PACKING_ATTENTION

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        # Labels are already shifted (labels[:, t] is the target of position t), so the loss
        # is computed here rather than by transformers, which would shift them again.
        chunk = self.fused_loss_chunk  # set by the trainer (fused_loss)
        fused = labels is not None and chunk and self.model.training
        parts = self.fused_parts() if fused else None
        if parts is not None:
            from llmforge.modeling.fused_loss import fused_linear_cross_entropy

            # No logits at all: the LM head and the loss run fused, chunk by chunk.
            body, head = parts
            out = body(input_ids=input_ids, position_ids=position_ids, use_cache=False)
            hidden = out.last_hidden_state  # (B, T, C)
            return None, fused_linear_cross_entropy(hidden, head, labels, chunk)
        out = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        logits = out.logits  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=-100
            )
        return logits, loss

    def fused_parts(self) -> tuple[Any, torch.Tensor] | None:
        """(decoder body, LM-head weight) when the logits are a plain ``hidden @ W.T``, else None.

        Training's fused loss and ``llmforge eval``'s scoring both run the head on selected
        rows only through these parts; None means the logits must come from the model."""
        # A peft-wrapped model (LoRA) injects its layers in place: the wrapped transformers
        # model's own decoder body runs them, so unwrap to find body and head.
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        body = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
        head = inner.get_output_embeddings() if body is not None else None
        plain = (
            isinstance(head, torch.nn.Linear)  # a LoRA-wrapped head is not: plain path then
            and head.bias is None
            and getattr(inner.config, "final_logit_softcapping", None) is None
            and getattr(inner.config, "logit_scale", None) is None
        )
        return (body, head.weight) if plain else None

    def generation_step(
        self, input_ids: torch.Tensor, cache: GenerationCache | None
    ) -> tuple[torch.Tensor, GenerationCache]:
        # logits_to_keep=1: the prompt's prefill computes the LM head for the last position
        # only (151k-vocab logits for every prompt token would dominate time to first token).
        name = self._cache_argument()
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{name: cache})
        return out.logits[:, -1, :], getattr(out, name)  # (B, V), the DynamicCache

    def _cache_argument(self) -> str:
        """``cache`` where the model's ``forward`` takes it (transformers 5.x), else the older
        ``past_key_values``, which newer versions warn about on every call (FutureWarning)."""
        name = getattr(self, "_cache_name", None)
        if name is None:
            model = self.model  # a peft model passes keyword arguments through to its base
            inner = model.get_base_model() if hasattr(model, "get_base_model") else model
            params = inspect.signature(inner.forward).parameters
            name = "cache" if "cache" in params else "past_key_values"
            self._cache_name = name
        return name

    @property
    def max_context(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def stop_token_ids(self) -> list[int]:
        ids = set(super().stop_token_ids())
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else (eos or []))
        return sorted(ids)

    def add_stop_token_ids(self, ids: list[int]) -> None:
        super().add_stop_token_ids(ids)
        # save_pretrained writes generation_config.json: it then names these stop tokens too.
        gc = self.model.generation_config
        eos = gc.eos_token_id
        have = [eos] if isinstance(eos, int) else list(eos or [])
        gc.eos_token_id = have + [i for i in ids if i not in have]
        if gc.pad_token_id is None and self.tokenizer.eos_token_id is not None:
            gc.pad_token_id = self.tokenizer.eos_token_id

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder), safe_serialization=True)

    def save_config(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(str(folder))
        self.model.generation_config.save_pretrained(str(folder))

    @classmethod
    def from_saved_config(cls, folder: Path, tokenizer: Tokenizer) -> HFCausalLMAdapter:
        from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if (folder / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(str(folder))
        return cls(model, tokenizer)

    def resize_vocab(self, size: int) -> bool:
        rows = self.model.get_input_embeddings().weight.shape[0]
        if size <= rows:
            return False
        self.model.resize_token_embeddings(size)
        return True

    def describe(self) -> dict[str, Any]:
        c = self.model.config
        return {
            "architecture": self.architecture,
            "n_layers": c.num_hidden_layers,
            "hidden_size": c.hidden_size,
            "n_heads": c.num_attention_heads,
            "n_kv_heads": getattr(c, "num_key_value_heads", c.num_attention_heads),
            "vocab_size": c.vocab_size,
            "max_context": self.max_context,
            "parameters": self.num_parameters(),
        }

    def no_weight_decay(self, name: str, param: torch.nn.Parameter) -> bool:
        return param.ndim < 2 or "norm" in name or "embed" in name or name.endswith(".bias")
