"""Continuing a run from one of its checkpoints (``llmforge train --resume``).

A resume continues the run exactly: the saved config (only the keys in ``RESUMABLE_KEYS``
may change), the optimizer state, the RNG states and the sampler position come back. Two
things are refused before anything is loaded: resuming from an older checkpoint while newer
ones exist (training on would overwrite them with different weights), and a checkpoint whose
``meta.json`` / ``trainer_state.json`` is damaged. A resume that changes ``max_steps`` keeps
the learning rate from jumping unless asked to (``schedule_on_extend``, see
:func:`extend_schedule`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmforge.checkpoints.layout import (
    _STEP_RE,
    CHECKPOINTS,
    META_FILE,
    STATE_FILE,
    check_complete,
    is_sharded,
    list_checkpoints,
)
from llmforge.checkpoints.loading import load_checkpoint_adapter, load_optimizer_state
from llmforge.checkpoints.metadata import load_meta, load_state
from llmforge.checkpoints.sharded import load_sharded, skeleton
from llmforge.config import RESUMABLE_KEYS, TrainingConfig
from llmforge.data.batches import build_batches, load_data
from llmforge.data.hub_data import check_hub_revisions
from llmforge.data.token_cache import TokenCache
from llmforge.errors import CheckpointError, LLMForgeError, TrainingError
from llmforge.modeling.model_size import ModelShape, folder_shape
from llmforge.training.checkpointing import set_rng_state
from llmforge.training.distributed import fit_world_size, join_run
from llmforge.training.memory import precheck_memory
from llmforge.training.optim import lr_at
from llmforge.training.parallel import setup_training
from llmforge.training.trainer import Trainer
from llmforge.workspace import Workspace


def _step(path: Path) -> int:
    return int(path.name.split("-")[1])


def refuse_older(ckpt: Path, ref: str) -> None:
    """Refuse to resume from ``ckpt`` when its run has newer checkpoints.

    Raises:
        TrainingError: Naming the newer checkpoints and how to branch instead.
    """
    run_dir = ckpt.parent.parent
    if ckpt.parent.name != CHECKPOINTS or not _STEP_RE.fullmatch(ckpt.name):
        return
    newer = [p.name for p in list_checkpoints(run_dir) if _step(p) > _step(ckpt)]
    if not newer:
        return
    step, run = _step(ckpt), run_dir.name
    raise TrainingError(
        f"--resume {ref} would continue the run {run!r} from step {step}, but the run already "
        f"has newer checkpoints ({', '.join(newer)}); training on from step {step} would "
        "overwrite them with different weights. Nothing was written.",
        f"To continue the run where it is, use --resume latest. To branch off at step {step}, "
        f"start a new run from its weights: llmforge train CONFIG --init-from {run}/step-{step} "
        "--name NEW_MODEL (the checkpoint is registered as NEW_MODEL and the run is named after "
        "it; --run-name picks another name).",
    )


def _resume_shape(ws: Workspace, ckpt: Path, meta: dict[str, Any]) -> ModelShape | None:
    """The model's size from the checkpoint's config (a LoRA run: its base's), unbuilt."""
    if meta.get("finetune") != "lora":
        return folder_shape(ckpt)
    from llmforge.store.model_files import require_model_files
    from llmforge.store.registry import ModelRegistry

    try:
        entry = ModelRegistry(ws).get(str((meta.get("base") or {}).get("model_name")))
        return folder_shape(require_model_files(ws, entry), frozen=True)
    except LLMForgeError:  # the loader reports a missing or changed base precisely
        return None


def world_size(processes: int | None = None) -> int:
    """Processes of this job: ``processes`` (a dry run of ``--nproc N``), else torchrun's
    ``WORLD_SIZE``, else 1."""
    try:
        return processes or max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def extend_schedule(
    run_cfg: TrainingConfig, saved: TrainingConfig, state: dict[str, Any], start: int
) -> tuple[list[str], list[str]]:
    """Record a change of ``max_steps`` in ``state['schedule']``; say what the lr does.

    The first segment is the plan the run started with (its length and warmup); a resume to
    another length appends one from ``start`` with ``run_cfg.schedule_on_extend``. Returns
    (notes, warnings) for the start-up log; nothing when the length did not change.
    """
    plan = list(state.get("schedule") or [])
    if not plan:
        plan = [{"from_step": 0, "max_steps": saved.max_steps, "warmup_steps": saved.warmup_steps}]
        plan[0]["mode"] = "initial"
    old, new = int(plan[-1]["max_steps"]), run_cfg.max_steps
    if old == new or start >= new:
        return [], []
    mode = run_cfg.schedule_on_extend
    before = lr_at(start - 1, run_cfg, plan) if start else 0.0
    seg: dict[str, Any] = {"from_step": start, "max_steps": new, "mode": mode}
    if mode == "rewarm":
        seg["warmup_steps"] = min(run_cfg.warmup_steps, max(0, new - start - 1))
    state["schedule"] = [*plan, seg]
    after = lr_at(start, run_cfg, state["schedule"])
    final = lr_at(new - 1, run_cfg, state["schedule"])
    head = f"max_steps changes from {old} to {new} at step {start}: "
    if mode == "continue":
        if new > old:
            last = lr_at(old - 1, run_cfg, plan)
            rest = f"steps {max(start, old) + 1}-{new} run at its final {last:.2e}"
        else:
            rest = f"the run ends at step {new} before the decay completes (lr {final:.2e})"
        return [
            head + f"the learning rate keeps the run's schedule (schedule_on_extend: continue); "
            f"{rest}. For a new warmup and cosine decay over the added steps, resume with "
            "--set schedule_on_extend=rewarm."
        ], []
    if mode == "rewarm":
        return [
            head + f"a new warmup of {seg['warmup_steps']} step(s) and cosine decay over steps "
            f"{start + 1}-{new} (schedule_on_extend: rewarm): the lr goes from {before:.2e} up "
            f"to {run_cfg.learning_rate:.2e} and down to {run_cfg.min_lr:.2e}."
        ], []
    return [], [
        head + f"the cosine decay is stretched over all {new} steps (schedule_on_extend: "
        f"replan): the learning rate jumps from {before:.2e} to {after:.2e}, and the loss "
        "may rise for a while."
    ]


def _changed_keys(cfg: TrainingConfig, saved: TrainingConfig, explicit: set[str]) -> list[str]:
    out = []
    for k in sorted(explicit):
        if k in RESUMABLE_KEYS or k == "run_name" or getattr(cfg, k) == getattr(saved, k):
            continue
        if k == "precision" and cfg.precision == "auto":  # auto resolved to the saved value
            continue
        out.append(k)
    return out


def _restore(
    ckpt: Path, adapter: Any, optimizer: Any, state: dict[str, Any], dist: Any, is_sharded: bool
) -> None:
    """Load the checkpoint's optimizer state (and shards) and this rank's RNG state."""
    if is_sharded:
        if not dist.sharded:
            raise CheckpointError(
                f"{ckpt} is a sharded (FSDP) checkpoint, but this run is not sharded.",
                f"Resume it with strategy: fsdp, or run `llmforge ckpt consolidate {ckpt}` first.",
            )
        load_sharded(ckpt, adapter, optimizer)
    else:
        try:
            optimizer.load_state_dict(load_optimizer_state(ckpt))
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"The optimizer state in {ckpt} does not fit the model ({e}).",
                "The checkpoint is damaged or from another model; use another checkpoint.",
            ) from e
    try:
        ranks = state.get("rng_by_rank") or [state["rng"]]
        same_world = len(ranks) == dist.world_size
        set_rng_state(ranks[dist.rank] if same_world else state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"The checkpoint is damaged: the RNG state in {ckpt / STATE_FILE} cannot be "
            f"restored ({type(e).__name__}).",
            "Nothing was written. Use another checkpoint of the run.",
        ) from e


def _resumed_data(meta: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` entry of a resumed run's checkpoints: what it trains on now, and the hub
    lineage it started with when that moved (``--allow-data-change``)."""
    before = (meta.get("data") or {}).get("hub")
    return {**now, "hub_before_resume": before} if before and before != now.get("hub") else now


def _saved_config(ckpt: Path, meta: dict[str, Any]) -> TrainingConfig:
    """The run's config as its checkpoint recorded it.

    A checkpoint from before ``packing`` existed was trained padded, so its config lacks the
    key and gets ``packing: false``, not today's default: the resumed run stays exact.
    """
    recorded = meta.get("config") or {}
    if isinstance(recorded, dict) and "packing" not in recorded:
        recorded = {**recorded, "packing": False}
    return TrainingConfig.from_dict(recorded, source=str(ckpt / META_FILE))


def _resumed_batches(
    ckpt: Path,
    run_cfg: TrainingConfig,
    adapter: Any,
    meta: dict[str, Any],
    state: dict[str, Any],
    warnings: list[str],
    cache: TokenCache | None = None,
) -> Any:
    """The run's data and samplers again, checked against what its checkpoint recorded.

    Raises:
        CheckpointError: If the batches would not be laid out as the run's were (its
            ``trainer_state.json`` names another sampler kind: packed vs padded).
    """
    corpus = load_data(run_cfg, adapter.tokenizer, (meta.get("data") or {}).get("hub"))
    if corpus.sha256 != (meta.get("data") or {}).get("sha256"):
        warnings.append(
            f"The training data ({corpus.source}) changed since the run started; the resumed "
            "run will not match an uninterrupted one."
        )
    block = min(run_cfg.block_size, adapter.max_context or run_cfg.block_size)
    batches = build_batches(corpus, adapter, run_cfg, block, meta.get("chat"), cache)
    warnings += batches.warnings
    recorded = (state.get("sampler") or {}).get("kind")
    kind = getattr(batches.train, "kind", "random-window")
    if recorded is not None and recorded != kind:
        raise CheckpointError(
            f"{ckpt} was trained on {str(recorded)[:40]} batches, but resuming it would make "
            f"{kind} batches (packed vs padded examples), so the run would not continue as "
            "it started. Nothing was written.",
            "Resume with the same data and model as the run started with, or start a new "
            "run from this checkpoint's weights with --init-from.",
        )
    return batches


def resume_trainer(
    ckpt: Path,
    cfg: TrainingConfig,
    explicit: set[str],
    workspace: Workspace,
    allow_base_mismatch: bool = False,
    processes: int | None = None,
    allow_data_change: bool = False,
    cache: TokenCache | None = None,
) -> tuple[Trainer, dict[str, Any], list[str], list[str]]:
    """A trainer positioned after ``ckpt``'s step: (trainer, meta, warnings, notes).

    ``cache``: the token cache tokenized records are looked up in (see :func:`build_batches`).

    Raises:
        CheckpointError: The checkpoint is incomplete or damaged, or does not fit the model.
        TrainingError: The model cannot fit in memory (checked before it is loaded).
        DataError: A hub dataset's revision moved (unless ``allow_data_change``).
    """
    warnings: list[str] = []
    check_complete(ckpt)
    run_dir = ckpt.parent.parent
    meta = load_meta(ckpt)
    state = load_state(ckpt)
    saved = _saved_config(ckpt, meta)
    changed = _changed_keys(cfg, saved, explicit)
    if changed:
        warnings.append(
            f"A resumed run keeps its original settings; ignoring the changed {', '.join(changed)}."
        )
    updates = {k: getattr(cfg, k) for k in RESUMABLE_KEYS if k in explicit}
    run_cfg = TrainingConfig.from_dict({**saved.to_dict(), **updates}, source="resumed config")
    # before the model is loaded: a moved dataset revision is refused at once
    warnings += check_hub_revisions((meta.get("data") or {}).get("hub"), allow_data_change)
    world = world_size(processes)
    precheck_memory(
        run_cfg,
        _resume_shape(workspace, ckpt, meta),
        processes=world,
        sharded=run_cfg.strategy == "fsdp" and world > 1,
    )
    sharded_ckpt = is_sharded(ckpt)
    if sharded_ckpt:  # the shards are loaded once the model is sharded itself
        adapter = skeleton(ckpt, meta)
    else:
        adapter, meta = load_checkpoint_adapter(
            ckpt, workspace, allow_base_mismatch=allow_base_mismatch, warnings=warnings
        )
    dist = join_run(run_cfg)
    run_cfg = fit_world_size(run_cfg, state, dist, warnings)
    batches = _resumed_batches(ckpt, run_cfg, adapter, meta, state, warnings, cache)
    module, optimizer = setup_training(adapter, run_cfg, dist)
    _restore(ckpt, adapter, optimizer, state, dist, sharded_ckpt)
    start = int(state["step"])
    notes, more = extend_schedule(run_cfg, saved, state, start)
    warnings += more
    meta = {**meta, "data": _resumed_data(meta, batches.meta), "config": run_cfg.to_dict()}
    for k in ("step", "train_loss", "val_loss"):
        meta.pop(k, None)
    trainer = Trainer(
        *(run_cfg, adapter, optimizer, batches.train, batches.val, run_dir, meta, state),
        sample_prompt=batches.sample_prompt,
        dist=dist,
        train_module=module,
    )
    trainer.state["step"] = start
    return trainer, meta, warnings, notes
