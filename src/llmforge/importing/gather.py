"""What both import sources share while they fill the staging folder.

A source (:mod:`~llmforge.importing.from_hub`, :mod:`~llmforge.importing.from_folder`) reads
what it offers into a :class:`Candidate` without writing anything; then both follow one
sequence: :func:`consent` shows the plan, checks the size against the free disk space and asks
about the license, and only then opens the staging folder; the source puts its files there;
:func:`finish` converts pickled weights to safetensors, checks that the files fit together and
builds the entry to register.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from llmforge.errors import InvalidSourceError
from llmforge.importing.file_selection import FileSelection
from llmforge.importing.licensing import LicenseInfo
from llmforge.importing.model_check import check_model_files, check_tokenizer
from llmforge.importing.pickled_weights import convert_pickled
from llmforge.importing.plan import (
    ImportHooks,
    ImportPlan,
    ImportRequest,
    accept_license,
    check_size,
)
from llmforge.importing.undo import ImportWork
from llmforge.store import blobs
from llmforge.store.registry import FileRecord, ModelEntry
from llmforge.store.safetensors_header import count_parameters
from llmforge.workspace import Workspace


def check_selection(sel: FileSelection, where: str) -> None:
    """Refuse a selection that is not a Hugging Face model (no config.json, no usable weights).

    Raises:
        InvalidSourceError: Naming what is missing.
    """
    names = {f.path for f in sel.files}
    if "config.json" not in names:
        raise InvalidSourceError(
            f"{where} has no config.json, so it is not a model in Hugging Face format.",
            "Import a transformers model repository or folder (config.json, weights, tokenizer).",
        )
    if not sel.pickled_weights and not any(n.endswith(".safetensors") for n in names):
        raise InvalidSourceError(
            f"{where} has no weights llmforge can use (*.safetensors, or pytorch_model*.bin).",
            "GGUF, ONNX and other runtime formats are not imported; pick the original "
            "transformers repository.",
        )


def is_pickled(name: str, sel: FileSelection) -> bool:
    """Whether the selected file ``name`` is pickled weights (or their index) to convert."""
    return sel.pickled_weights and (name.endswith(".bin") or name.endswith(".bin.index.json"))


@dataclass(frozen=True)
class Candidate:
    """What a source offers, read and checked before the user consents (nothing written).

    Attributes:
        model_id: The hub id, or the folder.
        revision: The commit sha (hub), or None.
        source: The registry's ``source``: ``huggingface`` or ``local``.
        architecture: The config.json ``model_type`` (an importable one).
        selection: The files the import takes.
        config: The parsed config.json.
        license: What the card and license file say.
        where: The model, for messages (``'Qwen/Qwen2-0.5B'``, a folder).
    """

    model_id: str
    revision: str | None
    source: str
    architecture: str
    selection: FileSelection
    config: dict[str, Any]
    license: LicenseInfo
    where: str


def consent(
    ws: Workspace,
    req: ImportRequest,
    name: str,
    work: ImportWork,
    hooks: ImportHooks,
    cand: Candidate,
    *,
    download_bytes: int,
    new_bytes: int,
) -> tuple[Path, datetime]:
    """Plan, size, license: the steps before an import's first write; then open its staging.

    Args:
        ws: The workspace.
        req: What the user asked (``--accept-license``).
        name: The registry name.
        work: Where the import may write, once consented.
        hooks: Receive the plan and the size warning; ask about the license.
        cand: What the source offers.
        download_bytes: The bytes to download (not in the hub cache yet), for the plan.
        new_bytes: The bytes the import newly writes to the disk (before conversion).

    Returns:
        The staging folder and when the license was accepted.

    Raises:
        InsufficientDiskError: If the disk cannot hold what will be written.
        LicenseNotAcceptedError: If the license was declined.
    """
    sel = cand.selection
    pickled_bytes = sum(f.size for f in sel.files if is_pickled(f.path, sel))
    plan = ImportPlan(
        name,
        cand.model_id,
        cand.revision,
        cand.architecture,
        [(f.path, f.size) for f in sel.files],
        sel.skipped,
        sel.total_bytes,
        download_bytes,
        cand.license,
        unsafe=sel.unsafe,
        convert=sel.pickled_weights,
        progress_files=len(sel.files),
        progress_bytes=sel.total_bytes,
    )
    hooks.on_plan(plan)
    check_size(sel.total_bytes, new_bytes + pickled_bytes, ws.models_dir, hooks)
    accepted_at = accept_license(cand.license, req, hooks, name)
    return work.begin(), accepted_at  # the first write of this import


def finish(
    ws: Workspace,
    name: str,
    cand: Candidate,
    staging: Path,
    records: dict[str, FileRecord],
    pickled: dict[str, Path],
    accepted_at: datetime,
    hooks: ImportHooks,
    details: dict[str, object],
) -> ModelEntry:
    """Convert the pickled weights, check the staged files fit together, and build the entry.

    Args:
        records: The files already in ``staging`` (name to size and sha256).
        pickled: Pickled weights to convert (name to their file).
        details: The entry's ``details`` (the converted files are added).

    Raises:
        UnsafeWeightsError, InconsistentModelError: If the weights are malformed, a pickle
            holds more than tensors, or the weights do not fit config.json.
    """
    records = {**records, **_convert(ws, pickled, staging, hooks)}
    check_model_files(staging, cand.config, cand.where)
    check_tokenizer(staging, cand.config, cand.where)
    weights = [staging / n for n in sorted(records) if n.endswith(".safetensors")]
    return ModelEntry(
        model_name=name,
        model_id=cand.model_id,
        revision=cand.revision,
        source=cand.source,  # type: ignore[arg-type]
        architecture=cand.architecture,
        local_path=name,
        files=records,
        num_parameters=count_parameters(weights),
        disk_bytes=sum(r.size for r in records.values()),
        license=cand.license.label,
        license_accepted_at=accepted_at,
        tokenizer="native",
        details=details | ({"converted_from": sorted(pickled)} if pickled else {}),
    )


def _convert(
    ws: Workspace, pickled: dict[str, Path], staging: Path, hooks: ImportHooks
) -> dict[str, FileRecord]:
    """Convert pickled weights to safetensors in the blob store, linked into ``staging``."""
    if not pickled:
        return {}
    hooks.on_step("Converting pickled weights to safetensors (loaded with weights_only=True)")
    work = staging / ".convert"
    work.mkdir()
    records = {}
    for out in convert_pickled(pickled, work):
        digest = blobs.adopt(ws, work / out, staging / out, move=True)
        records[out] = FileRecord(size=(staging / out).stat().st_size, sha256=digest)
    blobs.discard(work)
    return records
