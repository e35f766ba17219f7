"""A checkpoint's model, ready to write as a standalone folder (``ckpt register`` and ``export``).

What goes into such a folder is decided here, once, for every kind of checkpoint:

- full weights: the adapter's files (a Hugging Face folder, or ``model.safetensors`` +
  ``config.json``), taken as they are;
- a sharded (FSDP) checkpoint: its model consolidated in memory, to be saved;
- a LoRA checkpoint: the adapter's files (the base stays in the registry), or with ``merge``
  its base from the registry with the adapter folded in, to be saved;

and, always, the tokenizer's files, moved from ``tokenizer/`` to the top level where
``from_pretrained`` and the registry adapters look for them. Training state (``optimizer.pt``,
``trainer_state.json``, ``meta.json``, ``manifest.json``) never goes in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.adapters import peft_lora
from llmforge.adapters.base import ModelAdapter
from llmforge.checkpoints import lora_base
from llmforge.checkpoints.layout import (
    META_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    TOKENIZER_DIR,
    is_sharded,
)
from llmforge.checkpoints.manifest import MANIFEST_FILE
from llmforge.checkpoints.sharded import load_consolidated
from llmforge.errors import CheckpointError
from llmforge.workspace import Workspace

# Files of a checkpoint that are training state, not the model.
_NOT_MODEL = {META_FILE, STATE_FILE, OPTIMIZER_FILE, TOKENIZER_DIR, MANIFEST_FILE}


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


@dataclass
class StandaloneModel:
    """What a standalone folder of one checkpoint holds.

    Attributes:
        files: Files to take as they are: ``{name in the folder: source in the checkpoint}``.
        model: A model to save into the folder first (consolidated shards, or a merged LoRA
            adapter), or None when the checkpoint's own model files are taken.
        is_lora: The checkpoint is a LoRA run's (its model files are the adapter's).
        merged: ``model`` is the LoRA base with the adapter folded in.
        notes: Warnings for the user (a base mismatch accepted with ``--allow-base-mismatch``).
    """

    files: dict[str, Path]
    model: ModelAdapter | None = None
    is_lora: bool = False
    merged: bool = False
    notes: list[str] = field(default_factory=list)

    def write(self, folder: Path, put: Callable[[Path, Path], Any]) -> None:
        """Save :attr:`model` (if any) into ``folder``, then ``put(source, destination)`` each
        of :attr:`files` (a hard link for a registry model, a copy for an export)."""
        if self.model is not None:
            self.model.save(folder)
        for rel, src in self.files.items():
            put(src, folder / rel)


def standalone_model(
    ws: Workspace,
    path: Path,
    meta: dict[str, Any],
    *,
    merge: bool = False,
    allow_base_mismatch: bool = False,
    check_base: bool = False,
) -> StandaloneModel:
    """The checkpoint at ``path`` as a standalone folder would hold it.

    Args:
        ws: The workspace (a LoRA checkpoint's base is a registry model).
        path: A complete checkpoint.
        meta: Its ``meta.json``.
        merge: For a LoRA checkpoint: the base with the adapter folded in (loaded now).
        allow_base_mismatch: Accept a LoRA base whose files changed (a warning in ``notes``).
        check_base: For a LoRA checkpoint without ``merge``: check that its base is still the
            registry model it was trained on (a registered adapter loads onto it later).

    Raises:
        CheckpointError: If the base of a LoRA checkpoint is missing or changed, or a tokenizer
            file clashes with a model file.
    """
    files = model_files(path)
    out = StandaloneModel(files, is_lora=meta.get("finetune") == "lora")
    if is_sharded(path):  # an FSDP checkpoint: its model, consolidated in memory
        out.model = load_consolidated(path)[0]
    if out.is_lora and merge:
        out.model, out.notes = lora_base.load_checkpoint(
            ws, path, meta, allow_mismatch=allow_base_mismatch
        )
        peft_lora.merge(out.model)
        out.merged = True
    elif out.is_lora and check_base:
        what = f"The LoRA checkpoint {path}"
        base = meta.get("base") or {}
        _, _, out.notes = lora_base.check_base(ws, base, what, allow_mismatch=allow_base_mismatch)
    if out.model is not None:  # it replaces the checkpoint's model files: keep the tokenizer's
        out.files = {r: p for r, p in files.items() if p.is_relative_to(path / TOKENIZER_DIR)}
    return out
