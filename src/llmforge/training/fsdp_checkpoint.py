"""Writing FSDP checkpoints: every rank saves its shards into one temporary folder that rank 0
completes and renames into place; ``ckpt consolidate`` rewrites one in the usual layout.

The layout is described in :mod:`llmforge.checkpoints.sharded`, which reads them.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from llmforge.adapters.base import ModelAdapter
from llmforge.checkpoints.layout import (
    CHECKPOINTS,
    META_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    TOKENIZER_DIR,
    check_complete,
    is_sharded,
    step_dirname,
)
from llmforge.checkpoints.metadata import load_meta, read_json
from llmforge.checkpoints.sharded import (
    FORMAT,
    SHARDS_DIR,
    load_sharded,
    skeleton,
    state_dicts,
)
from llmforge.errors import CheckpointError
from llmforge.fsutil import atomic_write_json
from llmforge.training.checkpointing import checkpoint_folder, publish, temporary_dir
from llmforge.training.distributed import DistContext


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

    Must be called on every rank. Like :func:`~llmforge.training.checkpointing.save_checkpoint`,
    a crash at any point leaves no ``step-*`` folder that looks complete.
    """
    import torch.distributed.checkpoint as dcp

    root = run_dir / CHECKPOINTS
    final = root / step_dirname(step)
    tmp = root / dist.broadcast(temporary_dir(final).name)  # rank 0's name: one folder
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    try:
        dcp.save(state_dicts(adapter, optimizer), checkpoint_id=str(tmp / SHARDS_DIR))
        if dist.is_main:
            adapter.save_config(tmp)
            adapter.tokenizer.save(tmp / TOKENIZER_DIR)
            atomic_write_json(tmp / STATE_FILE, trainer_state)
            sharded = {"format": FORMAT, "world_size": dist.world_size, "strategy": "fsdp"}
            atomic_write_json(tmp / META_FILE, {**meta, "sharded": sharded})
            publish(tmp, final)
    except BaseException:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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

    check_complete(path)
    if not is_sharded(path):
        raise CheckpointError(
            f"{path} is not a sharded checkpoint; there is nothing to consolidate.",
            "Use it as it is: register, export and resume read it directly.",
        )
    meta = load_meta(path)
    cfg = TrainingConfig.from_dict(meta.get("config", {}), source=str(path / META_FILE))
    adapter = skeleton(path, meta)
    optimizer = build_optimizer(adapter, cfg, low_precision=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_sharded(path, adapter, optimizer)
    inner = optimizer.state_dict()
    if cfg.bf16_params:  # the layout a one-process bf16 run saves: masters + their moments
        from llmforge.training.master_weights import MASTER_KEY

        params = [p for _, p in adapter.trainable_parameters()]
        inner = {**inner, MASTER_KEY: {i: p.detach().clone() for i, p in enumerate(params)}}
        for p in adapter.model.parameters():
            p.data = p.data.to(torch.bfloat16)
    state = read_json(path / STATE_FILE)
    state["strategy"] = "ddp"
    new_cfg = {**cfg.to_dict(), "strategy": "ddp"}
    new_meta = {k: v for k, v in meta.items() if k != "sharded"}
    new_meta.update(config=new_cfg, consolidated_from={"world_size": meta["sharded"]["world_size"]})
    with checkpoint_folder(path) as tmp:  # replaces the sharded folder once complete
        adapter.save(tmp)
        adapter.tokenizer.save(tmp / TOKENIZER_DIR)
        torch.save(inner, tmp / OPTIMIZER_FILE)
        atomic_write_json(tmp / STATE_FILE, state)
        atomic_write_json(tmp / META_FILE, new_meta)
    return path
