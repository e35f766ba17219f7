"""Registering a checkpoint as a registry model (``ckpt register``, ``train --init-from``).

Registering turns a checkpoint into a self-contained model folder ``models/<name>/``: the
model files (a Hugging Face folder, or ``model.safetensors`` + ``config.json`` for the
custom Transformer) with the tokenizer files beside them. Files are hard-linked to the
checkpoint's where the filesystem allows (checkpoints are never written in place: a new
save goes to a fresh directory), so registering costs no disk. The folder is staged under
``models/.staging/`` and renamed into place in the registry transaction that adds the entry
(:func:`llmforge.store.commit.commit_staged`), so a failure leaves the registry as it was.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from llmforge.adapters import peft_lora
from llmforge.checkpoints import lora_base as lora_run
from llmforge.checkpoints import manifest
from llmforge.checkpoints.layout import (
    META_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    TOKENIZER_DIR,
    check_complete,
)
from llmforge.checkpoints.listing import _rel
from llmforge.checkpoints.metadata import load_meta
from llmforge.checkpoints.references import resolve_checkpoint
from llmforge.checkpoints.sharded import is_sharded, load_consolidated
from llmforge.errors import CheckpointError, LLMForgeError, ModelExistsError
from llmforge.fsutil import write_failure_reason
from llmforge.store import blobs, lineage
from llmforge.store.commit import commit_staged
from llmforge.store.model_files import build_manifest
from llmforge.store.registry import ModelEntry, ModelRegistry, check_model_name, name_taken_error
from llmforge.workspace import Workspace

# Files of a checkpoint that are training state, not the model.
_NOT_MODEL = {
    META_FILE,
    STATE_FILE,
    OPTIMIZER_FILE,
    TOKENIZER_DIR,
    manifest.MANIFEST_FILE,
}


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
    tok_dir = path / TOKENIZER_DIR
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
    check_complete(path, full=True)  # its bytes become a model: every sha256 is compared
    meta = load_meta(path)
    if not isinstance(meta.get("architecture"), str):
        raise CheckpointError(
            f"{path / META_FILE} names no architecture.", "Use another checkpoint."
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
    if is_sharded(path):
        rebuilt = load_consolidated(path)[0]
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
    had_staging = (ws.models_dir / blobs.STAGING).exists()
    staging = blobs.new_staging_dir(ws, name)
    try:
        if merged is not None or rebuilt is not None:
            (merged or rebuilt).save(staging)
            for rel, src in model_files(path).items():
                if src.is_relative_to(path / TOKENIZER_DIR):
                    blobs.link_or_copy(src, staging / rel)
        else:
            for rel, src in model_files(path).items():
                blobs.link_or_copy(src, staging / rel)
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
        blobs.discard(staging)
        if not had_staging:  # a failed register leaves models/ as it was
            with contextlib.suppress(OSError):
                staging.parent.rmdir()
        if isinstance(e, Exception) and not isinstance(e, LLMForgeError):
            # a full disk, or safetensors' own error for it
            raise CheckpointError(
                f"Could not register {path} as {name!r}: {write_failure_reason(e)}. Nothing was "
                "registered: registry.json and models/ are as they were.",
                "Free some disk space, then run the command again.",
            ) from e
        raise
    blobs.discard(staging)
    return entry
