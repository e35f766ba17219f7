"""All-or-nothing changes of ``models/<name>/`` together with its registry entry.

A staged folder becomes a model (import, register) in one registry transaction, through
:class:`~llmforge.store.folder_change.FolderChange`: a replaced folder goes to
``models/.trash/`` and is deleted after the lock is released, and a failure or a kill before
the registry write leaves the old folder and entry in place.
"""

from __future__ import annotations

from pathlib import Path

from llmforge.store import blobs
from llmforge.store.folder_change import FolderChange
from llmforge.store.registry import (
    ModelEntry,
    ModelRegistry,
    name_taken_error,
)
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
