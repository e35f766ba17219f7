"""Setting up a training run: a new one, or the continuation of a checkpoint.

:func:`prepare_run` does every check before anything is written (config, model name, model
files, data), so bad input leaves the workspace untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from llmforge import __version__
from llmforge.adapters import get_adapter
from llmforge.adapters.base import ModelAdapter
from llmforge.adapters.custom import CustomTransformerAdapter
from llmforge.config import ARCHITECTURE_KEYS, RESUMABLE_KEYS, TrainingConfig
from llmforge.errors import CheckpointError, ConfigError, ModelExistsError, TrainingError
from llmforge.fsutil import atomic_write_text
from llmforge.modelops import require_model_files
from llmforge.registry import (
    ModelEntry,
    ModelRegistry,
    check_model_name,
    utc_now,
)
from llmforge.tokenizers import CharTokenizer, Tokenizer
from llmforge.training import checkpoint as ck
from llmforge.training import lineage, sharded
from llmforge.training import lora as lora_run
from llmforge.training.batches import LoadedData, build_batches, load_data
from llmforge.training.distributed import DistContext, fit_world_size, join_run
from llmforge.training.memory import MemoryEstimate, check_memory, estimate_memory
from llmforge.training.metrics import MetricsWriter, truncate_metrics
from llmforge.training.override import apply_override, override_tokenizer
from llmforge.training.parallel import setup_training
from llmforge.training.runs import resolve_checkpoint, run_dir_for
from llmforge.training.trainer import Callback, Trainer
from llmforge.workspace import Workspace


@dataclass
class PreparedRun:
    """A run ready to train.

    Attributes:
        trainer: The trainer, positioned at the first step to run.
        run_dir: ``runs/<run_name>``.
        resumed_from: The checkpoint it continues, or None for a new run.
        start_step: Steps already done.
        info: Facts for the start-up log (model, data, sizes, lineage).
        warnings: Things the user should know before training starts.
        memory: The memory estimate of one process.
        dist: This process's place in the job; the caller closes it after training.
    """

    trainer: Trainer
    run_dir: Path
    resumed_from: Path | None
    start_step: int
    info: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    memory: MemoryEstimate | None = None
    dist: DistContext = field(default_factory=DistContext)


def _registry_model(
    workspace: Workspace, cfg: TrainingConfig
) -> tuple[ModelAdapter, ModelEntry, list[str], list[str]]:
    registry = ModelRegistry(workspace)
    entry = registry.get(cfg.model_name)  # unknown name: fails first, listing names
    lora_run.refuse_adapter_entry(entry)
    folder = require_model_files(workspace, entry)
    override = (
        override_tokenizer(workspace, cfg.tokenizer_override) if cfg.tokenizer_override else None
    )
    adapter = get_adapter(entry.architecture).from_registry(entry, folder)
    warnings = [apply_override(adapter, entry, override)] if override else []
    return adapter, entry, lineage.registry_lineage(registry, entry.model_name), warnings


def _new_run(
    workspace: Workspace, cfg: TrainingConfig, run_dir: Path
) -> tuple[tuple[Trainer, dict[str, Any]], list[str]]:
    warnings: list[str] = []
    _refuse_existing_run(run_dir)
    torch.manual_seed(cfg.seed)  # model initialisation is reproducible from the seed
    if cfg.model_name is None:
        corpus = load_data(cfg)
        tokenizer: Tokenizer = CharTokenizer.from_text(corpus.char_text())
        if cfg.tokenizer_override:
            tokenizer = override_tokenizer(workspace, cfg.tokenizer_override)
            warnings.append(
                f"tokenizer_override: the from-scratch Transformer uses {tokenizer.identifier!r} "
                f"({tokenizer.vocab_size} ids) instead of the char-level tokenizer; its "
                "embedding is sized to that vocabulary."
            )
        adapter: ModelAdapter = CustomTransformerAdapter.from_config(cfg, tokenizer)
        meta_model: dict[str, Any] = {
            "model_name": None,
            "model_id": None,
            "model_source": "init",
            "fine_tuned_from": None,
            "lineage": [],
        }
    else:
        if cfg.finetune == "lora" and cfg.tokenizer_override:
            raise ConfigError(
                "tokenizer_override cannot be combined with finetune: lora: a LoRA checkpoint "
                "stores only the adapter, never a changed embedding.",
                "Remove tokenizer_override, or use finetune: full.",
            )
        adapter, entry, chain, override_warnings = _registry_model(workspace, cfg)
        warnings += override_warnings
        set_keys = [k for k in ARCHITECTURE_KEYS if k in cfg.model_fields_set]
        if set_keys:
            warnings.append(
                f"{', '.join(set_keys)} {'is' if len(set_keys) == 1 else 'are'} ignored: "
                f"model {entry.model_name!r} brings its own architecture config."
            )
        corpus = load_data(cfg)
        meta_model = {
            "model_name": entry.model_name,
            "model_id": entry.model_id,
            "model_source": entry.source,
            "model_disk_bytes": entry.disk_bytes,
            "license": entry.license,
            "fine_tuned_from": entry.model_name,
            "lineage": chain,
        }
        if cfg.finetune == "lora":
            settings = lora_run.peft_lora.resolve_settings(entry.architecture, cfg.lora)
            lora_run.peft_lora.attach(adapter, settings)  # seeded above: reproducible init
            meta_model.update(
                finetune="lora", lora=adapter.lora, base=lora_run.base_identity(entry)
            )
    return _fresh_trainer(cfg, adapter, corpus, run_dir, meta_model, warnings), warnings


def _fresh_trainer(
    cfg: TrainingConfig,
    adapter: ModelAdapter,
    corpus: LoadedData,
    run_dir: Path,
    meta_model: dict[str, Any],
    warnings: list[str],
) -> tuple[Trainer, dict[str, Any]]:
    """A trainer at step 0 with a fresh optimizer, and the run's ``meta.json`` content.

    Warnings about the data (truncated or skipped examples) are appended to ``warnings``.
    """
    block = min(cfg.block_size, adapter.max_context or cfg.block_size)
    batches = build_batches(corpus, adapter, cfg, block)
    train, val, prompt = batches.train, batches.val, batches.sample_prompt
    warnings += batches.warnings
    dist = join_run(cfg)
    module, optimizer = setup_training(adapter, cfg, dist)
    meta = {
        "llmforge_version": __version__,
        "run_name": run_dir.name,
        **meta_model,
        "architecture": adapter.architecture,
        "fine_tune_started_at": utc_now().isoformat(),
        "tokenizer": {"kind": adapter.tokenizer.kind, "identifier": adapter.tokenizer.identifier},
        "model": adapter.describe(),
        "data": batches.meta,
        **({"chat": batches.chat} if batches.chat else {}),
        "config": cfg.to_dict(),
    }
    trainer = Trainer(
        cfg,
        adapter,
        optimizer,
        train,
        val,
        run_dir,
        meta,
        {"step": 0},
        sample_prompt=prompt,
        dist=dist,
        train_module=module,
    )
    return trainer, meta


def _refuse_existing_run(run_dir: Path) -> None:
    if ck.list_checkpoints(run_dir):
        latest = ck.latest_checkpoint(run_dir)
        raise TrainingError(
            f"The run {run_dir.name!r} already has checkpoints (latest: {latest.name}) in "
            f"{run_dir}.",
            "Continue it with --resume latest, or start a new run with --run-name NEW_NAME.",
        )


def _branch(
    workspace: Workspace, cfg: TrainingConfig, run_dir: Path, source: Path, name: str
) -> tuple[tuple[Trainer, dict[str, Any]], list[str]]:
    """A new run from a checkpoint's weights, fine-tuning the branch model ``name``.

    ``name`` is registered (by :func:`prepare_run`, once every check passed) as a copy of
    the checkpoint (hard links), with ``fine_tuned_from`` = the checkpoint's model; the run
    then fine-tunes ``name`` like any registry model: fresh optimizer, step 0.
    """
    warnings: list[str] = []
    check_model_name(name)
    registry = ModelRegistry(workspace)
    if registry.exists(name):
        raise ModelExistsError(
            f"A model named {name!r} is already in the registry; a branch needs a new name.",
            "Choose another --name for the branch; `llmforge models list` shows the taken ones.",
        )
    if cfg.tokenizer_override:
        raise ConfigError(
            "tokenizer_override cannot be combined with --init-from: a branch keeps the "
            "tokenizer of the checkpoint it starts from.",
            "Remove tokenizer_override (or --set tokenizer_override=null).",
        )
    if cfg.finetune == "lora" or ck.load_meta(source).get("finetune") == "lora":
        raise ConfigError(
            "--init-from does not work with LoRA yet (neither from a LoRA checkpoint nor "
            "into a LoRA run).",
            "Register the checkpoint as a model (`llmforge ckpt register CKPT --name NEW`, "
            "with --merge for a LoRA checkpoint) and fine-tune that model instead.",
        )
    _refuse_existing_run(run_dir)
    torch.manual_seed(cfg.seed)
    adapter, src = ck.load_checkpoint_adapter(source)
    set_keys = [k for k in ARCHITECTURE_KEYS if k in cfg.model_fields_set]
    if set_keys:
        warnings.append(
            f"{', '.join(set_keys)} {'is' if len(set_keys) == 1 else 'are'} ignored: "
            f"the checkpoint {source} brings its own architecture config."
        )
    corpus = load_data(cfg)
    run_cfg = TrainingConfig.from_dict({**cfg.to_dict(), "model_name": name}, source="branch")
    meta_model = {
        "model_name": name,
        "model_id": src.get("model_id"),
        "model_source": "fine-tune",
        "model_disk_bytes": sum(
            p.stat().st_size for p in source.iterdir() if p.is_file() and p.suffix != ".pt"
        ),
        "license": src.get("license"),
        "fine_tuned_from": name,
        "lineage": [name, *src.get("lineage", [])],
        "branched_from": {
            "checkpoint": str(source),
            "run": src.get("run_name"),
            "step": src.get("step"),
            "model_name": src.get("model_name"),
        },
    }
    return _fresh_trainer(run_cfg, adapter, corpus, run_dir, meta_model, warnings), warnings


def _resume(
    ckpt: Path,
    cfg: TrainingConfig,
    explicit: set[str],
    workspace: Workspace,
    allow_base_mismatch: bool = False,
) -> tuple[Trainer, dict[str, Any], list[str]]:
    warnings: list[str] = []
    ck.check_complete(ckpt)
    run_dir = ckpt.parent.parent
    is_sharded = sharded.is_sharded(ckpt)
    if is_sharded:  # the shards are loaded once the model is sharded itself
        meta = ck.load_meta(ckpt)
        adapter = sharded.skeleton(ckpt, meta)
    else:
        adapter, meta = ck.load_checkpoint_adapter(
            ckpt, workspace, allow_base_mismatch=allow_base_mismatch, warnings=warnings
        )
    saved = TrainingConfig.from_dict(meta.get("config", {}), source=str(ckpt / ck.META_FILE))
    changed = sorted(
        k
        for k in explicit
        if k not in RESUMABLE_KEYS and k != "run_name" and getattr(cfg, k) != getattr(saved, k)
    )
    if changed:
        warnings.append(
            f"A resumed run keeps its original settings; ignoring the changed {', '.join(changed)}."
        )
    updates = {k: getattr(cfg, k) for k in RESUMABLE_KEYS if k in explicit}
    run_cfg = TrainingConfig.from_dict({**saved.to_dict(), **updates}, source="resumed config")
    state = ck.read_json(ckpt / ck.STATE_FILE)
    dist = join_run(run_cfg)
    run_cfg = fit_world_size(run_cfg, state, dist, warnings)
    corpus = load_data(run_cfg)
    if corpus.sha256 != meta.get("data", {}).get("sha256"):
        warnings.append(
            f"The training data ({corpus.source}) changed since the run started; the resumed "
            "run will not match an uninterrupted one."
        )
    block = min(run_cfg.block_size, adapter.max_context or run_cfg.block_size)
    batches = build_batches(corpus, adapter, run_cfg, block, meta.get("chat"))
    train, val, prompt = batches.train, batches.val, batches.sample_prompt
    warnings += batches.warnings
    module, optimizer = setup_training(adapter, run_cfg, dist)
    if is_sharded:
        if not dist.sharded:
            raise CheckpointError(
                f"{ckpt} is a sharded (FSDP) checkpoint, but this run is not sharded.",
                f"Resume it with strategy: fsdp, or run `llmforge ckpt consolidate {ckpt}` first.",
            )
        sharded.load_sharded(ckpt, adapter, optimizer)
    else:
        try:
            optimizer.load_state_dict(ck.load_optimizer_state(ckpt))
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"The optimizer state in {ckpt} does not fit the model ({e}).",
                "The checkpoint is damaged or from another model; use another checkpoint.",
            ) from e
    try:
        ranks = state.get("rng_by_rank") or [state["rng"]]
        same_world = len(ranks) == dist.world_size
        ck.set_rng_state(ranks[dist.rank] if same_world else state["rng"])
        start = int(state["step"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{ckpt / ck.STATE_FILE} is damaged ({type(e).__name__}).",
            "Use another checkpoint of the run.",
        ) from e
    meta = {**meta, "config": run_cfg.to_dict()}
    for k in ("step", "train_loss", "val_loss"):
        meta.pop(k, None)
    trainer = Trainer(
        run_cfg,
        adapter,
        optimizer,
        train,
        val,
        run_dir,
        meta,
        state,
        sample_prompt=prompt,
        dist=dist,
        train_module=module,
    )
    trainer.state["step"] = start
    return trainer, meta, warnings


def prepare_run(
    workspace: Workspace,
    cfg: TrainingConfig,
    *,
    resume: str | None = None,
    explicit_keys: set[str] | None = None,
    callbacks: list[Callback] | None = None,
    init_from: str | None = None,
    branch_name: str | None = None,
    allow_base_mismatch: bool = False,
    dry_run: bool = False,
    processes: int | None = None,
) -> PreparedRun:
    """Build everything a run needs, resuming from a checkpoint when asked.

    Args:
        workspace: Where ``models/`` and ``runs/`` live.
        cfg: The config from the file and the command line.
        resume: ``"latest"`` (the newest checkpoint of ``cfg``'s run), or a checkpoint
            reference (see :func:`resolve_checkpoint`); None starts a new run.
        explicit_keys: Keys the user set (file or command line); on resume only these can
            override the run's saved config, and only the resumable ones do.
        callbacks: Reporters; a metrics-file writer is always added.
        init_from: Start a new lineage branch from this checkpoint reference: the weights
            are registered as the model ``branch_name`` (``fine_tuned_from`` = the
            checkpoint's model) and a new run fine-tunes it from step 0.
        branch_name: The branch's registry name; required with ``init_from``.
        allow_base_mismatch: Resume a LoRA run even if its base model's files changed.
        dry_run: Build everything and estimate memory, but write nothing (``info`` empty).
        processes: Estimate memory per process for a job of this many processes (a dry run
            of ``--nproc N`` runs in one process); default: this job's.

    Raises:
        ConfigError, ModelNotFoundError, ModelFilesMissingError, DataError, CheckpointError,
        TrainingError: Before anything is written.
    """
    explicit = explicit_keys if explicit_keys is not None else set(cfg.model_fields_set)
    branch_source: Path | None = None
    if (init_from is None) != (branch_name is None):
        raise ConfigError(
            "--init-from and --name go together: a branch starts from a checkpoint's weights "
            "and needs a new model name.",
            "Pass both (llmforge train CONFIG --init-from RUN/step-N --name NEW), or neither.",
        )
    if init_from is not None and resume is not None:
        raise ConfigError(
            "--init-from starts a new run; --resume continues an existing one.",
            "Use one of them.",
        )
    if init_from is not None and branch_name is not None:
        run_dir = run_dir_for(workspace, cfg)
        branch_source = resolve_checkpoint(workspace, init_from, run_dir.parent)
        (trainer, meta), warnings = _branch(workspace, cfg, run_dir, branch_source, branch_name)
        resumed_from = None
    elif resume is None:
        run_dir = run_dir_for(workspace, cfg)
        (trainer, meta), warnings = _new_run(workspace, cfg, run_dir)
        resumed_from = None
    else:
        if resume == "latest":
            run_dir = run_dir_for(workspace, cfg)
            resumed_from = ck.latest_checkpoint(run_dir)
            if resumed_from is None:
                raise CheckpointError(
                    f"--resume latest: the run {run_dir.name!r} has no checkpoint in {run_dir}.",
                    "Start it without --resume, or name the checkpoint or run to continue "
                    "(`llmforge ckpt list` shows them).",
                )
        else:
            resumed_from = resolve_checkpoint(workspace, resume, run_dir_for(workspace, cfg).parent)
        trainer, meta, warnings = _resume(
            resumed_from, cfg, explicit, workspace, allow_base_mismatch
        )
        run_dir = trainer.run_dir
    memory = run_memory_estimate(trainer, processes)
    if dry_run:
        step = int(trainer.state.get("step", 0))
        return PreparedRun(trainer, run_dir, resumed_from, step, {}, warnings, memory, trainer.dist)
    # Refuse a run that cannot fit, before it exists. CPU processes share the machine's memory.
    dist = trainer.dist
    check_memory(
        memory, trainer.cfg, sharers=dist.local_world_size if dist.device.type == "cpu" else 1
    )
    dist.barrier()  # every rank passed every check before rank 0 writes anything
    # Nothing was written so far; from here on the run exists on disk.
    start = int(trainer.state.get("step", 0))
    if dist.is_main:  # only rank 0 touches the registry and the run folder
        if branch_source is not None and branch_name is not None:
            from llmforge.ckpt_ops import register_checkpoint

            register_checkpoint(workspace, str(branch_source), branch_name)
        run_dir.mkdir(parents=True, exist_ok=True)
        ck.clean_temporaries(run_dir)
        truncate_metrics(run_dir, start)
        atomic_write_text(
            run_dir / "config.yaml", yaml.safe_dump(trainer.cfg.to_dict(), sort_keys=False)
        )
        trainer.callbacks = [MetricsWriter(run_dir), *(callbacks or [])]
    dist.barrier()
    adapter = trainer.adapter
    info = {
        "run_name": run_dir.name,
        "run_dir": str(run_dir),
        "model_name": meta.get("model_name"),
        "model_id": meta.get("model_id"),
        "model_source": meta.get("model_source"),
        "architecture": adapter.architecture,
        "model": adapter.describe(),
        "parameters": adapter.num_parameters(),
        "disk_bytes": meta.get("model_disk_bytes"),
        "trainable_parameters": adapter.num_parameters(trainable_only=True),
        "lineage": meta.get("lineage", []),
        "fine_tuned_from": meta.get("fine_tuned_from"),
        "branched_from": meta.get("branched_from") if resumed_from is None else None,
        "fine_tune_started_at": meta.get("fine_tune_started_at"),
        "tokenizer": meta.get("tokenizer"),
        "data": meta.get("data"),
        "chat": meta.get("chat"),
        "lora": meta.get("lora"),
        "base": meta.get("base"),
        "tokens_per_step": trainer.cfg.batch_size
        * trainer.cfg.grad_accum_steps
        * trainer.dist.world_size
        * trainer.train_sampler.block_size,
        "max_steps": trainer.cfg.max_steps,
        "precision": trainer.cfg.precision,
        "device": str(dist.device),
        "world_size": dist.world_size,
        "strategy": dist.strategy,
        "batch_size": trainer.cfg.batch_size,
        "grad_accum_steps": trainer.cfg.grad_accum_steps,
    }
    return PreparedRun(trainer, run_dir, resumed_from, start, info, warnings, memory, dist)


def run_memory_estimate(trainer: Trainer, processes: int | None = None) -> MemoryEstimate:
    """The memory estimate of ``trainer``'s run (its model, micro-batch and settings), per
    process of a job of ``processes`` processes (default: this job's)."""
    world = processes or trainer.dist.world_size
    adapter = trainer.adapter
    return estimate_memory(
        trainer.cfg,
        parameters=adapter.num_parameters(),
        trainable=adapter.num_parameters(trainable_only=True),
        describe=adapter.describe(),
        block_size=trainer.train_sampler.block_size,
        processes=world,
        sharded=(trainer.cfg.strategy == "fsdp" and world > 1) or trainer.dist.sharded,
    )
