"""Loading a model for inference from a checkpoint reference or a registry name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.adapters import get_adapter
from llmforge.adapters.base import ModelAdapter
from llmforge.checkpoints import lora_base
from llmforge.checkpoints.loading import load_checkpoint_adapter
from llmforge.checkpoints.references import resolve_checkpoint
from llmforge.device import resolve_device
from llmforge.errors import CheckpointError, InconsistentModelError
from llmforge.fsutil import human_bytes
from llmforge.modeling.model_size import folder_shape, memory_available
from llmforge.store.model_files import require_model_files
from llmforge.store.registry import ModelRegistry
from llmforge.store.registry_schema import ModelEntry
from llmforge.untrusted import brief
from llmforge.workspace import Workspace


def load_for_inference(
    workspace: Workspace,
    source: str,
    *,
    allow_base_mismatch: bool = False,
    warnings: list[str] | None = None,
    device: str = "cpu",
) -> tuple[ModelAdapter, dict[str, Any]]:
    """The adapter for ``source``: a checkpoint reference, else a registry model name.

    A LoRA checkpoint or adapter entry loads its base from the registry with the adapter
    attached, after the base identity check (``allow_base_mismatch`` turns a refusal into a
    warning appended to ``warnings``).

    Args:
        workspace: The workspace.
        source: A checkpoint reference or a registry model name.
        allow_base_mismatch: Accept a LoRA adapter whose base changed (with a warning).
        warnings: Receives such warnings.
        device: ``auto``, ``cpu`` or ``cuda``: where the model is placed (see ``device.py``).

    Returns:
        ``(adapter, metadata)``: the checkpoint's ``meta.json`` or the registry entry as a dict.

    Raises:
        CheckpointError: If ``source`` is neither a checkpoint nor a registered model.
        ConfigError: If ``device`` cannot be used.
    """
    dev = resolve_device(device)  # fails before anything is loaded
    adapter, meta = _load(workspace, source, allow_base_mismatch, warnings)
    adapter.model.to(dev)
    return adapter, meta


@dataclass(frozen=True)
class SourceRef:
    """What a source names, found without loading anything.

    Attributes:
        checkpoint: The checkpoint folder, when ``source`` is a checkpoint reference.
        entry: The registry entry, when it is a registered model name.
    """

    checkpoint: Path | None = None
    entry: ModelEntry | None = None


def find_source(workspace: Workspace, source: str) -> SourceRef:
    """The checkpoint or registry entry ``source`` names (what ``load_for_inference`` loads).

    Raises:
        CheckpointError: If ``source`` is neither a checkpoint nor a registered model.
    """
    try:
        return SourceRef(checkpoint=resolve_checkpoint(workspace, source))
    except CheckpointError as ckpt_error:
        run = source.partition("/")[0]
        if "/" in source and run and (workspace.runs_dir / run).is_dir():
            raise  # RUN/step-N of a run that exists: the error lists the run's checkpoints
        registry = ModelRegistry(workspace)
        names = registry.names()
        if source not in names:
            raise CheckpointError(
                f"{brief(source)} is neither a checkpoint nor a registered model.",
                f"{ckpt_error.hint} Registered models: {', '.join(names) or 'none'}.",
            ) from None
        return SourceRef(entry=registry.get(source))


def _load(
    workspace: Workspace, source: str, allow_base_mismatch: bool, warnings: list[str] | None
) -> tuple[ModelAdapter, dict[str, Any]]:
    found = find_source(workspace, source)
    entry = found.entry
    if entry is not None:
        if lora_base.is_adapter_entry(entry):
            adapter, notes = lora_base.load_adapter_entry(
                workspace, entry, allow_mismatch=allow_base_mismatch
            )
            if warnings is not None:
                warnings.extend(notes)
            return adapter, entry.model_dump(mode="json")
        folder = require_model_files(workspace, entry)
        require_fits(folder, f"model {source!r}")
        adapter = get_adapter(entry.architecture).from_registry(entry, folder)
        return adapter, entry.model_dump(mode="json")
    assert found.checkpoint is not None
    require_fits(found.checkpoint, f"checkpoint {found.checkpoint.name}")
    return load_checkpoint_adapter(
        found.checkpoint, workspace, allow_base_mismatch=allow_base_mismatch, warnings=warnings
    )


def require_fits(folder: Path, what: str) -> None:
    """Refuse a model whose ``config.json`` claims more weights than the memory available.

    The weights are counted at 2 bytes each (the smallest dtype llmforge loads), so only a
    model that cannot possibly load is refused, before torch asks for the memory.

    Raises:
        InconsistentModelError: If the config's parameters cannot fit.
    """
    shape = folder_shape(folder)
    available = memory_available()
    if shape is None or not available or shape.parameters * 2 <= available:
        return
    raise InconsistentModelError(
        f"The {what} claims {shape.parameters:,} parameters in its config.json (at least "
        f"{human_bytes(shape.parameters * 2)} of weights), but only {human_bytes(available)} "
        "of memory is available; nothing was loaded.",
        "If the config.json was changed, restore it (or use another checkpoint); otherwise "
        "run on a machine with more memory.",
    )
