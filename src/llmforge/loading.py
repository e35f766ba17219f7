"""Loading a model for inference from a checkpoint reference or a registry name."""

from __future__ import annotations

from typing import Any

from llmforge.adapters import get_adapter
from llmforge.adapters.base import ModelAdapter
from llmforge.errors import CheckpointError
from llmforge.modelops import require_model_files
from llmforge.registry import ModelRegistry
from llmforge.training.checkpoint import load_checkpoint_adapter
from llmforge.training.run import resolve_checkpoint
from llmforge.workspace import Workspace


def load_for_inference(workspace: Workspace, source: str) -> tuple[ModelAdapter, dict[str, Any]]:
    """The adapter for ``source``: a checkpoint reference, else a registry model name.

    Returns:
        ``(adapter, metadata)``: the checkpoint's ``meta.json`` or the registry entry as a dict.

    Raises:
        CheckpointError: If ``source`` is neither a checkpoint nor a registered model.
    """
    try:
        path = resolve_checkpoint(workspace, source)
    except CheckpointError as ckpt_error:
        registry = ModelRegistry(workspace)
        names = registry.names()
        if source not in names:
            raise CheckpointError(
                f"{source!r} is neither a checkpoint nor a registered model.",
                f"{ckpt_error.hint} Registered models: {', '.join(names) or 'none'}.",
            ) from None
        entry = registry.get(source)
        folder = require_model_files(workspace, entry)
        adapter = get_adapter(entry.architecture).from_registry(entry, folder)
        return adapter, entry.model_dump(mode="json")
    return load_checkpoint_adapter(path)
