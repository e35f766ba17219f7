"""What depends on a registered model: who breaks, and who merely remembers it, if it goes.

Deleting a model is checked against everything in the workspace that names it or shares its
files, in the registry *and* in ``runs/``:

- a LoRA adapter (a registry entry, or a LoRA run's checkpoint) holds only the adapter and
  loads onto its base by name: without the base, ``generate``, ``--resume``, ``ckpt register``
  and ``ckpt export`` of it fail. These are what *breaks*;
- a full fine-tune (a registry model fine-tuned from it, a run that fine-tuned it, an
  ``--init-from`` branch) holds its own weights: only its lineage points at a model that no
  longer exists;
- a model registered from a checkpoint shares the checkpoint's files by hard link: deleting
  the model frees none of those bytes and the checkpoint stays whole.

Only the first kind needs confirmation (``models delete --force``). Reading ``runs/`` needs no
torch: checkpoints are found by their layout (``runs/RUN/checkpoints/step-N/meta.json``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.checkpoints.layout import checkpoint_dirs
from llmforge.errors import ModelInUseError
from llmforge.store.commit import remove_model
from llmforge.store.registry import ModelEntry, ModelRegistry, not_found_error
from llmforge.untrusted import load_json
from llmforge.workspace import Workspace


@dataclass
class ModelUsers:
    """Everything that depends on one model.

    Attributes:
        name: The model.
        adapters: Registry LoRA adapters whose base it is (they can no longer load).
        lora_checkpoints: LoRA checkpoints (``runs/RUN/checkpoints/step-N``) on it as base
            (they can no longer be loaded or resumed).
        children: Other registry models fine-tuned from it (full weights: lineage only).
        fine_tune_runs: Runs whose checkpoints fine-tuned it with full weights (unaffected).
        linked_checkpoints: Checkpoints holding some of its files by hard link (those bytes
            stay on disk, the checkpoints stay whole).
    """

    name: str
    adapters: list[str] = field(default_factory=list)
    lora_checkpoints: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    fine_tune_runs: list[str] = field(default_factory=list)
    linked_checkpoints: list[str] = field(default_factory=list)

    @property
    def broken(self) -> list[str]:
        """One phrase per thing that can no longer load once the model is gone."""
        return [f"the LoRA adapter model {a!r}" for a in self.adapters] + [
            f"the LoRA checkpoint {c}" for c in self.lora_checkpoints
        ]

    def notes(self) -> list[str]:
        """Warnings about what is not broken but will point at a model that is gone."""
        out = []
        if self.children:
            out.append(
                f"{_join(self.children)} name {self.name!r} as fine_tuned_from; their lineage "
                "will point at a model that no longer exists (they hold their own weights and "
                "still load)."
            )
        if self.fine_tune_runs:
            out.append(
                f"The run(s) {_join(self.fine_tune_runs)} fine-tuned {self.name!r}; their "
                "checkpoints hold their own weights and still load and resume."
            )
        return out

    def kept_note(self) -> str:
        """Why deleting frees less than the model's size (its files live on in checkpoints)."""
        if not self.linked_checkpoints:
            return ""
        return (
            f" Its files shared by hard link with {_join(self.linked_checkpoints)} stay on disk "
            "there; that checkpoint is unaffected."
        )

    def in_use_error(self) -> ModelInUseError:
        """The refusal to delete without ``--force``."""
        broken = self.broken
        unaffected = self.children + [f"run {r}" for r in self.fine_tune_runs]
        return ModelInUseError(
            f"Deleting {self.name!r} would leave {len(broken)} adapter(s) and checkpoint(s) "
            f"that load onto it unable to load, generate or resume: {'; '.join(broken)}."
            + (
                f" (Its full fine-tunes, {_join(unaffected)}, hold their own weights and are "
                "not affected.)"
                if unaffected
                else ""
            ),
            f"Delete or merge them first (`llmforge ckpt register CKPT --name NEW --merge` "
            f"makes a standalone model), or pass --force to delete {self.name!r} anyway; "
            f"registering the same files again under the name {self.name!r} makes them load "
            "again.",
        )


def _join(items: list[str]) -> str:
    return ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")


def find_users(ws: Workspace, name: str, models: dict[str, ModelEntry]) -> ModelUsers:
    """Find what depends on the model ``name``.

    Args:
        ws: The workspace.
        name: The model.
        models: The registry's entries (read under the lock when the caller deletes).

    Returns:
        The dependents; a ``runs/`` that is missing, a file or unreadable counts as no runs.
    """
    users = ModelUsers(name)
    for other in sorted(models.values(), key=lambda e: e.model_name):
        if other.model_name == name:
            continue
        if other.details.get("adapter") == "lora" and other.details.get("base") == name:
            users.adapters.append(other.model_name)
        elif other.fine_tuned_from == name:
            users.children.append(other.model_name)
    inodes = _shared_inodes(ws.models_dir / name)
    runs: set[str] = set()
    for ckpt, meta in _checkpoints(ws):
        rel = ckpt.relative_to(ws.root).as_posix()
        base = meta.get("base") if isinstance(meta.get("base"), dict) else {}
        if meta.get("finetune") == "lora" and base.get("model_name") == name:
            users.lora_checkpoints.append(rel)
        elif meta.get("model_name") == name:
            runs.add(ckpt.parent.parent.name)
        if inodes and _holds_any(ckpt, inodes):
            users.linked_checkpoints.append(rel)
    users.fine_tune_runs = sorted(runs)
    return users


def _checkpoints(ws: Workspace) -> list[tuple[Path, dict[str, Any]]]:
    """Every checkpoint under ``runs/`` with its ``meta.json`` (unreadable ones are skipped)."""
    found = []
    for ckpt in checkpoint_dirs(ws.runs_dir):  # none when runs/ is missing or a file
        with contextlib.suppress(OSError, ValueError, RecursionError):
            meta = load_json((ckpt / "meta.json").read_text(encoding="utf-8"))
            if isinstance(meta, dict):
                found.append((ckpt, meta))
    return found


def _shared_inodes(folder: Path) -> set[tuple[int, int]]:
    """``(device, inode)`` of the files in ``folder`` that have another hard link."""
    out: set[tuple[int, int]] = set()
    if folder.is_symlink() or not folder.is_dir():
        return out
    for dirpath, _, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, f))
                if st.st_nlink > 1:
                    out.add((st.st_dev, st.st_ino))
    return out


def _holds_any(ckpt: Path, inodes: set[tuple[int, int]]) -> bool:
    for dirpath, _, files in os.walk(ckpt):
        for f in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, f))
                if (st.st_dev, st.st_ino) in inodes:
                    return True
    return False


@dataclass
class DeleteResult:
    """What deleting a model did.

    Attributes:
        entry: The removed registry entry.
        bytes_freed: Bytes of files removed from disk (hard-linked files that something else
            still holds are not freed).
        users: What depended on it (see :class:`ModelUsers`); ``users.broken`` lists what can
            no longer load (only after ``force``).
    """

    entry: ModelEntry
    bytes_freed: int
    users: ModelUsers


def model_users(workspace: Workspace, name: str) -> ModelUsers:
    """What depends on the model ``name`` (a preview for the confirmation; no lock).

    Raises:
        ModelNotFoundError: If there is no such model.
    """
    models = {e.model_name: e for e in ModelRegistry(workspace).list()}
    if name not in models:
        raise not_found_error(name, sorted(models))
    return find_users(workspace, name, models)


def delete_model(workspace: Workspace, name: str, *, force: bool = False) -> DeleteResult:
    """Remove a model's registry entry and its folder ``models/<name>``, all or nothing.

    What depends on the model is read under the registry lock (so a register or import that
    runs meanwhile is counted), then :func:`llmforge.store.commit.remove_model` removes it.

    Args:
        workspace: The workspace.
        name: The model.
        force: Delete even if LoRA adapters or checkpoints load onto it.

    Raises:
        ModelNotFoundError: If there is no such model.
        ModelInUseError: If something can no longer load without it and ``force`` is False.
        RegistryError: If the registry cannot be written (nothing changes then).
    """
    users = ModelUsers(name)

    def refuse_if_used(models: dict[str, ModelEntry]) -> None:
        nonlocal users
        users = find_users(workspace, name, models)
        if users.broken and not force:
            raise users.in_use_error()

    entry, freed = remove_model(workspace, name, check=refuse_if_used)
    return DeleteResult(entry, freed, users)
