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

from llmforge.adapters import known_architectures
from llmforge.checkpoints.layout import META_FILE, check_complete
from llmforge.checkpoints.metadata import load_meta
from llmforge.checkpoints.references import resolve_checkpoint, workspace_relative
from llmforge.checkpoints.standalone import StandaloneModel, standalone_model
from llmforge.data.hub_data import hub_entries, lineage_text
from llmforge.errors import CheckpointError, LLMForgeError, ModelExistsError
from llmforge.fsutil import write_failure_reason
from llmforge.store import blobs, lineage
from llmforge.store.commit import commit_staged
from llmforge.store.model_files import build_manifest
from llmforge.store.registry import (
    FileRecord,
    ModelEntry,
    ModelRegistry,
    check_model_name,
    name_taken_error,
)
from llmforge.untrusted import brief
from llmforge.workspace import Workspace


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
    registry = ModelRegistry(ws)
    _refuse(registry, path, meta, name, force=force, merge=merge)
    model = standalone_model(
        ws, path, meta, merge=merge, allow_base_mismatch=allow_base_mismatch, check_base=True
    )
    if warnings is not None:
        warnings.extend(model.notes)
    return _stage_and_commit(ws, registry, path, meta, name, model, force)


def _refuse(
    registry: ModelRegistry,
    path: Path,
    meta: dict[str, Any],
    name: str,
    *,
    force: bool,
    merge: bool,
) -> None:
    """Refuse, before anything is loaded or written, a register that cannot succeed."""
    if not isinstance(meta.get("architecture"), str):
        raise CheckpointError(
            f"{path / META_FILE} names no architecture.", "Use another checkpoint."
        )
    if meta["architecture"] not in known_architectures():
        raise CheckpointError(
            f"{path / META_FILE} names the architecture {brief(meta['architecture'])}, which "
            "no installed adapter handles, so the registered model could never be loaded.",
            f"Known architectures: {', '.join(known_architectures())}. Install the package "
            "that provides the adapter (docs/adapters.md), or use another checkpoint.",
        )
    names, _ = lineage.split([str(x) for x in meta.get("lineage") or []])
    registry.check_writable()
    if name in names:
        raise ModelExistsError(
            f"{name!r} is in the lineage of {path}; registering the checkpoint under that name "
            "would make the model its own ancestor.",
            "Choose a new name with --name.",
        )
    if registry.exists(name) and not force:
        raise name_taken_error(name)
    if merge and meta.get("finetune") != "lora":
        raise CheckpointError(
            f"--merge folds a LoRA adapter into its base, but {path} holds full weights.",
            "Register it without --merge.",
        )


def _stage_and_commit(
    ws: Workspace,
    registry: ModelRegistry,
    path: Path,
    meta: dict[str, Any],
    name: str,
    model: StandaloneModel,
    force: bool,
) -> ModelEntry:
    """Write the model folder under ``models/.staging/`` and commit it with its entry.

    Raises:
        CheckpointError: If writing fails (a full disk); ``models/`` is then as it was.
    """
    license_label = meta.get("license")
    parent = meta.get("model_name")
    if license_label is None and parent and registry.exists(parent):
        license_label = registry.get(parent).license
    had_staging = (ws.models_dir / blobs.STAGING).exists()
    staging = blobs.new_staging_dir(ws, name)
    try:
        model.write(staging, blobs.link_or_copy)  # hard links: registering costs no disk
        entry = _entry(ws, path, meta, name, model, build_manifest(staging), license_label)
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


def _entry(
    ws: Workspace,
    path: Path,
    meta: dict[str, Any],
    name: str,
    model: StandaloneModel,
    files: dict[str, FileRecord],
    license_label: str | None,
) -> ModelEntry:
    """The registry entry of the checkpoint's model (source ``fine-tune``)."""
    details = _lora_details(meta) if model.is_lora else {}
    num_parameters = (meta.get("model") or {}).get("parameters")
    if model.merged and model.model is not None:
        num_parameters = model.model.num_parameters()
        details = {"merged_lora": details}
    elif model.is_lora:
        num_parameters = (meta.get("lora") or {}).get("parameters")
    tok = meta.get("tokenizer") or {}
    _, origin = lineage.split([str(x) for x in meta.get("lineage") or []])
    return ModelEntry(
        model_name=name,
        model_id=meta.get("model_id"),
        source="fine-tune",
        architecture=str(meta.get("architecture")),
        local_path=name,
        files=files,
        num_parameters=num_parameters,
        disk_bytes=sum(f.size for f in files.values()),
        license=license_label,
        fine_tuned_from=meta.get("model_name"),
        tokenizer=tok.get("identifier"),
        details={
            "checkpoint": workspace_relative(ws, path),
            "run": meta.get("run_name") or path.parent.parent.name,
            "step": meta.get("step"),
            "train_loss": meta.get("train_loss"),
            "val_loss": meta.get("val_loss"),
            "tokenizer_kind": tok.get("kind"),
            "fine_tune_started_at": meta.get("fine_tune_started_at"),
            "origin": origin,
            **{f"data_{k}": lineage_text(v) for k, v in hub_entries(meta).items()},
            # the same, whole: what a GGUF export of the model records (general.dataset.N.*)
            **({"data_hub": hub_entries(meta)} if hub_entries(meta) else {}),
            **details,
        },
    )


def _lora_details(meta: dict[str, Any]) -> dict[str, Any]:
    """What an adapter entry records about its LoRA settings and its base."""
    settings, base = meta.get("lora") or {}, meta.get("base") or {}
    return {
        "adapter": "lora",
        "base": base.get("model_name"),
        "r": settings.get("r"),
        "alpha": settings.get("alpha"),
        "dropout": settings.get("dropout"),
        "target_modules": settings.get("target_modules"),
        "base_manifest_sha256": base.get("manifest_sha256"),
    }
