"""Reading the sharded checkpoints of FSDP runs (``torch.distributed.checkpoint``).

An FSDP run's checkpoint ``runs/<run>/checkpoints/step-NNNNNN/`` holds, instead of the model
weights and ``optimizer.pt``:

- ``shards/``: the model and optimizer state as ``torch.distributed.checkpoint`` wrote it
  (``.metadata`` plus one ``__<rank>_0.distcp`` file per rank), keyed by parameter name;
- the model's config without weights (``config.json``, ...: the adapter's ``save_config``),
  from which a skeleton is built before the shards are loaded into it;

plus, as always, ``tokenizer/``, ``trainer_state.json`` and ``meta.json`` (with
``"sharded": {"format": "torch.distributed.checkpoint", "world_size": N}``).

``torch.distributed.checkpoint`` reshards on load, so a sharded checkpoint resumes at any
number of processes, and loads into a single process (:func:`load_consolidated`): that is how
``generate``, ``ckpt register`` and ``ckpt export`` read it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from llmforge.adapters import get_adapter
from llmforge.adapters.base import ModelAdapter
from llmforge.checkpoints.layout import META_FILE, SHARDS_DIR
from llmforge.checkpoints.metadata import load_checkpoint_tokenizer, load_meta
from llmforge.errors import CheckpointError

FORMAT = "torch.distributed.checkpoint"


def state_dicts(adapter: ModelAdapter, optimizer: Any | None) -> dict[str, Any]:
    """The model's (and the optimizer's) state as ``torch.distributed.checkpoint`` saves and
    loads it: keyed by parameter name, each rank holding its shards."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    state = {"model": get_model_state_dict(adapter.model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(adapter.model, optimizer)
    return state


def skeleton(path: Path, meta: dict[str, Any]) -> ModelAdapter:
    """The checkpoint's model with fresh weights (to load the shards into)."""
    arch = meta.get("architecture")
    if not isinstance(arch, str):
        raise CheckpointError(f"{path / META_FILE} names no architecture.", "Use another one.")
    tokenizer = load_checkpoint_tokenizer(path, meta)
    try:
        return get_adapter(arch).from_saved_config(path, tokenizer)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"The model config in {path} cannot be read ({e}).",
            "The checkpoint is damaged; use another checkpoint of the run.",
        ) from e


def load_sharded(path: Path, adapter: ModelAdapter, optimizer: Any | None = None) -> None:
    """Load a sharded checkpoint's model (and optimizer) state into ``adapter``, in place.

    Works at any world size: sharded (FSDP) parameters are filled with their shard, plain
    ones (one process) with the whole tensor.

    Raises:
        CheckpointError: If the shards are missing, damaged, or do not fit the model.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = state_dicts(adapter, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(path / SHARDS_DIR))
        set_model_state_dict(adapter.model, state["model"])
        if optimizer is not None:
            set_optimizer_state_dict(adapter.model, optimizer, state["optim"])
    except Exception as e:  # DCP wraps per-rank failures in its own exception types
        raise CheckpointError(
            f"Cannot load the sharded state in {path / SHARDS_DIR}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}.",
            "The checkpoint is incomplete or damaged; use another checkpoint of the run.",
        ) from e


def load_consolidated(path: Path) -> tuple[ModelAdapter, dict[str, Any]]:
    """A sharded checkpoint's model, whole, in this process (no process group needed)."""
    meta = load_meta(path)
    adapter = skeleton(path, meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process"
        load_sharded(path, adapter)
    return adapter, meta
