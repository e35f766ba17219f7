"""Operations on checkpoints: list them, describe one, register one as a registry model.

Registering turns a checkpoint into a self-contained model folder ``models/<name>/``: the
model files (a Hugging Face folder, or ``model.safetensors`` + ``config.json`` for the
custom Transformer) with the tokenizer files beside them. Files are hard-linked to the
checkpoint's where the filesystem allows (checkpoints are never written in place: a new
save goes to a fresh directory), so registering costs no disk. The folder is staged under
``models/.staging/`` and renamed into place in the registry transaction that adds the entry
(:func:`llmforge.importer.commit_staged`), so a failure leaves the registry as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmforge import store
from llmforge.adapters import lora as peft_lora
from llmforge.errors import CheckpointError, LLMForgeError, ModelExistsError, WorkspaceError
from llmforge.importer import commit_staged
from llmforge.modelops import build_manifest
from llmforge.registry import ModelEntry, ModelRegistry, check_model_name, name_taken_error
from llmforge.training import checkpoint as ck
from llmforge.training import ckpt_manifest, lineage, sharded
from llmforge.training import lora as lora_run
from llmforge.training.runs import resolve_checkpoint
from llmforge.untrusted import brief
from llmforge.workspace import Workspace

# Files of a checkpoint that are training state, not the model.
_NOT_MODEL = {
    ck.META_FILE,
    ck.STATE_FILE,
    ck.OPTIMIZER_FILE,
    ck.TOKENIZER_DIR,
    ckpt_manifest.MANIFEST_FILE,
}
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_DISK_FULL_TEXTS = ("No space left", "File too large", "Disk quota", "os error 27", "os error 28")


def write_failure(e: BaseException) -> str:
    """Why a write failed, for a message: the OS's words, and whether the disk may be full.

    safetensors and torch wrap I/O errors in their own exception types, so their text is
    searched for the disk-full errors too.
    """
    if isinstance(e, OSError):
        cause, full = e.strerror or str(e), e.errno in _DISK_FULL_ERRNOS
    else:
        cause = brief(str(e), 200).strip("'\"")
        full = any(t in cause for t in _DISK_FULL_TEXTS)
    return cause + (" (is the disk full, or a file-size limit reached?)" if full else "")


@dataclass
class CheckpointSummary:
    """One row of ``llmforge ckpt list``.

    Attributes:
        path: The checkpoint directory.
        run: The run it belongs to.
        step: Optimizer steps done.
        meta: Its ``meta.json`` (empty when unreadable).
        created: When it was written (the mtime of ``meta.json``, which is written last).
        size: Bytes on disk.
    """

    path: Path
    run: str
    step: int
    meta: dict[str, Any]
    created: datetime
    size: int


@dataclass
class CheckpointInfo:
    """What ``llmforge ckpt info`` shows.

    Attributes:
        summary: The list row.
        state: ``trainer_state.json`` facts (step, best validation loss, losses recorded).
        registered_as: Registry models made from this checkpoint.
        files: Relative file names with sizes.
        integrity: What comparing it with its manifest found (sizes and small files).
    """

    summary: CheckpointSummary
    state: dict[str, Any]
    registered_as: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    integrity: str = ""


def _summary(path: Path) -> CheckpointSummary:
    try:
        meta = ck.load_meta(path)
    except CheckpointError:
        meta = {}
    mtime = (path / ck.META_FILE).stat().st_mtime if (path / ck.META_FILE).exists() else 0.0
    return CheckpointSummary(
        path=path,
        run=path.parent.parent.name,
        step=int(path.name.split("-")[1]),
        meta=meta,
        created=datetime.fromtimestamp(mtime, timezone.utc).replace(microsecond=0),
        size=ck.checkpoint_bytes(path),
    )


def list_all(ws: Workspace, run: str | None = None) -> list[CheckpointSummary]:
    """Every complete checkpoint under ``runs/`` (or of one run), by run then step.

    Raises:
        CheckpointError: If ``run`` is given and no such run exists.
    """
    runs_dir = ws.runs_dir
    if os.path.lexists(runs_dir) and not runs_dir.is_dir():
        raise WorkspaceError(
            f"{runs_dir} is a file, not a folder; llmforge keeps training runs and their "
            "checkpoints there.",
            "Move or rename that file (llmforge creates runs/ when a run starts).",
        )
    runs = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    if run is not None:
        if not (runs_dir / run / ck.CHECKPOINTS).is_dir():
            names = ", ".join(p.name for p in runs) or "none"
            raise CheckpointError(
                f"No run named {run!r} in {runs_dir}.", f"Runs in this workspace: {names}."
            )
        runs = [runs_dir / run]
    return [_summary(p) for r in runs for p in ck.list_checkpoints(r)]


def checkpoint_info(ws: Workspace, ref: str) -> CheckpointInfo:
    """Metadata, trainer state, files and registrations of one checkpoint.

    Raises:
        CheckpointError: If ``ref`` matches no complete checkpoint.
    """
    path = resolve_checkpoint(ws, ref)
    ck.check_complete(path)
    summary = _summary(path)
    if not summary.meta:
        ck.load_meta(path)  # raises the precise error
    raw = ck.read_json(path / ck.STATE_FILE)
    state = {
        "step": raw.get("step"),
        "best_val_loss": raw.get("best_val_loss"),
        "losses_recorded": len(raw.get("losses", [])),
        "elapsed_s": round(float(raw.get("elapsed", 0.0)), 1),
    }
    registered = [
        e.model_name
        for e in ModelRegistry(ws).list()
        if e.details.get("checkpoint") in (str(path), _rel(ws, path))
    ]
    files = {
        p.relative_to(path).as_posix(): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }
    integrity = ckpt_manifest.check_manifest(path).status  # check_complete refused damage
    return CheckpointInfo(summary, state, registered, files, integrity)


def _rel(ws: Workspace, path: Path) -> str:
    with contextlib.suppress(ValueError):
        return path.resolve().relative_to(ws.root.resolve()).as_posix()
    return str(path)


def model_files(path: Path) -> dict[str, Path]:
    """The files that make a checkpoint a standalone model folder: ``{name: source}``.

    The adapter's files keep their names; the tokenizer's files move from ``tokenizer/``
    to the top level, where ``from_pretrained`` and the registry adapters look for them.

    Raises:
        CheckpointError: If a tokenizer file would clash with a model file.
    """
    out = {
        p.relative_to(path).as_posix(): p
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.relative_to(path).parts[0] not in _NOT_MODEL
    }
    tok_dir = path / ck.TOKENIZER_DIR
    for p in sorted(tok_dir.rglob("*")):
        if p.is_file():
            rel = p.relative_to(tok_dir).as_posix()
            if rel in out:
                raise CheckpointError(
                    f"The tokenizer file {rel} of {path} has the name of a model file.",
                    "This checkpoint cannot be turned into a single model folder.",
                )
            out[rel] = p
    return out


def register_checkpoint(
    ws: Workspace,
    ref: str,
    name: str,
    *,
    force: bool = False,
    merge: bool = False,
    allow_base_mismatch: bool = False,
    warnings: list[str] | None = None,
) -> ModelEntry:
    """Register a checkpoint as the model ``name`` (source ``fine-tune``).

    A LoRA checkpoint becomes an *adapter entry* (the adapter and tokenizer files;
    ``fine_tuned_from`` and ``details["base"]`` name the base, whose identity is checked), or
    with ``merge`` a full model whose weights are the base's with the adapter folded in.

    Args:
        ws: The workspace.
        ref: A checkpoint reference (path, ``RUN``, ``RUN/step-N``).
        name: The new model name.
        force: Replace an existing model of that name (never one of the checkpoint's own
            ancestors).
        merge: For a LoRA checkpoint: register the merged full model instead of the adapter.
        allow_base_mismatch: Accept a LoRA checkpoint whose base model's files changed.
        warnings: Receives the warning about an accepted base mismatch.

    Returns:
        The registered entry.

    Raises:
        InvalidModelNameError, ModelExistsError, CheckpointError: Before anything is written.
        CheckpointError: If writing fails (a full disk); nothing is registered then.
    """
    check_model_name(name)
    path = resolve_checkpoint(ws, ref)
    ck.check_complete(path, full=True)  # its bytes become a model: every sha256 is compared
    meta = ck.load_meta(path)
    if not isinstance(meta.get("architecture"), str):
        raise CheckpointError(
            f"{path / ck.META_FILE} names no architecture.", "Use another checkpoint."
        )
    chain = [str(x) for x in meta.get("lineage") or []]
    names, origin = lineage.split(chain)
    registry = ModelRegistry(ws)
    registry.check_writable()
    if name in names:
        raise ModelExistsError(
            f"{name!r} is in the lineage of {path}; registering the checkpoint under that name "
            "would make the model its own ancestor.",
            "Choose a new name with --name.",
        )
    if registry.exists(name) and not force:
        raise name_taken_error(name)
    is_lora = meta.get("finetune") == "lora"
    if merge and not is_lora:
        raise CheckpointError(
            f"--merge folds a LoRA adapter into its base, but {path} holds full weights.",
            "Register it without --merge.",
        )
    merged = None
    lora_details: dict[str, Any] = {}
    rebuilt = None  # a sharded (FSDP) checkpoint's model, consolidated in memory
    if sharded.is_sharded(path):
        rebuilt = sharded.load_consolidated(path)[0]
    if is_lora:
        what = f"The LoRA checkpoint {path}"
        base = meta.get("base") or {}
        if merge:
            merged, notes = lora_run.load_checkpoint(
                ws, path, meta, allow_mismatch=allow_base_mismatch
            )
            peft_lora.merge(merged)
        else:
            _, _, notes = lora_run.check_base(ws, base, what, allow_mismatch=allow_base_mismatch)
        if warnings is not None:
            warnings.extend(notes)
        settings = meta.get("lora") or {}
        lora_details = {
            "adapter": "lora",
            "base": base.get("model_name"),
            "r": settings.get("r"),
            "alpha": settings.get("alpha"),
            "dropout": settings.get("dropout"),
            "target_modules": settings.get("target_modules"),
            "base_manifest_sha256": base.get("manifest_sha256"),
        }
    parent = meta.get("model_name")
    license_label = meta.get("license")
    if license_label is None and parent and registry.exists(parent):
        license_label = registry.get(parent).license
    had_staging = (ws.models_dir / store.STAGING).exists()
    staging = store.new_staging_dir(ws, name)
    try:
        if merged is not None or rebuilt is not None:
            (merged or rebuilt).save(staging)
            for rel, src in model_files(path).items():
                if src.is_relative_to(path / ck.TOKENIZER_DIR):
                    store.link_or_copy(src, staging / rel)
        else:
            for rel, src in model_files(path).items():
                store.link_or_copy(src, staging / rel)
        manifest = build_manifest(staging)
        num_parameters = (meta.get("model") or {}).get("parameters")
        if merged is not None:
            num_parameters = merged.num_parameters()
            lora_details = {"merged_lora": lora_details}
        elif is_lora:
            num_parameters = (meta.get("lora") or {}).get("parameters")
        tok = meta.get("tokenizer") or {}
        entry = ModelEntry(
            model_name=name,
            model_id=meta.get("model_id"),
            source="fine-tune",
            architecture=str(meta.get("architecture")),
            local_path=name,
            files=manifest,
            num_parameters=num_parameters,
            disk_bytes=sum(f.size for f in manifest.values()),
            license=license_label,
            fine_tuned_from=parent,
            tokenizer=tok.get("identifier"),
            details={
                "checkpoint": _rel(ws, path),
                "run": meta.get("run_name") or path.parent.parent.name,
                "step": meta.get("step"),
                "train_loss": meta.get("train_loss"),
                "val_loss": meta.get("val_loss"),
                "tokenizer_kind": tok.get("kind"),
                "fine_tune_started_at": meta.get("fine_tune_started_at"),
                "origin": origin,
                **lora_details,
            },
        )
        commit_staged(ws, registry, entry, staging, force)
    except BaseException as e:
        store.discard(staging)
        if not had_staging:  # a failed register leaves models/ as it was
            with contextlib.suppress(OSError):
                staging.parent.rmdir()
        if isinstance(e, Exception) and not isinstance(e, LLMForgeError):
            # a full disk, or safetensors' own error for it
            raise CheckpointError(
                f"Could not register {path} as {name!r}: {write_failure(e)}. Nothing was "
                "registered: registry.json and models/ are as they were.",
                "Free some disk space, then run the command again.",
            ) from e
        raise
    store.discard(staging)
    return entry
