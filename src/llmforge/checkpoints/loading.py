"""A checkpoint's model back in memory (full weights, a LoRA adapter on its registry base,
or a sharded checkpoint consolidated in this process) and its optimizer state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmforge.adapters import get_adapter
from llmforge.adapters.base import ModelAdapter
from llmforge.checkpoints.layout import META_FILE, OPTIMIZER_FILE, SHARDS_DIR, check_complete
from llmforge.checkpoints.metadata import load_checkpoint_tokenizer, load_meta
from llmforge.errors import CheckpointError
from llmforge.workspace import Workspace


def load_optimizer_state(path: Path) -> dict[str, Any]:
    """The optimizer state, loaded with ``weights_only=True`` (no code runs on load).

    Raises:
        CheckpointError: If the file is missing, corrupt, or holds anything but tensors.
    """
    try:
        return torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        if "weights only load failed" in str(e).lower():  # never pass on torch's advice
            raise CheckpointError(
                f"{path / OPTIMIZER_FILE} was refused: it is a pickle that holds more than "
                "tensors, and loading it could run code on this machine (llmforge loads it "
                "only with weights_only=True, which stopped it; nothing from it ran).",
                "llmforge writes a tensors-only optimizer state, so this file came from "
                "elsewhere: use another checkpoint of the run, and never load a file you do "
                "not trust with weights_only=False (that runs its code).",
            ) from None
        raise CheckpointError(
            f"Cannot load {path / OPTIMIZER_FILE}: {type(e).__name__}.",
            "The file is corrupt or not a tensors-only optimizer state; use another "
            "checkpoint of the run.",
        ) from e


def load_checkpoint_adapter(
    path: Path,
    workspace: Workspace | None = None,
    *,
    allow_base_mismatch: bool = False,
    warnings: list[str] | None = None,
) -> tuple[ModelAdapter, dict[str, Any]]:
    """The model and tokenizer of a checkpoint, with its metadata.

    A LoRA checkpoint needs ``workspace``: its base model comes from the registry, and is
    checked against the recorded manifest hash (see :mod:`llmforge.checkpoints.lora_base`);
    warnings (a
    mismatch accepted with ``allow_base_mismatch``) are appended to ``warnings``.

    Raises:
        CheckpointError: If the checkpoint is incomplete or its files do not fit.
        AdapterNotFoundError: If no adapter handles its architecture.
    """
    check_complete(path)
    meta = load_meta(path)
    arch = meta.get("architecture")
    if not isinstance(arch, str):
        raise CheckpointError(
            f"{path / META_FILE} names no architecture.", "Use another checkpoint."
        )
    if meta.get("finetune") == "lora":
        from llmforge.checkpoints import lora_base

        if workspace is None:
            raise CheckpointError(
                f"{path} is a LoRA checkpoint; its base model must come from a workspace.",
                "Load it through llmforge's commands (they know the workspace).",
            )
        adapter, notes = lora_base.load_checkpoint(
            workspace, path, meta, allow_mismatch=allow_base_mismatch
        )
        if warnings is not None:
            warnings.extend(notes)
        return adapter, meta
    if (path / SHARDS_DIR).is_dir():
        from llmforge.checkpoints.sharded import load_consolidated

        return load_consolidated(path)
    tokenizer = load_checkpoint_tokenizer(path, meta)
    adapter = get_adapter(arch).load(path, tokenizer)
    return adapter, meta
