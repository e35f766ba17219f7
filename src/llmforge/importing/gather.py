"""What both import sources share while they fill the staging folder: the check that a
selection is a model, pickled weights converted to safetensors, and the entry to register.
"""

from __future__ import annotations

from pathlib import Path

from llmforge.errors import InvalidSourceError
from llmforge.importing import file_selection
from llmforge.importing.pickled_weights import convert_pickled
from llmforge.importing.plan import (
    ImportHooks,
)
from llmforge.store import blobs
from llmforge.store.registry import FileRecord, ModelEntry
from llmforge.store.safetensors_header import count_parameters
from llmforge.workspace import Workspace


def _check_selection(sel: file_selection.FileSelection, where: str) -> None:
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


def _is_pickled(name: str, sel: file_selection.FileSelection) -> bool:
    return sel.pickled_weights and (name.endswith(".bin") or name.endswith(".bin.index.json"))


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


def _entry(
    name: str,
    model_id: str,
    revision: str | None,
    source: str,
    arch: str,
    staging: Path,
    records: dict[str, FileRecord],
    license_label: str,
    accepted_at: object,
    details: dict[str, object],
) -> ModelEntry:
    weights = [staging / n for n in sorted(records) if n.endswith(".safetensors")]
    return ModelEntry(
        model_name=name,
        model_id=model_id,
        revision=revision,
        source=source,  # type: ignore[arg-type]
        architecture=arch,
        local_path=name,
        files=records,
        num_parameters=count_parameters(weights),
        disk_bytes=sum(r.size for r in records.values()),
        license=license_label,
        license_accepted_at=accepted_at,  # type: ignore[arg-type]
        tokenizer="native",
        details=details,
    )
