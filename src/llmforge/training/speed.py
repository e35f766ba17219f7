"""Apply the speed settings of a config (threads, fused loss, checkpointing, compile)."""

from __future__ import annotations

import torch

from llmforge.adapters.base import ModelAdapter
from llmforge.config import TrainingConfig


def apply_speed_settings(cfg: TrainingConfig, adapter: ModelAdapter) -> None:
    """Set up ``adapter`` for training as ``cfg`` asks. Idempotent.

    - ``threads``: ``torch.set_num_threads`` (0 keeps torch's default, one per core).
    - ``fused_loss``: adapters that support it (``fused_loss_chunk``) compute the LM head
      and the cross-entropy in chunks during training.
    - ``gradient_checkpointing``: for ``transformers`` models, recompute each layer's
      activations in backward.
    - ``compile``: ``torch.compile`` the decoder body (``transformers``) or each block.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    adapter.fused_loss_chunk = cfg.loss_chunk if cfg.fused_loss else 0
    model = adapter.model
    if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile and not getattr(model, "_llmforge_compiled", False):
        prefix = getattr(model, "base_model_prefix", None)
        body = getattr(model, prefix, None) if prefix else None
        if body is not None:
            body.compile()
        else:
            for block in getattr(model, "blocks", []):
                block.compile()
        model._llmforge_compiled = True
