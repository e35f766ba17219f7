"""A run that starts at step 0: from scratch, fine-tuning a registry model, or a branch.

Each builder checks everything before anything is written, and estimates memory from the
model's config before the model is built (a config claiming 400 billion parameters never
reaches the allocator). :mod:`llmforge.training.run_setup` calls them and writes the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmforge import __version__
from llmforge.adapters import get_adapter
from llmforge.adapters.base import ModelAdapter
from llmforge.adapters.custom import CustomTransformerAdapter
from llmforge.checkpoints import lora_base as lora_run
from llmforge.checkpoints.layout import latest_checkpoint, list_checkpoints
from llmforge.checkpoints.loading import load_checkpoint_adapter
from llmforge.checkpoints.metadata import load_meta
from llmforge.config import ARCHITECTURE_KEYS, TrainingConfig
from llmforge.data.batches import LoadedData, build_batches, load_data
from llmforge.data.token_cache import TokenCache
from llmforge.errors import ConfigError, ModelExistsError, TrainingError
from llmforge.modeling.model_size import folder_shape
from llmforge.modeling.tokenizers import CharTokenizer, Tokenizer
from llmforge.store import lineage
from llmforge.store.model_files import require_model_files
from llmforge.store.registry import ModelEntry, ModelRegistry, check_model_name, utc_now
from llmforge.training.distributed import join_run
from llmforge.training.memory import custom_shape, precheck_memory
from llmforge.training.parallel import setup_training
from llmforge.training.tokenizer_override import apply_override, override_tokenizer
from llmforge.training.trainer import Trainer
from llmforge.workspace import Workspace


def resolve_precision(cfg: TrainingConfig) -> TrainingConfig:
    """``precision: auto`` made concrete for this device (the run records the result)."""
    if cfg.precision != "auto":
        return cfg
    import os

    from llmforge.device import bf16_is_fast, resolve_device

    if cfg.param_dtype == "bf16":
        value, why = "bf16", "param_dtype: bf16"
    else:
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        fast, why = bf16_is_fast(resolve_device(cfg.device, local_rank))
        value = "bf16" if fast else "fp32"
    return cfg.evolve({"precision": value}, chosen={"precision": f"auto: {why}"})


def _precheck(cfg: TrainingConfig, shape: Any, world: int) -> None:
    """Refuse, before the model is built, a run whose config already says it cannot fit."""
    precheck_memory(cfg, shape, processes=world, sharded=cfg.strategy == "fsdp" and world > 1)


def _registry_model(
    workspace: Workspace, cfg: TrainingConfig, world: int
) -> tuple[ModelAdapter, ModelEntry, list[str], list[str]]:
    registry = ModelRegistry(workspace)
    entry = registry.get(cfg.model_name)  # unknown name: fails first, listing names
    lora_run.refuse_adapter_entry(entry)
    folder = require_model_files(workspace, entry)
    override = (
        override_tokenizer(workspace, cfg.tokenizer_override) if cfg.tokenizer_override else None
    )
    _precheck(cfg, folder_shape(folder, frozen=cfg.finetune == "lora"), world)
    adapter = get_adapter(entry.architecture).from_registry(entry, folder)
    warnings = [apply_override(adapter, entry, override)] if override else []
    return adapter, entry, lineage.registry_lineage(registry, entry.model_name), warnings


def new_run(
    workspace: Workspace,
    cfg: TrainingConfig,
    run_dir: Path,
    world: int = 1,
    cache: TokenCache | None = None,
) -> tuple[tuple[Trainer, dict[str, Any]], list[str]]:
    """A new run at step 0 (from scratch, or fine-tuning ``cfg.model_name``): (the trainer and
    ``meta.json`` content, warnings). ``world``: processes of the job (for the memory check);
    ``cache``: the token cache tokenized records are looked up in (see :func:`build_batches`)."""
    warnings: list[str] = []
    refuse_existing_run(run_dir)
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
        _precheck(cfg, custom_shape(cfg, tokenizer.vocab_size), world)
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
        adapter, entry, chain, override_warnings = _registry_model(workspace, cfg, world)
        warnings += override_warnings
        set_keys = [k for k in ARCHITECTURE_KEYS if k in cfg.model_fields_set]
        if set_keys:
            warnings.append(
                f"{', '.join(set_keys)} {'is' if len(set_keys) == 1 else 'are'} ignored: "
                f"model {entry.model_name!r} brings its own architecture config."
            )
        corpus = load_data(cfg, adapter.tokenizer)
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
    trainer = fresh_trainer(cfg, adapter, corpus, run_dir, meta_model, warnings, cache)
    return trainer, warnings


def fresh_trainer(
    cfg: TrainingConfig,
    adapter: ModelAdapter,
    corpus: LoadedData,
    run_dir: Path,
    meta_model: dict[str, Any],
    warnings: list[str],
    cache: TokenCache | None = None,
) -> tuple[Trainer, dict[str, Any]]:
    """A trainer at step 0 with a fresh optimizer, and the run's ``meta.json`` content.

    Warnings about the data (truncated or skipped examples) are appended to ``warnings``.
    """
    block = min(cfg.block_size, adapter.max_context or cfg.block_size)
    batches = build_batches(corpus, adapter, cfg, block, cache=cache)
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


def refuse_existing_run(run_dir: Path) -> None:
    """Refuse to start a run anew over its existing checkpoints."""
    if list_checkpoints(run_dir):
        latest = latest_checkpoint(run_dir)
        raise TrainingError(
            f"The run {run_dir.name!r} already has checkpoints (latest: {latest.name}) in "
            f"{run_dir}.",
            "Continue it with --resume latest, or start a new run with --run-name NEW_NAME.",
        )


def branch_run(
    workspace: Workspace,
    cfg: TrainingConfig,
    run_dir: Path,
    source: Path,
    name: str,
    world: int = 1,
    cache: TokenCache | None = None,
) -> tuple[tuple[Trainer, dict[str, Any]], list[str]]:
    """A new run from a checkpoint's weights, fine-tuning the branch model ``name``: (the
    trainer and ``meta.json`` content, warnings).

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
    if cfg.finetune == "lora" or load_meta(source).get("finetune") == "lora":
        raise ConfigError(
            "--init-from does not work with LoRA yet (neither from a LoRA checkpoint nor "
            "into a LoRA run).",
            "Register the checkpoint as a model (`llmforge ckpt register CKPT --name NEW`, "
            "with --merge for a LoRA checkpoint) and fine-tune that model instead.",
        )
    refuse_existing_run(run_dir)
    # The branch fine-tunes the model NAME: keys the user left unset take the defaults of a
    # full fine-tune, not those of the run the checkpoint came from.
    run_cfg = TrainingConfig.from_dict({**cfg.user_dict(), "model_name": name}, source="branch")
    run_cfg = resolve_precision(run_cfg)
    torch.manual_seed(cfg.seed)
    _precheck(run_cfg, folder_shape(source), world)
    adapter, src = load_checkpoint_adapter(source)
    set_keys = [k for k in ARCHITECTURE_KEYS if k in cfg.model_fields_set]
    if set_keys:
        warnings.append(
            f"{', '.join(set_keys)} {'is' if len(set_keys) == 1 else 'are'} ignored: "
            f"the checkpoint {source} brings its own architecture config."
        )
    corpus = load_data(cfg, adapter.tokenizer)
    meta_model = {
        "model_name": name,
        "model_id": src.get("model_id"),
        "model_source": "fine-tune",
        "model_disk_bytes": None,  # the registered branch model's size, known once registered
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
    trainer = fresh_trainer(run_cfg, adapter, corpus, run_dir, meta_model, warnings, cache)
    return trainer, warnings
