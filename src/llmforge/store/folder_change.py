"""All-or-nothing changes of a model folder, tied to the registry write that commits them.

Deleting a model, importing one and registering a checkpoint each change ``models/<name>/``
and ``registry.json`` together. Both happen under the registry lock
(:meth:`llmforge.store.registry.ModelRegistry.transaction`), in this order:

1. a *journal* ``models/.trash/<id>.json`` is written (atomically): the model's name, the
   sha256 of ``registry.json`` before the change, and whether a new folder moves in;
2. the old folder (if any) is renamed to ``models/.trash/<id>.old`` (a rename: instant);
3. the new folder (import, register) is renamed from ``models/.staging/`` to ``models/<name>``;
4. ``registry.json`` is replaced atomically: **this is the commit point**.

Then the lock is released, the old folder is deleted (slow for a big model, so outside the
lock) and the journal last. A failure before the commit point undoes 3 and 2 under the lock.

A process killed anywhere leaves a journal. The next registry transaction (any command that
changes the registry, and ``models validate``) settles it under the lock, before it reads the
registry: if ``registry.json`` still has the recorded sha256, the change never committed and
is undone (the old folder goes back, a new one is discarded); otherwise it committed and the
old folder is deleted. So a kill never leaves an entry without its folder, nor a folder
without its entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from pathlib import Path

from llmforge.errors import RegistryError
from llmforge.fsutil import atomic_write_json, failure_cause
from llmforge.untrusted import load_json
from llmforge.workspace import Workspace

TRASH = ".trash"
_JOURNAL = ".json"


def trash_dir(ws: Workspace) -> Path:
    """``models/.trash``: folders on their way out, and the journals of changes under way."""
    return ws.models_dir / TRASH


def registry_digest(raw: bytes | None) -> str:
    """What a journal records about ``registry.json``: its sha256, or ``absent``."""
    return "absent" if raw is None else hashlib.sha256(raw).hexdigest()


class FolderChange:
    """One change of ``models/<name>``, made inside a registry transaction.

    Args:
        ws: The workspace.
        name: The model whose folder changes (a valid model name).
        digest: :func:`registry_digest` of ``registry.json`` as the transaction read it.
        moves_in: Whether a new folder will be moved in (import, register) or not (delete).
    """

    def __init__(self, ws: Workspace, name: str, digest: str, *, moves_in: bool) -> None:
        self.ws = ws
        self.name = name
        self.target = ws.models_dir / name
        base = trash_dir(ws)
        self.id = f"{name}.{os.getpid()}.{secrets.token_hex(4)}"
        self.journal = base / f"{self.id}{_JOURNAL}"
        self.old = base / f"{self.id}.old"
        self.staging: Path | None = None
        record = {
            "name": name,
            "registry_before": digest,
            "replaces": os.path.lexists(self.target),
            "moves_in": moves_in,
        }
        try:
            base.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.journal, record)
        except OSError as e:
            remove_empty_trash(ws)
            raise RegistryError(
                f"Cannot record the change of models/{name} in {base} ({failure_cause(e)}); "
                "nothing was changed.",
                f"{base} must be a folder llmforge can write (free disk space, or move away "
                "a file of that name), then run the command again.",
            ) from e

    def move_old_aside(self) -> bool:
        """Rename the current ``models/<name>`` (if any) into the trash; return whether one was."""
        if not os.path.lexists(self.target):
            return False
        os.rename(self.target, self.old)
        return True

    def move_in(self, staging: Path) -> None:
        """Rename the finished ``staging`` folder to ``models/<name>``."""
        os.rename(staging, self.target)
        self.staging = staging

    def undo(self) -> None:
        """Put everything back as it was (the registry write failed); call under the lock."""
        if self.staging is not None and os.path.lexists(self.target):
            os.rename(self.target, self.staging)  # the caller discards its staging folder
        if os.path.lexists(self.old):
            os.rename(self.old, self.target)
        self.journal.unlink(missing_ok=True)
        remove_empty_trash(self.ws)

    def finish(self) -> None:
        """Delete the old folder and then the journal (the change committed); no lock needed."""
        discard(self.old)
        self.journal.unlink(missing_ok=True)


def settle_changes(ws: Workspace, current_digest: str) -> int:
    """Finish or undo the changes that killed processes left; call under the registry lock.

    Args:
        ws: The workspace.
        current_digest: :func:`registry_digest` of ``registry.json`` as it is now.

    Returns:
        How many journals were settled.

    Raises:
        RegistryError: If a journal is unreadable or its change cannot be undone (nothing is
            deleted then; the message names the folder to look at).
    """
    base = trash_dir(ws)
    if not base.is_dir():
        return 0
    entries = sorted(base.iterdir())
    journals = [p for p in entries if p.name.endswith(_JOURNAL) and not p.name.startswith(".")]
    ids = {p.name.removesuffix(_JOURNAL) for p in journals}
    for journal in journals:
        _settle_one(ws, journal, current_digest)
    # What no journal names: folders whose deletion was cut short after the journal went,
    # or a journal's own temporary file (its change had not started).
    for p in entries:
        if not p.name.endswith(_JOURNAL) and p.name.rsplit(".", 1)[0] not in ids:
            discard(p)
    remove_empty_trash(ws)
    return len(journals)


def _settle_one(ws: Workspace, journal: Path, current_digest: str) -> None:
    change_id = journal.name.removesuffix(_JOURNAL)
    old = journal.with_name(f"{change_id}.old")
    new = journal.with_name(f"{change_id}.new")
    try:
        record = load_json(journal.read_text(encoding="utf-8"))
        name, before = str(record["name"]), str(record["registry_before"])
        replaces, moves_in = bool(record["replaces"]), bool(record["moves_in"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RegistryError(
            f"{journal} records an interrupted change of a model folder but cannot be read.",
            f"Look into {journal.parent} (a folder moved aside may be there), put back or "
            "delete what you need by hand, then remove the journal file.",
        ) from e
    target = ws.models_dir / name
    try:
        if before == current_digest:  # the registry write never happened: undo
            moved_old = os.path.lexists(old)
            if moves_in and os.path.lexists(target) and (moved_old or not replaces):
                os.rename(target, new)  # the uncommitted new folder
            if moved_old:
                os.rename(old, target)
    except OSError as e:
        raise RegistryError(
            f"Cannot undo the interrupted change of models/{name} ({e.strerror}); the folder "
            f"it moved aside is {old}.",
            f"Move it back to {target} by hand if the registry still lists {name!r}, then "
            f"remove {journal}.",
        ) from e
    discard(new)
    discard(old)
    journal.unlink(missing_ok=True)


def discard(path: Path) -> None:
    """Delete a trashed folder (or file); another process deleting it at the same time is fine.

    Errors are ignored: whatever is left has no journal any more and is removed by the next
    :func:`settle_changes`.
    """
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def remove_empty_trash(ws: Workspace) -> None:
    """Remove ``models/.trash`` when nothing is in it (call under the registry lock)."""
    with contextlib.suppress(OSError):
        trash_dir(ws).rmdir()
