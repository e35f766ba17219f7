"""Sharded checkpoints of FSDP runs (``torch.distributed.checkpoint``).

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
``generate``, ``ckpt register`` and ``ckpt export`` read it, and how ``ckpt consolidate``
turns it into the usual single-file layout.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from llmforge.adapters import get_adapter
from llmforge.adapters.base import ModelAdapter
from llmforge.errors import CheckpointError
from llmforge.fsutil import atomic_write_json
from llmforge.training import checkpoint as ck
from llmforge.training.distributed import DistContext

SHARDS_DIR = ck.SHARDS_DIR
FORMAT = "torch.distributed.checkpoint"


def is_sharded(path: Path) -> bool:
    """Whether the checkpoint at ``path`` is a sharded (FSDP) one."""
    return (path / SHARDS_DIR).is_dir()


def _state(adapter: ModelAdapter, optimizer: Any | None) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    state = {"model": get_model_state_dict(adapter.model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(adapter.model, optimizer)
    return state


def save_sharded_checkpoint(
    run_dir: Path,
    step: int,
    adapter: ModelAdapter,
    optimizer: Any,
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    dist: DistContext,
) -> Path:
    """Every rank writes its shards into a temporary folder; rank 0 completes and renames it.

    Must be called on every rank. Like :func:`~llmforge.training.checkpoint.save_checkpoint`,
    a crash at any point leaves no ``step-*`` folder that looks complete.
    """
    import torch.distributed.checkpoint as dcp

    root = run_dir / ck.CHECKPOINTS
    final = root / ck.step_dirname(step)
    tmp = root / dist.broadcast(f".tmp-{final.name}-{os.getpid()}")
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    try:
        dcp.save(_state(adapter, optimizer), checkpoint_id=str(tmp / SHARDS_DIR))
        if dist.is_main:
            adapter.save_config(tmp)
            adapter.tokenizer.save(tmp / ck.TOKENIZER_DIR)
            atomic_write_json(tmp / ck.STATE_FILE, trainer_state)
            sharded = {"format": FORMAT, "world_size": dist.world_size, "strategy": "fsdp"}
            atomic_write_json(tmp / ck.META_FILE, {**meta, "sharded": sharded})
            ck.publish(tmp, final)
    except BaseException:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def skeleton(path: Path, meta: dict[str, Any]) -> ModelAdapter:
    """The checkpoint's model with fresh weights (to load the shards into)."""
    arch = meta.get("architecture")
    if not isinstance(arch, str):
        raise CheckpointError(f"{path / ck.META_FILE} names no architecture.", "Use another one.")
    tokenizer = ck.load_checkpoint_tokenizer(path, meta)
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

    state = _state(adapter, optimizer)
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
    meta = ck.load_meta(path)
    adapter = skeleton(path, meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process"
        load_sharded(path, adapter)
    return adapter, meta


def consolidate(path: Path) -> Path:
    """Rewrite a sharded checkpoint in the usual layout (weights + ``optimizer.pt``), in place.

    The optimizer state becomes a one-process AdamW's (fp32 master weights included when the
    run trains bf16 parameters), so the result resumes with ``strategy: ddp`` at any number of
    processes, and ``ckpt register`` / ``export`` read it like any other checkpoint.

    Returns:
        The checkpoint's path (unchanged).
    """
    from llmforge.config import TrainingConfig
    from llmforge.training.optim import build_optimizer

    ck.check_complete(path)
    if not is_sharded(path):
        raise CheckpointError(
            f"{path} is not a sharded checkpoint; there is nothing to consolidate.",
            "Use it as it is: register, export and resume read it directly.",
        )
    meta = ck.load_meta(path)
    cfg = TrainingConfig.from_dict(meta.get("config", {}), source=str(path / ck.META_FILE))
    adapter = skeleton(path, meta)
    optimizer = build_optimizer(adapter, cfg, low_precision=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_sharded(path, adapter, optimizer)
    inner = optimizer.state_dict()
    if cfg.bf16_params:  # the layout a one-process bf16 run saves: masters + their moments
        from llmforge.training.master import MASTER_KEY

        params = [p for _, p in adapter.trainable_parameters()]
        inner = {**inner, MASTER_KEY: {i: p.detach().clone() for i, p in enumerate(params)}}
        for p in adapter.model.parameters():
            p.data = p.data.to(torch.bfloat16)
    state = ck.read_json(path / ck.STATE_FILE)
    state["strategy"] = "ddp"
    new_cfg = {**cfg.to_dict(), "strategy": "ddp"}
    new_meta = {k: v for k, v in meta.items() if k != "sharded"}
    new_meta.update(config=new_cfg, consolidated_from={"world_size": meta["sharded"]["world_size"]})
    root = path.parent
    tmp = root / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        adapter.save(tmp)
        adapter.tokenizer.save(tmp / ck.TOKENIZER_DIR)
        torch.save(inner, tmp / ck.OPTIMIZER_FILE)
        atomic_write_json(tmp / ck.STATE_FILE, state)
        atomic_write_json(tmp / ck.META_FILE, new_meta)
        ck.publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
