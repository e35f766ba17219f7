"""Setting up a training run: a new one, or the continuation of a checkpoint.

:func:`prepare_run` does every check before anything is written (config, model name, model
files, data), so bad input leaves the workspace untouched.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmforge.checkpoints.layout import latest_checkpoint
from llmforge.checkpoints.references import resolve_checkpoint
from llmforge.config import KIND_PHRASES, TrainingConfig
from llmforge.data.token_cache import TokenCache
from llmforge.errors import CheckpointError, ConfigError, TrainingError
from llmforge.fsutil import atomic_write_text
from llmforge.tracking.callback import Callback
from llmforge.tracking.metrics import MetricsWriter, truncate_metrics
from llmforge.tracking.reporting import RunInfo, RunTracker, check_report_to, run_tracker
from llmforge.training import run_lock
from llmforge.training.checkpointing import clean_temporaries
from llmforge.training.distributed import DistContext
from llmforge.training.memory import MemoryEstimate, check_memory, estimate_memory
from llmforge.training.new_run import branch_run, new_run, resolve_precision
from llmforge.training.resume import refuse_older, resume_trainer, world_size
from llmforge.training.run_folder import run_dir_for
from llmforge.training.run_summary import RunSummary, summarize
from llmforge.training.trainer import Trainer
from llmforge.workspace import Workspace


@dataclass
class PreparedRun:
    """A run ready to train.

    Attributes:
        trainer: The trainer, positioned at the first step to run.
        run_dir: ``runs/<run_name>``.
        resumed_from: The checkpoint it continues, or None for a new run.
        start_step: Steps already done.
        summary: What the run trains, for the start-up log; None for a dry run or a run that
            has nothing left to train (nothing was written for those).
        warnings: Things the user should know before training starts.
        memory: The memory estimate of one process.
        dist: This process's place in the job; the caller closes it after training.
        notes: Facts chosen for the user, for the start-up log (defaults, precision, schedule).
        lock: The run's lock, held by the process that writes the run (see :meth:`close`).
    """

    trainer: Trainer
    run_dir: Path
    resumed_from: Path | None
    start_step: int
    summary: RunSummary | None = None
    warnings: list[str] = field(default_factory=list)
    memory: MemoryEstimate | None = None
    dist: DistContext = field(default_factory=DistContext)
    notes: list[str] = field(default_factory=list)
    lock: run_lock.RunLock | None = None

    @property
    def finished(self) -> bool:
        """The run already did its ``max_steps``: nothing to train, nothing was written."""
        return self.start_step >= self.trainer.cfg.max_steps

    def close(self) -> None:
        """Close the trackers, release the run's lock and leave the process group. Idempotent."""
        for cb in self.trainer.callbacks:  # trackers flush and finish before the lock goes
            close = getattr(cb, "close", None)
            if close is not None:
                close()
        if self.lock is not None:
            self.lock.release()
        # DDP's reducer holds the process group from C++ and is freed with the GIL held. Were
        # it the group's last owner, gloo's destructor would join its worker threads while one
        # of them waits for the GIL to free a finished collective's tensors: a deadlock at exit
        # (pytorch/pytorch#56297). Free the wrapper while the group is still registered, so
        # the group itself goes last, through destroy_process_group, which releases the GIL.
        self.trainer.train_module = None
        gc.collect()
        self.dist.close()


def _start_notes(cfg: TrainingConfig) -> list[str]:
    """What llmforge chose for a new run that the user did not set."""
    notes = []
    chosen = cfg.chosen_defaults
    why = chosen.pop("precision", None)
    if why:
        masters = " with fp32 master weights" if cfg.bf16_params else ""
        notes.append(f"Precision: {cfg.precision}{masters} (precision {why}).")
    if chosen:
        # rates as the training log shows them (lr 2.0e-05), other numbers plainly
        parts = [
            f"{k} {getattr(cfg, k):.1e} ({reason})"
            if k.endswith("lr") or k == "learning_rate"
            else f"{k} {getattr(cfg, k):g} ({reason})"
            for k, reason in chosen.items()
        ]
        notes.append(
            f"Not set in the config, so chosen for {KIND_PHRASES[cfg.kind]}: {'; '.join(parts)}."
        )
    return notes


def _check_stop_at(stop_at: int | None, start: int, max_steps: int) -> None:
    if stop_at is None or start < stop_at <= max_steps:
        return
    now = f"after the step the run resumes from ({start}) and " if start else ""
    raise ConfigError(
        f"--stop-at {stop_at} is not a step this run will reach: it must be {now}from "
        f"{start + 1} to max_steps ({max_steps}).",
        f"Give a step from {start + 1} to {max_steps}, or raise --max-steps.",
    )


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
    stop_at: int | None = None,
    allow_data_change: bool = False,
) -> PreparedRun:
    """Build everything a run needs, resuming from a checkpoint when asked.

    Every check runs before anything is written: the run's lock (another process training
    it is refused at once), the paths (inside the workspace), the checkpoint (no resume from
    an older one), the memory estimate (from the model's config, before it is built), the
    model, the data. Then the process that writes the run takes its lock (released by
    :meth:`PreparedRun.close`, or by the OS if the process dies).

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
        dry_run: Build everything and estimate memory, but write nothing (no ``summary``).
        processes: Estimate memory per process for a job of this many processes (a dry run
            of ``--nproc N`` runs in one process); default: this job's.
        stop_at: The step ``--stop-at`` pauses at (checked against the run's steps).
        allow_data_change: Resume even though a hub dataset's revision moved (a warning).

    Raises:
        ConfigError, ModelNotFoundError, ModelFilesMissingError, DataError, CheckpointError,
        TrainingError, RunLockedError, UnsafePathError: Before anything is written.
    """
    explicit = explicit_keys if explicit_keys is not None else set(cfg.model_fields_set)
    _refuse_flags(cfg, resume, init_from, branch_name, stop_at)
    built = _build(
        workspace,
        cfg,
        resume,
        explicit,
        init_from,
        branch_name,
        allow_base_mismatch,
        processes,
        allow_data_change=allow_data_change,
    )
    trainer = built.trainer
    prepared = PreparedRun(
        trainer,
        built.run_dir,
        built.resumed_from,
        int(trainer.state.get("step", 0)),
        warnings=built.warnings,
        memory=run_memory_estimate(trainer, processes),
        dist=trainer.dist,
        notes=built.notes,
    )
    if dry_run or prepared.finished:
        return prepared  # nothing to train: nothing is written
    _refuse_what_cannot_run(prepared, stop_at)
    _create_run(workspace, prepared, built, callbacks)
    prepared.summary = summarize(trainer, built.run_dir, built.meta, built.resumed_from)
    return prepared


def _refuse_flags(
    cfg: TrainingConfig,
    resume: str | None,
    init_from: str | None,
    branch_name: str | None,
    stop_at: int | None,
) -> None:
    """Refuse flags that do not go together, before anything is loaded."""
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
    if stop_at is not None and (stop_at < 1 or (resume is None and stop_at > cfg.max_steps)):
        _check_stop_at(stop_at, 0, cfg.max_steps)


@dataclass
class _Built:
    """A run's trainer and what was learnt building it (nothing written yet)."""

    trainer: Trainer
    meta: dict[str, Any]  # the run's meta.json content
    warnings: list[str]
    notes: list[str]
    run_dir: Path
    resumed_from: Path | None = None
    branch_source: Path | None = None  # the checkpoint a new branch starts from
    branch_name: str | None = None
    cache: TokenCache | None = None  # tokenized records, written once the run exists


def _build(
    workspace: Workspace,
    cfg: TrainingConfig,
    resume: str | None,
    explicit: set[str],
    init_from: str | None,
    branch_name: str | None,
    allow_base_mismatch: bool,
    processes: int | None,
    allow_data_change: bool = False,
) -> _Built:
    """The trainer of a resumed, branched or new run, every check passed, nothing written."""
    cache = TokenCache(workspace.root)
    if resume is not None:
        resumed_from = _resume_target(workspace, cfg, resume)
        trainer, meta, warnings, notes = resume_trainer(
            resumed_from,
            cfg,
            explicit,
            workspace,
            allow_base_mismatch,
            processes,
            allow_data_change,
            cache,
        )
        notes += [n for n in (cache.note(),) if n]
        return _Built(trainer, meta, warnings, notes, trainer.run_dir, resumed_from, cache=cache)
    world = world_size(processes)
    run_dir = run_dir_for(workspace, cfg)
    run_lock.check_free(run_dir)
    source = None
    if init_from is not None and branch_name is not None:
        source = resolve_checkpoint(workspace, init_from, run_dir.parent)
        (trainer, meta), warnings = branch_run(
            workspace, cfg, run_dir, source, branch_name, world, cache
        )
    else:
        (trainer, meta), warnings = new_run(
            workspace, resolve_precision(cfg), run_dir, world, cache
        )
    warnings = [*trainer.cfg.notes, *warnings]
    notes = _start_notes(trainer.cfg) + [n for n in (cache.note(),) if n]
    return _Built(trainer, meta, warnings, notes, run_dir, None, source, branch_name, cache)


def _refuse_what_cannot_run(prepared: PreparedRun, stop_at: int | None) -> None:
    """Refuse a ``--stop-at`` the run never reaches, and a run that cannot fit in memory."""
    trainer = prepared.trainer
    _check_stop_at(stop_at, prepared.start_step, trainer.cfg.max_steps)
    check_report_to(trainer.cfg.report_to)  # a tracker's package missing: nothing written yet
    # Refuse a run that cannot fit, before it exists. CPU processes share the machine's memory.
    dist = trainer.dist
    assert prepared.memory is not None
    check_memory(
        prepared.memory,
        trainer.cfg,
        sharers=dist.local_world_size if dist.device.type == "cpu" else 1,
    )


def _create_run(
    workspace: Workspace,
    prepared: PreparedRun,
    built: _Built,
    callbacks: list[Callback] | None,
) -> None:
    """Take the run's lock and write it: from here on the run exists on disk.

    Rank 0 alone touches the registry (a branch is registered as its model) and the run folder
    (``config.yaml``, the metrics file, what a crashed save left); the others wait for it.
    """
    trainer, dist, run_dir, meta = built.trainer, built.trainer.dist, built.run_dir, built.meta
    dist.barrier()  # every rank passed every check before rank 0 writes anything
    prepared.lock = _take_lock(dist, run_dir)
    if prepared.lock is not None and (stale := run_lock.stale_note(prepared.lock)):
        prepared.notes.append(stale)
    if dist.is_main:
        if built.branch_source is not None and built.branch_name is not None:
            from llmforge.checkpoints.register import register_checkpoint

            entry = register_checkpoint(workspace, str(built.branch_source), built.branch_name)
            meta["model_disk_bytes"] = entry.disk_bytes
        run_dir.mkdir(parents=True, exist_ok=True)
        if built.cache is not None:
            built.cache.commit()
        clean_temporaries(run_dir)
        truncate_metrics(run_dir, prepared.start_step)
        atomic_write_text(
            run_dir / "config.yaml", yaml.safe_dump(trainer.cfg.to_dict(), sort_keys=False)
        )
        tracker = _run_tracker(workspace, trainer, run_dir, prepared.start_step)
        trainer.callbacks = [MetricsWriter(run_dir), *(callbacks or []), tracker]
    if built.branch_source is not None:  # every rank's checkpoints record the same size
        meta["model_disk_bytes"] = dist.broadcast(meta.get("model_disk_bytes"))
    dist.barrier()


def _run_tracker(workspace: Workspace, trainer: Trainer, run_dir: Path, start: int) -> RunTracker:
    """Rank 0's status recorder and ``report_to`` reporters, started (llmforge.tracking)."""
    cfg, dist = trainer.cfg, trainer.dist
    tokens = cfg.batch_size * cfg.grad_accum_steps * dist.world_size
    info = RunInfo(
        run_name=run_dir.name,
        run_dir=run_dir,
        workspace_root=workspace.root,
        start_step=start,
        max_steps=cfg.max_steps,
        hparams=cfg.to_dict(),
        model_name=trainer.meta.get("model_name"),
        tokens_per_step=tokens * trainer.train_sampler.block_size,
        world_size=dist.world_size,
    )
    return run_tracker(info, list(cfg.report_to))


def _resume_target(workspace: Workspace, cfg: TrainingConfig, resume: str) -> Path:
    """The checkpoint ``--resume`` names, once its run is known to be free and it is the
    run's newest (a resume never overwrites newer checkpoints)."""
    if resume == "latest":
        run_dir = run_dir_for(workspace, cfg)
        run_lock.check_free(run_dir)
        latest = latest_checkpoint(run_dir)
        if latest is None:
            raise CheckpointError(
                f"--resume latest: the run {run_dir.name!r} has no checkpoint in {run_dir}.",
                "Start it without --resume, or name the checkpoint or run to continue "
                "(`llmforge ckpt list` shows them).",
            )
        return latest
    found = resolve_checkpoint(workspace, resume, run_dir_for(workspace, cfg).parent)
    # its run is written to: it must be in the workspace (a path is taken from the cwd)
    found = workspace.inside(found.absolute(), "the checkpoint to resume")
    run_lock.check_free(found.parent.parent)
    refuse_older(found, resume)
    return found


def _take_lock(dist: DistContext, run_dir: Path) -> run_lock.RunLock | None:
    """Rank 0 (the one process that writes the run) takes its lock; all ranks agree."""
    lock, refusal = None, None
    if dist.is_main:
        try:
            lock = run_lock.acquire(run_dir)
        except TrainingError as e:
            refusal = e
    if dist.any(refusal is not None):
        if refusal is not None:
            raise refusal
        raise TrainingError("Rank 0 could not take the run's lock.", "See rank 0's message.")
    return lock


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
