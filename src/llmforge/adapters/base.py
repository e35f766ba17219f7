"""The adapter protocol: the one way the trainer, generator and checkpoints reach a model.

Every architecture (the custom Transformer, the Qwen family, a third party's) is one
subclass of :class:`ModelAdapter`. Nothing outside ``llmforge.adapters`` imports
``transformers`` or the custom model directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from llmforge.adapters.gguf_mapping import GGUFMapping
    from llmforge.config import TrainingConfig
    from llmforge.modeling.tokenizers import Tokenizer
    from llmforge.store.registry import ModelEntry

# What an adapter's generation cache is: opaque to everyone but the adapter.
GenerationCache = Any


class ModelAdapter(ABC):
    """A model of one architecture together with its tokenizer.

    Attributes:
        architecture: The registry's architecture string (``custom-transformer``, ``qwen2``).
        model: The underlying ``torch.nn.Module``.
        tokenizer: The tokenizer the model is trained and decoded with.
        extra_stop_ids: Token ids besides the tokenizer's EOS that end generation (a chat
            model's end-of-turn token); set through :meth:`add_stop_token_ids`.
        fused_loss_chunk: Positions per chunk when :meth:`forward` computes the LM head and
            the loss together without the full (B, T, V) logits (``fused_loss`` in the
            config; the trainer sets it); 0 = plain logits and cross-entropy. Adapters that
            do not support the fused loss ignore it.

    An adapter whose :meth:`forward` takes ``position_ids`` that restart at every packed
    example, and keeps attention within each example, returns True from
    :meth:`supports_packing`; chat and prompt/completion data are then packed
    (``packing`` in the config, :mod:`llmforge.data.packing`). Others are given padded
    batches and never ``position_ids``.
    """

    architecture: ClassVar[str]
    importable: ClassVar[bool] = False  # True: from_registry loads Hugging Face folders
    # How the Hugging Face folder that save() writes maps to GGUF (adapters/gguf_mapping.py);
    # None: `ckpt export --format gguf` refuses the architecture.
    gguf_mapping: ClassVar[GGUFMapping | None] = None
    model: nn.Module
    tokenizer: Tokenizer
    extra_stop_ids: list[int] = []  # noqa: RUF012 -- never mutated: add_stop_token_ids rebinds
    fused_loss_chunk: int = 0

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: TrainingConfig, tokenizer: Tokenizer) -> ModelAdapter:
        """A freshly initialised model sized by the training config."""
        raise NotImplementedError(f"{cls.architecture} models cannot be created from scratch")

    @classmethod
    def from_registry(
        cls, entry: ModelEntry, folder: Path, tokenizer: Tokenizer | None = None
    ) -> ModelAdapter:
        """The registered model in ``folder``, with its native tokenizer unless one is given."""
        raise NotImplementedError(f"{cls.architecture} models cannot be loaded from the registry")

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, tokenizer: Tokenizer) -> ModelAdapter:
        """The model that :meth:`save` wrote into ``folder``."""

    def supports_packing(self) -> bool:
        """Whether :meth:`forward` takes ``position_ids`` of packed rows (see the class doc)."""
        return False

    # -- use ---------------------------------------------------------------------------
    @abstractmethod
    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) for ``input_ids`` (B, T), and the mean next-token loss.

        ``labels`` are already shifted (``labels[:, t]`` is the target of position ``t``);
        ``-100`` marks positions without loss. An adapter that :meth:`supports_packing` also
        takes ``position_ids`` (B, T) of packed rows (keyword).
        """

    @abstractmethod
    def generation_step(
        self, input_ids: torch.Tensor, cache: GenerationCache | None
    ) -> tuple[torch.Tensor, GenerationCache]:
        """Feed new tokens (B, T_new) after ``cache``; return last-position logits (B, V)."""

    def stop_token_ids(self) -> list[int]:
        """Ids that end generation (the tokenizer's EOS, and the model's own stop tokens)."""
        eos = self.tokenizer.eos_token_id
        extra = list(self.extra_stop_ids)
        return sorted(set(([] if eos is None else [eos]) + extra))

    def add_stop_token_ids(self, ids: list[int]) -> None:
        """Make ``ids`` end generation too (e.g. a chat model's end-of-turn token).

        Adapters whose :meth:`save` writes a generation config record them there, so a
        checkpoint or export remembers them.
        """
        self.extra_stop_ids = sorted(set(self.extra_stop_ids) | set(ids))

    @property
    @abstractmethod
    def max_context(self) -> int | None:
        """Longest sequence the model accepts, or None when unbounded in practice."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write weights (safetensors) and the model's own config into ``folder``."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Architecture facts for logs and metadata (layers, width, heads, ...)."""

    def resize_vocab(self, size: int) -> bool:
        """Grow the token embedding (and output layer) to ``size`` rows if it is smaller.

        Returns:
            True when the embedding was resized, False when it already had room.

        Raises:
            ConfigError: If the architecture cannot resize its embedding.
        """
        from llmforge.errors import ConfigError

        raise ConfigError(
            f"A {self.architecture} model cannot change its vocabulary size.",
            "Use a tokenizer with the same vocabulary, or no tokenizer_override.",
        )

    def save_config(self, folder: Path) -> None:
        """Write the model's config without its weights (a sharded checkpoint's skeleton).

        Raises:
            ConfigError: If the architecture does not support it (then no ``strategy: fsdp``).
        """
        from llmforge.errors import ConfigError

        raise ConfigError(
            f"The {self.architecture} adapter cannot save its config apart from its weights, "
            "which sharded (strategy: fsdp) checkpoints need.",
            "Use strategy: ddp, or implement save_config/from_saved_config in its adapter.",
        )

    @classmethod
    def from_saved_config(cls, folder: Path, tokenizer: Tokenizer) -> ModelAdapter:
        """A model built from what :meth:`save_config` wrote, with fresh weights.

        Its weights are overwritten right away (from a sharded checkpoint).
        """
        from llmforge.errors import ConfigError

        raise ConfigError(
            f"The {cls.architecture} adapter cannot build a model from its config alone.",
            "Use strategy: ddp, or implement save_config/from_saved_config in its adapter.",
        )

    def shard_units(self) -> list[torch.nn.Module]:
        """The repeated blocks that FSDP shards one by one (``strategy: fsdp``).

        Each unit's parameters are gathered only while it runs. The default: the modules whose
        class ``transformers`` lists in the model's ``_no_split_modules`` (its decoder layers),
        else the children of the model's largest ``ModuleList``. Override for other layouts.
        """
        import torch

        model = self.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        names = set(getattr(base, "_no_split_modules", None) or [])
        units = [m for m in model.modules() if type(m).__name__ in names]
        if units:
            return units
        lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
        return list(max(lists, key=len)) if lists else []

    # -- parameters ----------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Named parameters that training updates (unique: tied weights appear once)."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        params = self.model.parameters()
        return sum(p.numel() for p in params if p.requires_grad or not trainable_only)

    def no_weight_decay(self, name: str, param: torch.nn.Parameter) -> bool:
        """Whether a parameter is exempt from weight decay: norms, biases, embeddings."""
        return param.ndim < 2 or "emb" in name or "norm" in name or name.endswith(".bias")
