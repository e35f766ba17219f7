"""LoRA runs and their base model's identity.

A LoRA checkpoint holds only the adapter; the frozen base comes from the registry. So that an
adapter is never attached to another model than the one it was trained on, the checkpoint's
``meta.json`` records the base::

    "finetune": "lora",
    "lora": {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": [...], "parameters": N},
    "base": {"model_name": "qwen-base", "model_id": "Qwen/Qwen2-0.5B",
             "architecture": "qwen2", "manifest_sha256": "<64 hex>"}

``manifest_sha256`` is the sha256 of the base entry's file manifest (see
:func:`manifest_sha256`). Loading resolves the base by name, checks its files' sizes, recomputes
the hash from its registry entry and refuses a mismatch (a re-import under the same name, a
different revision...) unless the user passes ``--allow-base-mismatch``.

A LoRA checkpoint registered without ``--merge`` becomes an *adapter entry*: a registry model
whose folder holds the adapter and tokenizer files, with ``details["adapter"] == "lora"`` and
``fine_tuned_from`` = the base.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from llmforge.adapters import get_adapter, peft_lora
from llmforge.adapters.base import ModelAdapter
from llmforge.errors import CheckpointError, ConfigError, ModelNotFoundError
from llmforge.modeling.tokenizers import Tokenizer, load_tokenizer
from llmforge.store.model_files import require_model_files
from llmforge.store.registry import ModelEntry, ModelRegistry
from llmforge.workspace import Workspace

ALLOW_FLAG = "--allow-base-mismatch"


def manifest_sha256(entry: ModelEntry) -> str:
    """sha256 of the entry's manifest: the JSON list of ``[name, size, sha256]`` sorted by name.

    Exactly ``json.dumps(sorted([[name, size, sha256], ...]), separators=(",", ":"))``
    encoded as UTF-8; it changes whenever any file of the model changes.
    """
    rows = sorted([name, rec.size, rec.sha256] for name, rec in entry.files.items())
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode("utf-8")).hexdigest()


def base_identity(entry: ModelEntry) -> dict[str, Any]:
    """What a LoRA checkpoint records about its base."""
    return {
        "model_name": entry.model_name,
        "model_id": entry.model_id,
        "architecture": entry.architecture,
        "manifest_sha256": manifest_sha256(entry),
    }


def is_adapter_entry(entry: ModelEntry) -> bool:
    """Whether a registry entry is a LoRA adapter (it needs its base to be used)."""
    return entry.details.get("adapter") == "lora"


def check_base(
    ws: Workspace, base: dict[str, Any], what: str, *, allow_mismatch: bool = False
) -> tuple[ModelEntry, Path, list[str]]:
    """Find the base a LoRA adapter was trained on and make sure it is the same model.

    Args:
        ws: The workspace.
        base: The recorded identity (``model_name``, ``manifest_sha256``).
        what: The adapter, for messages (``the LoRA checkpoint runs/x/...``).
        allow_mismatch: Accept a base whose manifest hash differs (a warning is returned).

    Returns:
        ``(entry, folder, warnings)``.

    Raises:
        CheckpointError: If the identity is missing or the base is not registered.
        ModelFilesMissingError: If the base's files are missing or resized.
            Also (with a hint naming ``--allow-base-mismatch``) if the manifest hash differs
            and ``allow_mismatch`` is False.
    """
    name, expected = base.get("model_name"), base.get("manifest_sha256")
    if not isinstance(name, str) or not isinstance(expected, str):
        raise CheckpointError(
            f"{what} does not record which base model it belongs to.",
            "Its metadata is damaged; use another checkpoint of the run.",
        )
    registry = ModelRegistry(ws)
    try:
        entry = registry.get(name)
    except ModelNotFoundError as e:
        raise CheckpointError(
            f"{what} is a LoRA adapter of the model {name!r}, which is not in the registry.",
            f"Import that base model again under the name {name!r} "
            f"({base.get('model_id') or 'the same source'}), then retry. {e.hint}",
        ) from None
    if is_adapter_entry(entry):
        raise CheckpointError(
            f"{what} names {name!r} as its base, but that is itself a LoRA adapter.",
            "Its metadata is damaged; use another checkpoint of the run.",
        )
    folder = require_model_files(ws, entry)
    actual = manifest_sha256(entry)
    if actual == expected:
        return entry, folder, []
    message = (
        f"{what} was trained on the model {name!r} with manifest sha256 {expected[:16]}…, but "
        f"the registry's {name!r} now has {actual[:16]}… (its files differ: re-imported, "
        "another revision, or replaced with --force)."
    )
    if not allow_mismatch:
        raise CheckpointError(
            message + " Attaching the adapter to another base gives a model nobody trained.",
            f"Re-import the original base under {name!r}; or, if you know the two bases are "
            f"compatible, pass {ALLOW_FLAG} to use it anyway.",
        )
    return entry, folder, [message + f" Using it anyway ({ALLOW_FLAG})."]


def load_on_base(
    ws: Workspace,
    base: dict[str, Any],
    settings: dict[str, Any],
    weights: Path,
    tokenizer: Tokenizer | None,
    what: str,
    *,
    allow_mismatch: bool = False,
) -> tuple[ModelAdapter, list[str]]:
    """The base model with the LoRA adapter in ``weights`` attached (unmerged, trainable).

    The adapters are built exactly as a new run builds them (same modules, same parameter
    order), then their weights are loaded, so an optimizer state saved with them fits.
    """
    entry, folder, warnings = check_base(ws, base, what, allow_mismatch=allow_mismatch)
    adapter = get_adapter(entry.architecture).from_registry(entry, folder, tokenizer)
    peft_lora.attach(adapter, settings)
    peft_lora.load_weights(adapter, weights)
    return adapter, warnings


def load_checkpoint(
    ws: Workspace, path: Path, meta: dict[str, Any], *, allow_mismatch: bool = False
) -> tuple[ModelAdapter, list[str]]:
    """The model of a LoRA checkpoint: its base from the registry plus the saved adapter."""
    from llmforge.checkpoints.metadata import load_checkpoint_tokenizer

    settings = meta.get("lora")
    if not isinstance(settings, dict):
        raise CheckpointError(
            f"The LoRA checkpoint {path} records no LoRA settings.", "Use another checkpoint."
        )
    return load_on_base(
        ws,
        meta.get("base") or {},
        settings,
        path,
        load_checkpoint_tokenizer(path, meta),
        f"The LoRA checkpoint {path}",
        allow_mismatch=allow_mismatch,
    )


def load_adapter_entry(
    ws: Workspace, entry: ModelEntry, *, allow_mismatch: bool = False
) -> tuple[ModelAdapter, list[str]]:
    """The model of an adapter entry: its base plus the registered adapter."""
    folder = require_model_files(ws, entry)
    d = entry.details
    settings = {k: d.get(k) for k in ("r", "alpha", "dropout", "target_modules")}
    base = {"model_name": d.get("base"), "manifest_sha256": d.get("base_manifest_sha256")}
    kind = d.get("tokenizer_kind") or "native"
    tokenizer = load_tokenizer(folder, kind, entry.tokenizer or entry.model_id)
    return load_on_base(
        ws,
        base,
        settings,
        folder,
        tokenizer,
        f"The adapter model {entry.model_name!r}",
        allow_mismatch=allow_mismatch,
    )


def refuse_adapter_entry(entry: ModelEntry) -> None:
    """Fine-tuning starts from full weights: an adapter entry must be merged first.

    Raises:
        ConfigError: If ``entry`` is an adapter entry.
    """
    if is_adapter_entry(entry):
        ckpt = entry.details.get("checkpoint") or "its checkpoint"
        raise ConfigError(
            f"{entry.model_name!r} is a LoRA adapter of {entry.details.get('base')!r}, not a "
            "full model, so it cannot be fine-tuned directly.",
            f"Register {ckpt} with `llmforge ckpt register {ckpt} --name NEW --merge` and "
            "fine-tune NEW, or fine-tune the base.",
        )
