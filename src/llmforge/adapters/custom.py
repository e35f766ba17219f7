"""``custom-transformer``: the from-scratch Transformer of ``llmforge.modeling``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_model, save_model

from llmforge.adapters.base import GenerationCache, ModelAdapter
from llmforge.config import TrainingConfig
from llmforge.errors import CheckpointError
from llmforge.fsutil import atomic_write_json
from llmforge.modeling.tokenizers import Tokenizer, load_tokenizer
from llmforge.modeling.transformer import Transformer, TransformerConfig
from llmforge.untrusted import brief, load_json

if TYPE_CHECKING:
    from llmforge.store.registry import ModelEntry

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CustomTransformerAdapter(ModelAdapter):
    """The custom decoder-only Transformer with the char-level tokenizer.

    Args:
        model: The module.
        tokenizer: Its tokenizer (``vocab_size`` must match the embedding).
    """

    architecture = "custom-transformer"

    def __init__(self, model: Transformer, tokenizer: Tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_config(cls, cfg: TrainingConfig, tokenizer: Tokenizer) -> CustomTransformerAdapter:
        tcfg = TransformerConfig(
            vocab_size=tokenizer.vocab_size,
            n_layers=cfg.n_layers,
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            block_size=cfg.block_size,
            dropout=cfg.dropout,
        )
        return cls(Transformer(tcfg), tokenizer)

    @classmethod
    def from_registry(
        cls, entry: ModelEntry, folder: Path, tokenizer: Tokenizer | None = None
    ) -> CustomTransformerAdapter:
        """A registered custom Transformer (``llmforge ckpt register``) with its own tokenizer.

        The folder holds ``model.safetensors``, ``config.json`` and the tokenizer files
        (``char_vocab.json``, or a Hugging Face tokenizer the model was trained with).
        """
        return cls.load(folder, tokenizer or load_tokenizer(folder))

    @classmethod
    def _saved_config(cls, folder: Path) -> TransformerConfig:
        """The model config saved in ``folder``, checked (it may be damaged or forged)."""
        try:
            raw = load_json((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(
                f"{folder / CONFIG_FILE} is missing or not JSON.",
                "The checkpoint is incomplete; use another checkpoint of the run.",
            ) from e
        if not isinstance(raw, dict):
            raise CheckpointError(
                f"{folder / CONFIG_FILE} is not a JSON object.",
                "The checkpoint is damaged; use another checkpoint of the run.",
            )
        if raw.pop("architecture", cls.architecture) != cls.architecture:
            raise CheckpointError(
                f"{folder} does not hold a {cls.architecture} model.",
                "Use a checkpoint of the same architecture.",
            )
        try:
            return TransformerConfig(**raw)
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"{folder / CONFIG_FILE} is not a valid model config ({brief(str(e), 200)}).",
                "Use another checkpoint of the run.",
            ) from e

    @classmethod
    def load(cls, folder: Path, tokenizer: Tokenizer) -> CustomTransformerAdapter:
        model = Transformer(cls._saved_config(folder))
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{weights} is missing.", "Use another checkpoint of the run.")
        try:
            load_model(model, str(weights), strict=True)
        except Exception as e:  # safetensors raises several types for corrupt files
            raise CheckpointError(
                f"Cannot load weights from {weights}: {e}.",
                "The file is corrupt or from another model; use another checkpoint of the run.",
            ) from e
        if tokenizer.vocab_size != model.cfg.vocab_size:
            raise CheckpointError(
                f"The tokenizer has {tokenizer.vocab_size} ids but the model in {folder} has "
                f"{model.cfg.vocab_size}.",
                "Use the tokenizer saved with this checkpoint.",
            )
        return cls(model, tokenizer)

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, loss, _ = self.model(input_ids, labels)
        return logits, loss

    def generation_step(
        self, input_ids: torch.Tensor, cache: GenerationCache | None
    ) -> tuple[torch.Tensor, GenerationCache]:
        logits, _, cache = self.model(input_ids, past=cache)
        return logits[:, -1, :], cache  # (B, V)

    @property
    def max_context(self) -> int | None:
        return self.model.cfg.block_size

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        # save_model drops the tied lm_head copy; load_model restores the tie.
        save_model(self.model, str(folder / WEIGHTS_FILE))
        atomic_write_json(
            folder / CONFIG_FILE, {"architecture": self.architecture, **self.model.cfg.to_dict()}
        )

    def save_config(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            folder / CONFIG_FILE, {"architecture": self.architecture, **self.model.cfg.to_dict()}
        )

    @classmethod
    def from_saved_config(cls, folder: Path, tokenizer: Tokenizer) -> CustomTransformerAdapter:
        return cls(Transformer(cls._saved_config(folder)), tokenizer)

    def describe(self) -> dict[str, Any]:
        c = self.model.cfg
        return {
            "architecture": self.architecture,
            "n_layers": c.n_layers,
            "d_model": c.d_model,
            "n_heads": c.n_heads,
            "block_size": c.block_size,
            "vocab_size": c.vocab_size,
            "dropout": c.dropout,
            "parameters": self.num_parameters(),
        }
