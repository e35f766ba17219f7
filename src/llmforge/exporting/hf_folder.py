"""Export a checkpoint as a self-contained folder that needs no llmforge to load.

For a ``transformers`` architecture (Qwen), the folder is what ``save_pretrained`` writes
(``config.json``, ``model.safetensors``), the tokenizer files, ``generation_config.json`` with
the end-of-sequence ids, and a ``README.md`` model card naming the base model, its license and
the lineage: plain ``AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` load it. For the custom Transformer it is
``model.safetensors`` + ``config.json`` + the tokenizer JSON + ``README.md``.

Files are copied, never hard-linked: an exported folder is meant to be edited, uploaded or
moved, and must never share bytes with a checkpoint or a registry model.

A LoRA checkpoint exports as a PEFT adapter folder (``adapter_model.safetensors``,
``adapter_config.json`` naming the base's hub id, tokenizer, card) that
``peft.PeftModel.from_pretrained(base_model, DIR)`` loads; with ``merge`` as a plain Hugging
Face folder whose weights have the adapter folded in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.checkpoints.layout import check_complete
from llmforge.checkpoints.metadata import load_checkpoint_tokenizer, load_meta
from llmforge.checkpoints.references import resolve_checkpoint
from llmforge.checkpoints.standalone import StandaloneModel, standalone_model
from llmforge.errors import ExportError, LLMForgeError
from llmforge.exporting.model_card import card_license, model_card
from llmforge.fsutil import (
    atomic_write_json,
    atomic_write_text,
    building_folder,
    write_failure_reason,
)
from llmforge.store import blobs
from llmforge.untrusted import load_json
from llmforge.workspace import Workspace

CARD = "README.md"
GENERATION_CONFIG = "generation_config.json"


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        checkpoint: The exported checkpoint.
        dest: The folder written.
        files: Names of the files in it.
        architecture: The model's architecture.
        loads_with: How to load it (one line of Python).
    """

    checkpoint: Path
    dest: Path
    files: list[str]
    architecture: str
    loads_with: str


def check_dest(ws: Workspace, source: Path, dest: Path, force: bool) -> None:
    """Refuse a destination that is a file, overlaps ``source``, ``models/`` or ``runs/``, or
    is a non-empty folder (unless ``force``).

    Raises:
        ExportError: Naming the problem and what to do.
    """
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"{dest} exists and is not a folder.", "Choose another destination.")
    protected = [source.resolve(), ws.models_dir.resolve(), ws.runs_dir.resolve()]
    if any(dest == p or dest in p.parents or p in dest.parents for p in protected):
        raise ExportError(
            f"Cannot export into {dest}: it overlaps the workspace's models/ or runs/ folder.",
            "Export to a folder outside models/ and runs/ (e.g. ./export/my-model).",
        )
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise ExportError(
            f"The destination {dest} is not empty.",
            "Choose a new or empty folder, or pass --force to replace its contents.",
        )


def _generation_config(ckpt: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's generation config with the tokenizer's EOS among its stop ids."""
    path = ckpt / GENERATION_CONFIG
    gen: dict[str, Any] = load_json(path.read_text(encoding="utf-8")) if path.is_file() else {}
    eos = gen.get("eos_token_id")
    ids = set([eos] if isinstance(eos, int) else (eos or []))
    tok_eos = load_checkpoint_tokenizer(ckpt, meta).eos_token_id
    if tok_eos is not None:
        ids.add(tok_eos)
    if ids:
        gen["eos_token_id"] = sorted(ids)[0] if len(ids) == 1 else sorted(ids)
        gen.setdefault("pad_token_id", sorted(ids)[0])
    return gen


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def clean_stale_exports(dest: Path) -> list[Path]:
    """Tidy what killed exports to ``dest`` left beside it; return the paths handled.

    An export assembles ``.DEST.export-PID`` and, replacing a folder, first moves the old one to
    ``.DEST.old-PID``. A process killed in between leaves them: a stale copy is deleted; an old
    folder comes back to ``dest`` when the kill came between the two renames (``dest`` is
    missing), else it is deleted. Folders of an export still running (its PID is alive) stay.
    """
    parent, prefix = dest.parent, f".{dest.name}."
    if not parent.is_dir():
        return []
    handled = []
    for p in sorted(parent.iterdir()):
        kind, _, pid = p.name.removeprefix(prefix).rpartition("-")
        if not p.name.startswith(prefix) or kind not in ("export", "old") or not pid.isdigit():
            continue
        if int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not (dest.exists() or dest.is_symlink()):
            os.replace(p, dest)  # the user's folder, as it was before the killed export
        else:
            blobs.discard(p)
        handled.append(p)
    return handled


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


@contextlib.contextmanager
def writing_export(dest: Path) -> Iterator[Path]:
    """Assemble an export folder beside ``dest`` (``.DEST.export-PID``), renamed into place when
    the block ends, all or nothing; a replaced folder waits at ``.DEST.old-PID`` until the new
    one is in. A failed write (a full disk) becomes an :class:`ExportError` and leaves
    ``dest`` as it was, and no folder this export created.

    Yields:
        The empty temporary folder.
    """
    missing = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.export-{os.getpid()}"
    trash = dest.parent / f".{dest.name}.old-{os.getpid()}"
    try:
        # Not fsynced: an export is a copy the user can make again (a checkpoint is not).
        with building_folder(dest, tmp, trash, sync=False) as folder:
            yield folder
    except BaseException as e:
        for parent in missing:  # parents this export made, if empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        if isinstance(e, LLMForgeError) or not isinstance(e, Exception):
            raise
        raise ExportError(  # a full disk, or safetensors' own error for it
            f"Could not write the export to {dest}: {write_failure_reason(e)}. Nothing was left "
            f"behind; {dest} is unchanged.",
            "Free some disk space (or choose another destination), then export again.",
        ) from e


def _write(
    dest: Path,
    model: StandaloneModel,
    adapter_of: str | None,
    generation: dict[str, Any] | None,
    card: str,
) -> None:
    """Write the folder at ``dest`` (see :func:`writing_export`)."""
    with writing_export(dest) as folder:
        model.write(folder, _copy)  # copies: an export never shares bytes
        if adapter_of is not None:
            from llmforge.adapters import peft_lora

            peft_lora.set_base_reference(folder, adapter_of)
        if generation is not None:
            atomic_write_json(folder / GENERATION_CONFIG, generation)
        atomic_write_text(folder / CARD, card)


def export_checkpoint(
    ws: Workspace,
    ref: str,
    dest: Path,
    *,
    force: bool = False,
    merge: bool = False,
    allow_base_mismatch: bool = False,
    warnings: list[str] | None = None,
) -> ExportResult:
    """Write a checkpoint's model as a standalone folder at ``dest``.

    A LoRA checkpoint is written as a PEFT adapter folder, or with ``merge`` as the base
    with the adapter folded in (the base is checked like on every load; an accepted
    mismatch is reported in ``warnings``).

    The folder is assembled next to ``dest`` (``.DEST.export-PID``) and renamed into place,
    so a failure leaves ``dest`` as it was; what a killed export left beside ``dest`` is
    tidied first (:func:`clean_stale_exports`).

    Raises:
        CheckpointError: If ``ref`` matches no complete checkpoint.
        ExportError: If ``dest`` is a non-empty folder (without ``force``), a file, or
            overlaps the workspace's ``models/`` or ``runs/``, or ``merge`` is given for a
            checkpoint that is not LoRA, or writing fails (a full disk; nothing is left).
    """
    ckpt = resolve_checkpoint(ws, ref)
    check_complete(ckpt, full=True)  # its bytes are copied out: every sha256 is compared
    meta = load_meta(ckpt)
    dest = dest.expanduser().resolve()
    clean_stale_exports(dest)
    check_dest(ws, ckpt, dest, force)
    is_lora = meta.get("finetune") == "lora"
    if merge and not is_lora:
        raise ExportError(
            f"--merge folds a LoRA adapter into its base, but {ckpt} holds full weights.",
            "Export it without --merge.",
        )
    model = standalone_model(ws, ckpt, meta, merge=merge, allow_base_mismatch=allow_base_mismatch)
    if warnings is not None:
        warnings.extend(model.notes)
    arch = str(meta.get("architecture"))
    hf = arch != "custom-transformer"
    base = meta.get("base") or {}
    # an adapter folder names its base (the hub id where known) for peft to load it onto
    adapter_of = (
        str(base.get("model_id") or base.get("model_name")) if is_lora and not merge else None
    )
    kind = ("merged" if merge else "adapter") if is_lora else None
    card = model_card(ckpt, meta, card_license(ws, meta), hf, kind)
    gen = _generation_config(ckpt, meta) if hf else None
    _write(dest, model, adapter_of, gen, card)
    names = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    return ExportResult(ckpt, dest, names, arch, _loads_with(dest, hf, adapter_of))


def _loads_with(dest: Path, hf: bool, adapter_of: str | None) -> str:
    """One line of Python that loads the export (for the user)."""
    if adapter_of is not None:
        return (
            "peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM."
            f"from_pretrained({adapter_of!r}), {str(dest)!r})"
            if hf
            else f"peft.PeftModel.from_pretrained(<the {adapter_of} model>, {str(dest)!r})"
        )
    return (
        f"transformers.AutoModelForCausalLM.from_pretrained({str(dest)!r})"
        if hf
        else "safetensors model.safetensors + config.json (llmforge custom-transformer)"
    )
