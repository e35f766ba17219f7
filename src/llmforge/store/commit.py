"""All-or-nothing changes of ``models/<name>/`` together with its registry entry.

A staged folder becomes a model (import, register), or a model goes (delete), in one registry
transaction, through :class:`~llmforge.store.folder_change.FolderChange`: a replaced or
deleted folder goes to ``models/.trash/`` and is deleted after the lock is released, and a
failure or a kill before the registry write leaves the old folder and entry in place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llmforge.store import blobs
from llmforge.store.folder_change import FolderChange
from llmforge.store.registry import ModelEntry, ModelRegistry, name_taken_error, not_found_error
from llmforge.workspace import Workspace


def commit_staged(
    ws: Workspace, registry: ModelRegistry, entry: ModelEntry, staging: Path, force: bool
) -> bool:
    """Rename ``staging`` to ``models/<name>`` and register ``entry``, all or nothing.

    Both happen under the registry lock through :class:`~llmforge.store.folder_change.FolderChange`
    (a replaced folder goes to ``models/.trash/`` and is deleted after the lock is released);
    a failure or a kill before the registry write leaves the old folder and entry in place.

    Returns:
        Whether an existing entry was replaced.
    """
    with registry.transaction() as models:
        if entry.model_name in models and not force:
            raise name_taken_error(entry.model_name, set(models))
        replaced = entry.model_name in models
        assert registry.digest is not None
        change = FolderChange(ws, entry.model_name, registry.digest, moves_in=True)
        registry.undo_on_failure(change.undo)
        change.move_old_aside()
        change.move_in(staging)
        models[entry.model_name] = entry
    change.finish()
    registry.tidy_trash()
    blobs.prune_cache(ws)
    return replaced


def remove_model(
    ws: Workspace, name: str, *, check: Callable[[dict[str, ModelEntry]], None] | None = None
) -> tuple[ModelEntry, int]:
    """Remove the entry ``name`` and its folder ``models/<name>``, all or nothing.

    Under the registry lock the folder is renamed into ``models/.trash/`` and the entry is
    removed; the files are deleted after the lock is released. A concurrent import of the same
    name therefore never loses its new folder, and a kill at any point leaves either the model
    whole and registered or gone (its trash is removed by the next command that takes the lock).

    Args:
        ws: The workspace.
        name: The model.
        check: Called under the lock with the registry's entries before anything changes;
            raising refuses the removal (what depends on the model, read race-free).

    Returns:
        The removed entry and the bytes freed (files that a checkpoint or another model still
        holds by hard link are not freed; cached blobs no model uses any more are).

    Raises:
        ModelNotFoundError: If there is no such model.
        RegistryError: If the registry cannot be written (nothing changes then).
    """
    registry = ModelRegistry(ws)
    with registry.transaction() as models:
        if name not in models:
            raise not_found_error(name, sorted(models))
        if check is not None:
            check(models)
        entry = models.pop(name)
        assert registry.digest is not None
        change = FolderChange(ws, name, registry.digest, moves_in=False)
        registry.undo_on_failure(change.undo)
        change.move_old_aside()
    old = change.old
    freed = 0 if old.is_symlink() or not old.exists() else blobs.unshared_bytes(old)
    change.finish()
    registry.tidy_trash()
    freed += blobs.prune_cache(ws)
    return entry, freed
