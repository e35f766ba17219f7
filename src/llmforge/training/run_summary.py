"""What a prepared run is about to train, typed: the facts of ``llmforge train``'s start-up log.

:func:`~llmforge.training.run_setup.prepare_run` fills a :class:`RunSummary` once the run is
on disk; the CLI renders it. The dicts kept as they are (``model``, ``tokenizer``, ``data``,
``chat``, ``lora``, ``base``, ``branched_from``) are the entries of the run's ``meta.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.training.trainer import Trainer


@dataclass(frozen=True)
class RunSummary:
    """The start-up facts of a run.

    Attributes:
        run_name: The run's folder name.
        run_dir: ``runs/<run_name>``.
        resumed: The run continues a checkpoint.
        start_step: Steps already done.
        model_name: The registry model fine-tuned, or None (trained from scratch).
        model_id: Where that model came from (a hub id), if known.
        model_source: The registry's ``source`` of that model (``init`` from scratch).
        architecture: The adapter's architecture.
        model: The adapter's ``describe()`` (layers, width, heads, ...).
        parameters: All parameters of the model.
        trainable_parameters: The ones training updates.
        disk_bytes: The registry model's size on disk, if known.
        lineage: The lineage list (``[parent, ..., "hf:<hub id>"]``), ``[]`` from scratch.
        fine_tuned_from: The parent model.
        branched_from: For a new ``--init-from`` branch: the checkpoint it starts from.
        fine_tune_started_at: When the run started (ISO 8601).
        tokenizer: ``{"kind", "identifier"}`` of the tokenizer.
        data: The ``data`` entry of ``meta.json`` (source, format, examples or tokens).
        chat: The chat template and its stop tokens, for chat data.
        lora: The LoRA settings, for a LoRA run.
        base: The LoRA base's identity, for a LoRA run.
        tokens_per_step: Tokens (or padded example positions) one optimizer step sees.
        max_steps: The run's length.
        precision: ``fp32`` or ``bf16``.
        device: Where this process computes.
        world_size: Processes of the job.
        strategy: ``single``, ``ddp`` or ``fsdp``.
        batch_size: Sequences per micro-batch.
        grad_accum_steps: Micro-batches per step and process.
    """

    run_name: str
    run_dir: Path
    resumed: bool
    start_step: int
    model_name: str | None
    model_id: str | None
    model_source: str | None
    architecture: str
    model: dict[str, Any]
    parameters: int
    trainable_parameters: int
    disk_bytes: int | None
    lineage: list[str]
    fine_tuned_from: str | None
    branched_from: dict[str, Any] | None
    fine_tune_started_at: str | None
    tokenizer: dict[str, Any]
    data: dict[str, Any]
    chat: dict[str, Any] | None
    lora: dict[str, Any] | None
    base: dict[str, Any] | None
    tokens_per_step: int
    max_steps: int
    precision: str
    device: str
    world_size: int
    strategy: str
    batch_size: int
    grad_accum_steps: int


def summarize(
    trainer: Trainer, run_dir: Path, meta: dict[str, Any], resumed_from: Path | None
) -> RunSummary:
    """The summary of the run ``trainer`` is about to train (``meta``: its ``meta.json``)."""
    adapter, cfg, dist = trainer.adapter, trainer.cfg, trainer.dist
    tokens = cfg.batch_size * cfg.grad_accum_steps * dist.world_size
    return RunSummary(
        run_name=run_dir.name,
        run_dir=run_dir,
        resumed=resumed_from is not None,
        start_step=int(trainer.state.get("step", 0)),
        model_name=meta.get("model_name"),
        model_id=meta.get("model_id"),
        model_source=meta.get("model_source"),
        architecture=adapter.architecture,
        model=adapter.describe(),
        parameters=adapter.num_parameters(),
        trainable_parameters=adapter.num_parameters(trainable_only=True),
        disk_bytes=meta.get("model_disk_bytes"),
        lineage=list(meta.get("lineage", [])),
        fine_tuned_from=meta.get("fine_tuned_from"),
        branched_from=meta.get("branched_from") if resumed_from is None else None,
        fine_tune_started_at=meta.get("fine_tune_started_at"),
        tokenizer=meta.get("tokenizer") or {},
        data=meta.get("data") or {},
        chat=meta.get("chat"),
        lora=meta.get("lora"),
        base=meta.get("base"),
        tokens_per_step=tokens * trainer.train_sampler.block_size,
        max_steps=cfg.max_steps,
        precision=cfg.precision,
        device=str(dist.device),
        world_size=dist.world_size,
        strategy=dist.strategy,
        batch_size=cfg.batch_size,
        grad_accum_steps=cfg.grad_accum_steps,
    )
