"""The model registry: ``models/registry.json``, the one source of truth for model names.

Reads need no lock (the file is only ever replaced atomically). Every change happens in
:meth:`ModelRegistry.transaction`, which holds a file lock while it reads, changes and
atomically rewrites the file, so concurrent ``llmforge`` processes never lose an entry.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from filelock import FileLock, Timeout
from pydantic import ValidationError

from llmforge.errors import (
    ModelExistsError,
    ModelNotFoundError,
    RegistryCorruptError,
    RegistryError,
    WorkspaceError,
)
from llmforge.fsutil import atomic_write_json, failure_cause
from llmforge.store.folder_change import registry_digest, settle_changes, trash_dir

# The name rule and the entry schema, re-exported: `from llmforge.registry import ModelEntry`.
from llmforge.store.registry_schema import (
    MAX_NAME_LENGTH,
    NAME_PATTERN,
    RESERVED_NAMES,
    RESERVED_SUFFIXES,
    SCHEMA_VERSION,
    FileRecord,
    ModelEntry,
    RegistryFile,
    Source,
    check_model_name,
    name_problem,
    suggest_model_name,
    utc_now,
)
from llmforge.untrusted import brief
from llmforge.workspace import Workspace

__all__ = [
    "MAX_NAME_LENGTH",
    "NAME_PATTERN",
    "RESERVED_NAMES",
    "RESERVED_SUFFIXES",
    "SCHEMA_VERSION",
    "FileRecord",
    "ModelEntry",
    "ModelRegistry",
    "RegistryFile",
    "Source",
    "check_model_name",
    "name_problem",
    "name_taken_error",
    "not_found_error",
    "suggest_model_name",
    "utc_now",
]

LOCK_TIMEOUT_S = 60.0


class _DuplicateKey(ValueError):
    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: refuse an object with a key twice (json keeps the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Entries are keyed by model name: say "the model X"; other keys by their name.
            is_entry = isinstance(value, dict) and "model_name" in value
            raise _DuplicateKey(
                f"the model {brief(key, 80)}" if is_entry else f"the key {brief(key, 80)}"
            )
        out[key] = value
    return out


class ModelRegistry:
    """Read and change the registry of one workspace.

    Args:
        workspace: The workspace whose ``models/registry.json`` this registry manages.
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.path = workspace.registry_path
        self._lock_path = workspace.models_dir / ".registry.lock"
        self.digest: str | None = None
        self._undo: list[Callable[[], None]] | None = None

    # -- reading -------------------------------------------------------------------------
    def _read(self) -> dict[str, ModelEntry]:
        """Parse the file; a missing file is an empty registry."""
        return self._parse(self._raw())

    def _check_models_dir(self) -> None:
        models_dir = self.workspace.models_dir
        if os.path.lexists(models_dir) and not models_dir.is_dir():
            raise WorkspaceError(
                f"{models_dir} is a file, not a folder; llmforge keeps registry.json and the "
                "model folders there.",
                "Move or rename that file, then run the command again (llmforge creates "
                "models/ when it needs it).",
            )

    def _raw(self) -> bytes | None:
        """The file's bytes, or None when there is no registry yet."""
        self._check_models_dir()
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RegistryError(f"Cannot read {self.path}: {e.strerror}.", None) from e

    def _parse(self, raw: bytes | None) -> dict[str, ModelEntry]:
        if raw is None:
            return {}
        fix = (
            "llmforge will not overwrite it. Restore it from git (`git checkout -- "
            "models/registry.json`) or a backup, or fix it by hand; models/README.md "
            "describes the format."
        )
        try:
            data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except _DuplicateKey as e:
            raise RegistryCorruptError(
                f"{self.path} names {e.where} twice; loading it would silently keep only the "
                "last one, so llmforge will not read or overwrite it.",
                "Open the file, keep the one copy you want (compare them with `git diff`) and "
                "delete the other, or restore the file from git (`git checkout -- "
                "models/registry.json`).",
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise RegistryCorruptError(
                f"{self.path} is not valid JSON ({brief(str(e), 200)}).", fix
            ) from None
        if not isinstance(data, dict):
            raise RegistryCorruptError(f"{self.path} does not hold a JSON object.", fix)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RegistryCorruptError(
                f"{self.path} has schema_version {brief(version, 40)}; this llmforge reads "
                f"version {SCHEMA_VERSION}.",
                "Use the llmforge version that wrote it, or restore the file. " + fix,
            )
        try:
            parsed = RegistryFile.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = brief(".".join(str(p) for p in first["loc"]), 100).strip("'\"")
            raise RegistryCorruptError(
                f"{self.path} has an invalid entry at '{where}': {first['msg']} "
                f"({e.error_count()} problem(s) in all).",
                fix,
            ) from e
        for key, entry in parsed.models.items():
            if key != entry.model_name:
                raise RegistryCorruptError(
                    f"{self.path}: the entry stored under {brief(key, 80)} is named "
                    f"{entry.model_name!r}.",
                    fix,
                )
        return parsed.models

    def list(self) -> list[ModelEntry]:
        """All entries, sorted by name."""
        return sorted(self._read().values(), key=lambda e: e.model_name)

    def names(self) -> list[str]:
        """All model names, sorted."""
        return sorted(self._read())

    def exists(self, name: str) -> bool:
        """Whether an entry with this name exists."""
        return name in self._read()

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``.

        Raises:
            ModelNotFoundError: With the available names and the closest match.
        """
        models = self._read()
        if name in models:
            return models[name]
        raise not_found_error(name, sorted(models))

    def children(self, name: str) -> list[ModelEntry]:
        """Entries whose ``fine_tuned_from`` is ``name``."""
        return [e for e in self.list() if e.fine_tuned_from == name]

    def lineage(self, name: str) -> list[str]:
        """The chain of ancestors of ``name``: ``[parent, grandparent, ...]``.

        The chain stops at a model without a parent, at a parent that is no longer
        registered (it is still listed, as the last element), or at a cycle.
        """
        models = self._read()
        chain: list[str] = []
        seen = {name}
        current = models.get(name)
        while current is not None and current.fine_tuned_from:
            parent = current.fine_tuned_from
            if parent in seen:
                break
            chain.append(parent)
            seen.add(parent)
            current = models.get(parent)
        return chain

    # -- changing ------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[dict[str, ModelEntry]]:
        """Lock the registry, yield its entries for changing, and write them back atomically.

        The file is rewritten only if the block finishes without an exception; an exception
        (or a failed write) leaves it exactly as it was, and runs the undo steps registered
        with :meth:`undo_on_failure` while the lock is still held. Before reading, changes of
        model folders that a killed process left half done are settled
        (:mod:`llmforge.store.folder_change`). Inside the block, :attr:`digest` identifies the
        registry as read (for :class:`~llmforge.store.folder_change.FolderChange`).

        Raises:
            RegistryError: If the lock cannot be taken (held for over a minute, or its path
                is not a file), or the file cannot be written (disk full).
        """
        self._check_models_dir()
        self.workspace.models_dir.mkdir(parents=True, exist_ok=True)
        lock = self._lock()
        undo: list[Callable[[], None]] = []
        try:
            raw = self._raw()
            settle_changes(self.workspace, registry_digest(raw))  # never writes registry.json
            models = self._parse(raw)
            before = {k: v.model_dump(mode="json") for k, v in models.items()}
            self.digest, self._undo = registry_digest(raw), undo
            try:
                yield models
                after = {k: v.model_dump(mode="json") for k, v in sorted(models.items())}
                if after != before:
                    self._write(after)
            except BaseException:
                for step in reversed(undo):
                    step()
                raise
        finally:
            self.digest, self._undo = None, None
            lock.release()

    def undo_on_failure(self, step: Callable[[], None]) -> None:
        """Inside :meth:`transaction`: run ``step`` (under the lock) if the change fails."""
        assert self._undo is not None, "undo_on_failure outside a transaction"
        self._undo.append(step)

    def check_writable(self) -> None:
        """Refuse early what would make the registry transaction fail (before slow work).

        Raises:
            WorkspaceError: If ``models`` is a file.
            RegistryError: If the lock path is a folder.
        """
        self._check_models_dir()
        if self._lock_path.is_dir():
            raise self._lock_error("is a folder")

    def _lock_error(self, what: str) -> RegistryError:
        return RegistryError(
            f"The registry lock {self._lock_path} {what}, so the registry cannot be "
            "changed safely; nothing was changed.",
            "It holds no data: remove it (`rm -r models/.registry.lock`) if no llmforge "
            "command is running, then run the command again.",
        )

    def _lock(self) -> FileLock:
        lock = FileLock(str(self._lock_path), timeout=LOCK_TIMEOUT_S)
        try:
            lock.acquire()
        except Timeout as e:
            raise RegistryError(
                f"Another llmforge process has held the registry lock {self._lock_path} for "
                f"over {LOCK_TIMEOUT_S:.0f} s.",
                "Wait for it to finish; if none is running, delete the lock file.",
            ) from e
        except OSError as e:
            what = "is a folder" if self._lock_path.is_dir() else f"cannot be opened ({e.strerror})"
            raise self._lock_error(what) from e
        return lock

    def _write(self, models: dict[str, Any]) -> None:
        try:
            atomic_write_json(self.path, {"schema_version": SCHEMA_VERSION, "models": models})
        except OSError as e:
            raise RegistryError(
                f"Could not write {self.path}: {failure_cause(e)}. The registry and the model "
                "folders are unchanged.",
                "Free some disk space (or raise the file-size limit) and run the command again.",
            ) from e

    def settle(self) -> None:
        """Finish or undo folder changes a killed process left (no-op when there are none)."""
        base = trash_dir(self.workspace)
        if base.is_dir():
            with self.transaction():
                pass

    def tidy_trash(self) -> None:
        """Remove an empty ``models/.trash`` if the registry lock is free right now."""
        base = trash_dir(self.workspace)
        if not base.is_dir():
            return
        lock = FileLock(str(self._lock_path), timeout=0)
        try:
            with lock:
                if not any(base.iterdir()):
                    base.rmdir()
        except (Timeout, OSError):
            pass  # the next transaction removes it

    def add(self, entry: ModelEntry, *, replace: bool = False) -> None:
        """Add an entry.

        Args:
            entry: The new entry.
            replace: Overwrite an existing entry of the same name instead of failing.

        Raises:
            ModelExistsError: If the name is taken and ``replace`` is False.
        """
        with self.transaction() as models:
            if entry.model_name in models and not replace:
                raise name_taken_error(entry.model_name)
            models[entry.model_name] = entry

    def remove(self, name: str) -> ModelEntry:
        """Remove the entry ``name`` (not its files) and return it.

        Raises:
            ModelNotFoundError: If there is no such entry.
        """
        with self.transaction() as models:
            if name not in models:
                raise not_found_error(name, sorted(models))
            return models.pop(name)


def not_found_error(name: str, available: list[str]) -> ModelNotFoundError:
    """Build the 'model not found' error with the known names and the closest one."""
    if not available:
        hint = "The registry is empty: import a model with `llmforge models import HUB_ID`."
    else:
        close = (
            difflib.get_close_matches(name, available, n=1, cutoff=0.5)
            if len(name) <= 4 * MAX_NAME_LENGTH
            else []
        )
        hint = (f"Did you mean {close[0]!r}? " if close else "") + (
            "Available models: " + ", ".join(available) + "."
        )
    return ModelNotFoundError(f"No model named {brief(name, 80)} is in the registry.", hint)


def free_name(text: str, taken: set[str]) -> str:
    """A valid model name derived from ``text`` that no model has yet.

    Args:
        text: A hub id, a folder name or a name the user typed.
        taken: The names in use.

    Returns:
        ``suggest_model_name(text)``, or it with ``-2``, ``-3``, ... appended.
    """
    base = suggest_model_name(text)
    if base not in taken:
        return base
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = base[: MAX_NAME_LENGTH - len(suffix)] + suffix
        if candidate not in taken and name_problem(candidate) is None:
            return candidate
        n += 1


def name_taken_error(name: str, taken: set[str] | None = None) -> ModelExistsError:
    """Build the 'name already taken' error, suggesting a name that is free."""
    free = free_name(name, (taken or set()) | {name})
    return ModelExistsError(
        f"A model named {name!r} is already in the registry.",
        f"Choose another name with --name (e.g. --name {free}), or pass --force to replace it.",
    )
