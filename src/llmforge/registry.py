"""The model registry: ``models/registry.json``, the one source of truth for model names.

Reads need no lock (the file is only ever replaced atomically). Every change happens in
:meth:`ModelRegistry.transaction`, which holds a file lock while it reads, changes and
atomically rewrites the file, so concurrent ``llmforge`` processes never lose an entry.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmforge.errors import (
    InvalidModelNameError,
    ModelExistsError,
    ModelNotFoundError,
    RegistryCorruptError,
    RegistryError,
)
from llmforge.fsutil import atomic_write_json
from llmforge.workspace import Workspace

SCHEMA_VERSION = 1
MAX_NAME_LENGTH = 64
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
LOCK_TIMEOUT_S = 60.0

Source = Literal["huggingface", "local", "fine-tune", "init"]


def utc_now() -> datetime:
    """The current time, timezone-aware UTC, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0)


# Names of the workspace's own files beside the model folders (compared case-insensitively:
# on a case-insensitive filesystem README.md and readme.md are one file). Hidden names
# (.cache, .staging, .registry.lock) cannot match NAME_PATTERN at all.
RESERVED_NAMES = frozenset({"registry.json", "readme.md"})
RESERVED_SUFFIXES = (".lock", ".tmp", ".incomplete")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a model name, or None if it can.

    The one rule for model names, used by every command that creates or reads one (import,
    register, ``--init-from --name``, the registry file itself).
    """
    if not isinstance(name, str):
        return f"a model name is text, not {type(name).__name__}"
    if len(name) > MAX_NAME_LENGTH:
        return f"it is {len(name):,} characters long (at most {MAX_NAME_LENGTH})"
    if not NAME_PATTERN.fullmatch(name):
        return (
            "names use lowercase letters, digits, '.', '_' and '-', and start with a letter or "
            "digit (a name is never a path)"
        )
    if name.lower() in RESERVED_NAMES or name.lower().endswith(RESERVED_SUFFIXES):
        return "it is reserved for the workspace's own files in models/"
    return None


def check_model_name(name: str) -> str:
    """Validate a model name and return it.

    A name is what the user types (``qwen-0.5b-base``); it is also a folder name under
    ``models/``, so it can never be a path, nor one of the workspace's own file names.

    Raises:
        InvalidModelNameError: If the name is empty, too long, has other characters than
            lowercase letters, digits, ``.``, ``_`` and ``-`` (first character a letter or
            digit), or is reserved (``registry.json``, ``README.md``, ``*.lock``, ...).
    """
    problem = name_problem(name)
    if problem is not None:
        from llmforge.untrusted import brief

        raise InvalidModelNameError(
            f"{brief(name, 80)} is not a valid model name: {problem}.",
            f"Try --name {suggest_model_name(str(name))!r}.",
        )
    return name


def suggest_model_name(text: str) -> str:
    """Derive a valid model name from free text or a hub id (``Qwen/Qwen2-0.5B`` -> ``qwen2-0.5b``).

    Args:
        text: A hub id, a folder name, or any string.

    Returns:
        A name matching the registry's pattern (``model`` if nothing usable remains).
    """
    last = text.rstrip("/").split("/")[-1].lower()
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", last).strip("-._")
    cleaned = cleaned[:MAX_NAME_LENGTH].rstrip("-._") or "model"
    if name_problem(cleaned) is not None:  # reserved: registry.json -> registry.json-model
        cleaned = f"{cleaned[: MAX_NAME_LENGTH - 6]}-model"
        cleaned = cleaned if name_problem(cleaned) is None else "model"
    return cleaned


class FileRecord(BaseModel):
    """Size and checksum of one file of a model."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ModelEntry(BaseModel):
    """One registered model. ``model_name`` is local; ``model_id`` says where it came from."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    model_id: str | None = None
    revision: str | None = None
    source: Source
    architecture: str
    local_path: str
    files: dict[str, FileRecord] = Field(default_factory=dict)
    num_parameters: int | None = Field(default=None, ge=0)
    disk_bytes: int | None = Field(default=None, ge=0)
    license: str | None = None
    license_accepted_at: datetime | None = None
    fine_tuned_from: str | None = None
    created_at: datetime = Field(default_factory=utc_now)
    tokenizer: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model_name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        problem = name_problem(v)
        if problem is not None:
            raise ValueError(f"invalid model name: {problem}")
        return v

    @field_validator("fine_tuned_from")
    @classmethod
    def _valid_parent_name(cls, v: str | None) -> str | None:
        # the parent is a model name too (it is shown, looked up, and never a path)
        if v is not None and name_problem(v) is not None:
            raise ValueError(f"fine_tuned_from must be a model name: {name_problem(v)}")
        return v

    @field_validator("local_path")
    @classmethod
    def _relative_path(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not v or p.is_absolute() or ".." in p.parts or "\\" in v:
            raise ValueError(f"local_path must be relative to models/ without '..', got {v!r}")
        return v

    @field_validator("files")
    @classmethod
    def _relative_files(cls, v: dict[str, FileRecord]) -> dict[str, FileRecord]:
        for name in v:
            p = PurePosixPath(name)
            if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
                raise ValueError(f"file names must be relative without '..', got {name!r}")
        return v


class RegistryFile(BaseModel):
    """The whole ``registry.json``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int
    models: dict[str, ModelEntry] = Field(default_factory=dict)


class ModelRegistry:
    """Read and change the registry of one workspace.

    Args:
        workspace: The workspace whose ``models/registry.json`` this registry manages.
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.path = workspace.registry_path
        self._lock_path = workspace.models_dir / ".registry.lock"

    # -- reading -------------------------------------------------------------------------
    def _read(self) -> dict[str, ModelEntry]:
        """Parse the file; a missing file is an empty registry."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise RegistryError(f"Cannot read {self.path}: {e.strerror}.", None) from e
        fix = (
            "llmforge will not overwrite it. Restore it from git (`git checkout -- "
            "models/registry.json`) or a backup, or fix it by hand; models/README.md "
            "describes the format."
        )
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RegistryCorruptError(f"{self.path} is not valid JSON ({e}).", fix) from e
        if not isinstance(data, dict):
            raise RegistryCorruptError(f"{self.path} does not hold a JSON object.", fix)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RegistryCorruptError(
                f"{self.path} has schema_version {version!r}; this llmforge reads version "
                f"{SCHEMA_VERSION}.",
                "Use the llmforge version that wrote it, or restore the file. " + fix,
            )
        try:
            parsed = RegistryFile.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise RegistryCorruptError(
                f"{self.path} has an invalid entry at '{where}': {first['msg']} "
                f"({e.error_count()} problem(s) in all).",
                fix,
            ) from e
        for key, entry in parsed.models.items():
            if key != entry.model_name:
                raise RegistryCorruptError(
                    f"{self.path}: the entry stored under {key!r} is named {entry.model_name!r}.",
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

        The file is rewritten only if the block finishes without an exception; an
        exception leaves it exactly as it was.

        Raises:
            RegistryError: If the lock cannot be taken within a minute.
        """
        self.workspace.models_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self._lock_path), timeout=LOCK_TIMEOUT_S)
        try:
            lock.acquire()
        except Timeout as e:
            raise RegistryError(
                f"Another llmforge process has held the registry lock {self._lock_path} for "
                f"over {LOCK_TIMEOUT_S:.0f} s.",
                "Wait for it to finish; if none is running, delete the lock file.",
            ) from e
        try:
            models = self._read()
            before = {k: v.model_dump(mode="json") for k, v in models.items()}
            yield models
            after = {k: v.model_dump(mode="json") for k, v in sorted(models.items())}
            if after != before:
                atomic_write_json(self.path, {"schema_version": SCHEMA_VERSION, "models": after})
        finally:
            lock.release()

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
        close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
        hint = (f"Did you mean {close[0]!r}? " if close else "") + (
            "Available models: " + ", ".join(available) + "."
        )
    return ModelNotFoundError(f"No model named {name!r} is in the registry.", hint)


def name_taken_error(name: str) -> ModelExistsError:
    """Build the 'name already taken' error."""
    return ModelExistsError(
        f"A model named {name!r} is already in the registry.",
        "Choose another name with --name, or pass --force to replace it.",
    )
